//! API keys: `Authorization: Bearer KEY`, compared in constant time. Keys are never logged
//! (`Debug` prints only how many there are).

use subtle::{Choice, ConstantTimeEq};

#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} configured)", self.keys.len())
    }
}

impl ApiKeys {
    /// Keys from the command line and a comma-separated list (e.g. `RTDETR_API_KEYS`); blanks dropped.
    pub fn new<I, S>(keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let keys = keys
            .into_iter()
            .flat_map(|k| k.as_ref().split(',').map(|s| s.trim().as_bytes().to_vec()).collect::<Vec<_>>())
            .filter(|k| !k.is_empty())
            .collect();
        Self { keys }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when `candidate` equals one of the keys. Every key is compared, byte by byte over
    /// the longer of the two lengths, without early exit.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let mut any = Choice::from(0u8);
        for key in &self.keys {
            any |= ct_eq(key, candidate);
        }
        any.into()
    }

    /// Checks an `Authorization` header value. `Ok(())` when no keys are configured.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), &'static str> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let Some(value) = authorization else {
            return Err("missing API key: send the header `Authorization: Bearer YOUR_KEY`");
        };
        let token = strip_bearer(value).ok_or("malformed Authorization header: expected `Bearer YOUR_KEY`")?;
        if self.matches(token) {
            Ok(())
        } else {
            Err("incorrect API key provided")
        }
    }
}

impl ApiKeys {
    /// Which key a client presents, from the `Authorization: Bearer` header or, when that
    /// header is absent, from a query parameter (`?api_key=`, for browsers' WebSockets, which
    /// cannot set headers). `Ok(None)` when no keys are configured, `Ok(Some(index))` for a
    /// valid key. Every key is compared in constant time, without early exit.
    pub fn identify(
        &self,
        authorization: Option<&[u8]>,
        query_key: Option<&[u8]>,
    ) -> Result<Option<usize>, &'static str> {
        if self.keys.is_empty() {
            return Ok(None);
        }
        let token = match (authorization, query_key) {
            (Some(value), _) => strip_bearer(value).ok_or("malformed Authorization header: expected `Bearer YOUR_KEY`")?,
            (None, Some(key)) => key,
            (None, None) => {
                return Err("missing API key: send the header `Authorization: Bearer YOUR_KEY` or the query parameter `?api_key=YOUR_KEY`")
            }
        };
        let mut found = None;
        for (i, key) in self.keys.iter().enumerate() {
            if bool::from(ct_eq(key, token)) {
                found = Some(i);
            }
        }
        found.map(Some).ok_or("incorrect API key provided")
    }
}

fn strip_bearer(value: &[u8]) -> Option<&[u8]> {
    let trimmed = value.trim_ascii();
    if trimmed.len() < 7 || !trimmed[..7].eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    Some(trimmed[7..].trim_ascii())
}

fn ct_eq(a: &[u8], b: &[u8]) -> Choice {
    let n = a.len().max(b.len());
    let mut eq = (a.len() as u64).ct_eq(&(b.len() as u64));
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        eq &= x.ct_eq(&y);
    }
    eq
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let k = ApiKeys::new(["alpha", "beta, gamma ,", ""]);
        assert_eq!(k.len(), 3);
        assert!(k.matches(b"alpha") && k.matches(b"gamma") && k.matches(b"beta"));
        assert!(!k.matches(b"alph") && !k.matches(b"alphaa") && !k.matches(b"") && !k.matches(b"ALPHA"));
        assert!(k.check(Some(b"Bearer beta")).is_ok());
        assert!(k.check(Some(b"bearer  beta ")).is_ok());
        assert!(k.check(Some(b"Bearer nope")).is_err());
        assert!(k.check(Some(b"beta")).is_err());
        assert!(k.check(None).is_err());
        assert!(!format!("{k:?}").contains("alpha"));
        assert!(ApiKeys::new(Vec::<String>::new()).check(None).is_ok());
        assert_eq!(k.identify(Some(b"Bearer beta"), None), Ok(Some(1)));
        assert_eq!(k.identify(None, Some(b"gamma")), Ok(Some(2)));
        assert!(k.identify(Some(b"Bearer nope"), Some(b"alpha")).is_err(), "the header wins over the query");
        assert!(k.identify(None, Some(b"alph")).is_err());
        assert!(k.identify(None, None).is_err());
        assert_eq!(ApiKeys::new(Vec::<String>::new()).identify(None, None), Ok(None));
    }
}
