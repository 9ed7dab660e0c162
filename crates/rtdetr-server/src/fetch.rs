//! Fetching images from `http(s)://` URLs without becoming an SSRF proxy.
//!
//! The host is resolved once and every resolved address is checked: loopback, private,
//! link-local (incl. the 169.254.169.254 cloud metadata address), CGNAT, unique-local,
//! IPv4-mapped/compatible IPv6, multicast, unspecified, 0/8, broadcast, reserved and
//! documentation ranges are refused. The connection is pinned to the checked address (a
//! second DNS answer cannot swap it), no proxy is used, redirects are followed by hand (at
//! most `max_redirects`) and every hop is checked again, only `image/*` responses are
//! accepted, the body is capped while it streams, and connect and total times are bounded.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::{StatusCode, Url};

use crate::error::ApiError;

/// Which resolved addresses a URL may point at.
#[derive(Clone)]
pub enum AddressPolicy {
    /// Only globally routable unicast addresses (the default).
    PublicOnly,
    /// Private and loopback addresses too (`--allow-private-urls`), but never link-local
    /// (169.254.0.0/16 with the cloud metadata service, fe80::/10), unspecified or multicast
    /// addresses.
    AllowPrivate,
    /// A custom rule (tests: make one loopback port "public").
    Custom(Arc<dyn Fn(SocketAddr) -> bool + Send + Sync>),
}

impl std::fmt::Debug for AddressPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PublicOnly => write!(f, "PublicOnly"),
            Self::AllowPrivate => write!(f, "AllowPrivate"),
            Self::Custom(_) => write!(f, "Custom"),
        }
    }
}

impl AddressPolicy {
    pub fn allows(&self, addr: SocketAddr) -> bool {
        match self {
            Self::PublicOnly => is_public_ip(addr.ip()),
            Self::AllowPrivate => {
                let ip = canonical(addr.ip());
                let link_local = match ip {
                    IpAddr::V4(v4) => v4.is_link_local(),
                    IpAddr::V6(v6) => in_v6(v6, Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
                };
                !ip.is_unspecified() && !ip.is_multicast() && !link_local
            }
            Self::Custom(f) => f(addr),
        }
    }
}

/// Maps IPv4-mapped (`::ffff:a.b.c.d`) and IPv4-compatible (`::a.b.c.d`) IPv6 addresses to IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            if s[..6] == [0, 0, 0, 0, 0, 0] && !(s[6] == 0 && s[7] <= 1) {
                // Deprecated IPv4-compatible form (not :: or ::1).
                return IpAddr::V4(Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8));
            }
            ip
        }
        v4 => v4,
    }
}

/// True for globally routable unicast addresses only.
pub fn is_public_ip(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    const BLOCKED: &[([u8; 4], u32)] = &[
        ([0, 0, 0, 0], 8),       // "this network", incl. 0.0.0.0
        ([10, 0, 0, 0], 8),      // private
        ([100, 64, 0, 0], 10),   // CGNAT
        ([127, 0, 0, 0], 8),     // loopback
        ([169, 254, 0, 0], 16),  // link-local, cloud metadata
        ([172, 16, 0, 0], 12),   // private
        ([192, 0, 0, 0], 24),    // IETF protocol assignments
        ([192, 0, 2, 0], 24),    // TEST-NET-1
        ([192, 88, 99, 0], 24),  // 6to4 relay anycast
        ([192, 168, 0, 0], 16),  // private
        ([198, 18, 0, 0], 15),   // benchmarking
        ([198, 51, 100, 0], 24), // TEST-NET-2
        ([203, 0, 113, 0], 24),  // TEST-NET-3
        ([224, 0, 0, 0], 4),     // multicast
        ([240, 0, 0, 0], 4),     // reserved, incl. broadcast
    ];
    !BLOCKED.iter().any(|&(net, p)| in_v4(ip, net, p))
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, prefix: u32) -> bool {
    let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix) };
    (u128::from(ip) & mask) == (u128::from(net) & mask)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    // Global unicast is 2000::/3; everything else (::, ::1, fc00::/7, fe80::/10, ff00::/8,
    // 64:ff9b::/96 NAT64, 100::/64 discard, ...) is refused.
    if !in_v6(ip, Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3) {
        return false;
    }
    const BLOCKED: &[(Ipv6Addr, u32)] = &[
        (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32), // Teredo (embeds IPv4)
        (Ipv6Addr::new(0x2001, 0x2, 0, 0, 0, 0, 0, 0), 48), // benchmarking
        (Ipv6Addr::new(0x2001, 0x10, 0, 0, 0, 0, 0, 0), 28), // ORCHID
        (Ipv6Addr::new(0x2001, 0x20, 0, 0, 0, 0, 0, 0), 28), // ORCHIDv2
        (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
        (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16), // 6to4 (embeds IPv4)
        (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20), // documentation
    ];
    !BLOCKED.iter().any(|&(net, p)| in_v6(ip, net, p))
}

/// Limits of one URL fetch.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    pub policy: AddressPolicy,
    pub connect_timeout: Duration,
    pub total_timeout: Duration,
    pub max_bytes: usize,
    pub max_redirects: usize,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            policy: AddressPolicy::PublicOnly,
            connect_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_secs(10),
            max_bytes: 20 * 1024 * 1024,
            max_redirects: 3,
        }
    }
}

fn fetch_error(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("url_fetch_failed", message)
}

/// Downloads an image, enforcing every rule of the module docs.
pub async fn fetch_image(url: &str, cfg: &FetchConfig) -> Result<Vec<u8>, ApiError> {
    match tokio::time::timeout(cfg.total_timeout, fetch_inner(url, cfg)).await {
        Ok(r) => r,
        Err(_) => Err(fetch_error(format!("fetching the image URL took longer than {:?}", cfg.total_timeout))),
    }
}

/// Parses and checks the URL's form (scheme, host, no credentials).
pub fn parse_url(url: &str) -> Result<Url, ApiError> {
    let parsed =
        Url::parse(url).map_err(|e| ApiError::bad_request("invalid_url", format!("invalid image URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ApiError::bad_request(
            "invalid_url",
            format!("unsupported URL scheme {:?}: only http and https image URLs are fetched", parsed.scheme()),
        ));
    }
    if parsed.host().is_none() {
        return Err(ApiError::bad_request("invalid_url", "image URL has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(ApiError::bad_request("invalid_url", "image URLs with credentials are not fetched"));
    }
    Ok(parsed)
}

/// Resolves the URL's host once and checks every address; returns the address to connect to.
async fn resolve_checked(url: &Url, policy: &AddressPolicy) -> Result<SocketAddr, ApiError> {
    let port =
        url.port_or_known_default().ok_or_else(|| ApiError::bad_request("invalid_url", "image URL has no port"))?;
    let addrs: Vec<SocketAddr> = match url.host() {
        Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
        Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
        Some(url::Host::Domain(d)) => tokio::net::lookup_host((d, port))
            .await
            .map_err(|_| fetch_error(format!("cannot resolve host {d:?}")))?
            .collect(),
        None => return Err(ApiError::bad_request("invalid_url", "image URL has no host")),
    };
    if addrs.is_empty() {
        return Err(fetch_error("the image URL's host has no address"));
    }
    if let Some(bad) = addrs.iter().find(|a| !policy.allows(**a)) {
        tracing::warn!(host = ?url.host_str(), address = %bad.ip(), "refused image URL pointing at a non-public address");
        return Err(ApiError::bad_request(
            "url_not_allowed",
            "the image URL points at a private, loopback, link-local or otherwise non-public address",
        ));
    }
    Ok(addrs[0])
}

async fn fetch_inner(url: &str, cfg: &FetchConfig) -> Result<Vec<u8>, ApiError> {
    let start = Instant::now();
    let mut url = parse_url(url)?;
    let mut hops = 0;
    loop {
        let addr = resolve_checked(&url, &cfg.policy).await?;
        let remaining = cfg.total_timeout.saturating_sub(start.elapsed()).max(Duration::from_millis(1));
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(cfg.connect_timeout)
            .timeout(remaining)
            .user_agent(concat!("rtdetr-server/", env!("CARGO_PKG_VERSION")));
        if let Some(url::Host::Domain(d)) = url.host() {
            // Pin the connection to the address that was checked.
            builder = builder.resolve(d, addr);
        }
        let client = builder.build().map_err(|e| ApiError::internal(format!("HTTP client: {e}")))?;
        let resp = client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "image/*")
            .send()
            .await
            .map_err(|e| fetch_error(format!("cannot fetch the image URL: {}", describe(&e))))?;
        let status = resp.status();
        if matches!(
            status,
            StatusCode::MOVED_PERMANENTLY
                | StatusCode::FOUND
                | StatusCode::SEE_OTHER
                | StatusCode::TEMPORARY_REDIRECT
                | StatusCode::PERMANENT_REDIRECT
        ) {
            hops += 1;
            if hops > cfg.max_redirects {
                return Err(fetch_error(format!("the image URL redirected more than {} times", cfg.max_redirects)));
            }
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| fetch_error("redirect without a Location header"))?;
            let next = url.join(location).map_err(|_| fetch_error("redirect to an invalid URL"))?;
            url = parse_url(next.as_str())?;
            continue;
        }
        if !status.is_success() {
            return Err(fetch_error(format!("the image URL answered HTTP {}", status.as_u16())));
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !content_type.starts_with("image/") {
            return Err(ApiError::unsupported_media(
                "unsupported_content_type",
                format!(
                    "the image URL returned content type {:?}; only image/* is accepted",
                    if content_type.is_empty() { "none" } else { content_type.as_str() }
                ),
            ));
        }
        if resp.content_length().is_some_and(|n| n > cfg.max_bytes as u64) {
            return Err(too_big(cfg.max_bytes));
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| fetch_error(format!("error while downloading the image: {}", describe(&e))))?;
            if body.len() + chunk.len() > cfg.max_bytes {
                return Err(too_big(cfg.max_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        return Ok(body);
    }
}

fn too_big(max: usize) -> ApiError {
    ApiError::too_large("image_too_large", format!("the image at the URL is larger than the limit of {max} bytes"))
}

fn describe(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "bad response body"
    } else {
        "request failed"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn public_and_non_public_addresses() {
        for s in [
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.255.255",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "64:ff9b::7f00:1",
            "100::1",
            "2001:db8::1",
            "2001:0::1",
            "2002:7f00:1::1",
            "3fff::1",
        ] {
            assert!(!is_public_ip(ip(s)), "{s} must be refused");
        }
        for s in
            ["8.8.8.8", "1.1.1.1", "100.63.255.255", "100.128.0.1", "172.32.0.1", "2606:4700::1111", "::ffff:8.8.8.8"]
        {
            assert!(is_public_ip(ip(s)), "{s} is public");
        }
    }

    #[test]
    fn policies() {
        let lo = SocketAddr::new(ip("127.0.0.1"), 80);
        assert!(!AddressPolicy::PublicOnly.allows(lo));
        assert!(AddressPolicy::AllowPrivate.allows(lo));
        assert!(!AddressPolicy::AllowPrivate.allows(SocketAddr::new(ip("0.0.0.0"), 80)));
        assert!(!AddressPolicy::AllowPrivate.allows(SocketAddr::new(ip("::ffff:224.0.0.1"), 80)));
        // Private networks yes, the cloud metadata service and other link-local addresses no.
        assert!(AddressPolicy::AllowPrivate.allows(SocketAddr::new(ip("10.1.2.3"), 80)));
        for meta in ["169.254.169.254", "169.254.0.1", "::ffff:169.254.169.254", "fe80::1", "febf::1"] {
            assert!(!AddressPolicy::AllowPrivate.allows(SocketAddr::new(ip(meta), 80)), "{meta}");
        }
        let only_81 = AddressPolicy::Custom(Arc::new(|a: SocketAddr| a.port() == 81));
        assert!(only_81.allows(SocketAddr::new(ip("127.0.0.1"), 81)) && !only_81.allows(lo));
    }

    #[test]
    fn url_forms() {
        assert!(parse_url("https://example.com/a.png").is_ok());
        for bad in
            ["ftp://example.com/a.png", "file:///etc/passwd", "gopher://x", "http://user:pw@example.com/", "nope"]
        {
            let e = parse_url(bad).unwrap_err();
            assert_eq!(e.status, 400, "{bad}");
        }
        // Numeric host forms are normalised by the URL parser, then checked as IPs.
        let u = parse_url("http://2130706433/").unwrap();
        assert_eq!(u.host(), Some(url::Host::Ipv4(Ipv4Addr::LOCALHOST)));
    }
}
