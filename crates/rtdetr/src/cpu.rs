//! CPU plumbing for the hand-written kernels: zero-copy access to a candle tensor's f32
//! buffer, run-time SIMD dispatch (AVX-512 / AVX2+FMA / portable), and vectorisable
//! element-wise math (bias + activation epilogues, a polynomial `exp`).
//!
//! Kernels are written once as plain loops over slices (`#[inline(always)]`) and compiled
//! per instruction set by [`simd_dispatch!`]; the binary never assumes a CPU feature at
//! build time.

use std::sync::OnceLock;

use candle_core::{Device, Shape, Storage, Tensor};

use crate::config::Activation;
use crate::error::{Error, Result};

/// The instruction sets the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 F/BW/DQ/VL (x86-64-v4).
    V4,
    /// AVX2 + FMA (x86-64-v3).
    V3,
    Portable,
}

/// The best instruction set of this CPU, detected once.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
            {
                return Isa::V4;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::V3;
            }
        }
        Isa::Portable
    })
}

/// Defines `fn $name(args) -> ret` that runs `$imp(args)` compiled for the CPU's best
/// instruction set. `$imp` must be `#[inline(always)]` so each copy is vectorised for its
/// target.
macro_rules! simd_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $imp:path) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? {
                    $imp($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? {
                    $imp($($arg),*)
                }
                match $crate::cpu::isa() {
                    // SAFETY: the CPU supports the features these copies were compiled for.
                    $crate::cpu::Isa::V4 => return unsafe { v4($($arg),*) },
                    $crate::cpu::Isa::V3 => return unsafe { v3($($arg),*) },
                    $crate::cpu::Isa::Portable => {}
                }
            }
            $imp($($arg),*)
        }
    };
}
#[allow(unused_imports)]
pub(crate) use simd_dispatch;

/// Runs `f` on the f32 elements of `t` in row-major order, without copying when `t` is a
/// contiguous f32 CPU tensor.
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = if t.is_contiguous() && t.dtype() == candle_core::DType::F32 {
        t.clone()
    } else {
        t.to_dtype(candle_core::DType::F32)?.contiguous()?
    };
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(Error::InvalidArgument("the CPU kernels need a CPU tensor".into()));
    };
    let data = cpu.as_slice::<f32>()?;
    let (start, end) =
        layout.contiguous_offsets().ok_or_else(|| Error::InvalidArgument("tensor is not contiguous".into()))?;
    Ok(f(&data[start..end]))
}

/// A tensor owning `data` (no copy).
pub fn tensor<S: Into<Shape>>(data: Vec<f32>, shape: S, device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(data, shape, device)?)
}

/// A buffer of `len` f32 the caller fills completely through `fill` (given the raw
/// pointer, so that parallel tasks can write disjoint parts) before it is read.
///
/// # Safety
/// `fill` must write every element.
pub unsafe fn filled_by(len: usize, fill: impl FnOnce(SendPtr)) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(len);
    fill(SendPtr(v.as_mut_ptr()));
    // SAFETY: the caller guarantees `fill` initialised all `len` elements.
    unsafe { v.set_len(len) };
    v
}

/// A raw pointer that parallel tasks writing disjoint ranges may share.
#[derive(Clone, Copy)]
pub struct SendPtr(pub *mut f32);
// SAFETY: users only write disjoint ranges from different threads.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    pub fn get(self) -> *mut f32 {
        self.0
    }

    /// # Safety
    /// `offset..offset + len` is inside the allocation and no other thread touches it.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, offset: usize, len: usize) -> &mut [f32] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(offset), len) }
    }
}

/// Combines `map(x)` with `op` in 16 interleaved lanes, so that the loop vectorises (a
/// serial fold is one dependent operation per element); for sums the order differs from
/// the serial one by rounding only.
#[inline(always)]
fn fold_lanes(x: &[f32], init: f32, map: impl Fn(f32) -> f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    let (chunks, rest) = x.as_chunks::<16>();
    let mut acc = [init; 16];
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a = op(*a, map(*v));
        }
    }
    let lanes = acc.iter().fold(init, |a, v| op(a, *v));
    rest.iter().fold(lanes, |a, v| op(a, map(*v)))
}

/// `Σ f(x)`, vectorised (see `fold_lanes`).
#[inline(always)]
pub fn sum_map(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    fold_lanes(x, 0.0, f, |a, b| a + b)
}

/// The largest value of `x` (NaN ignored, as `f32::max`), vectorised; −∞ when empty.
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    fold_lanes(x, f32::NEG_INFINITY, |v| v, f32::max)
}

/// `exp(x)` in f32 (Cephes' polynomial, about 1 ulp), written so that loops over it
/// vectorise. Saturates to 0 below -87.3 and to f32::MAX above 88.7; NaN propagates.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.336_54, 88.722_83);
    // Round to nearest via the 1.5·2^23 trick (no rounding instruction needed); the sum's
    // low mantissa bits then hold n itself, read as an integer without a float-to-int
    // conversion (Rust's saturating `as i32` keeps the loops scalar).
    let shifted = x * LOG2E + 12_582_912.0;
    let n = shifted - 12_582_912.0;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_66;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^n from exponent bits; n is in [-126, 128] after the clamp, so split it in two
    // halves that are both normal numbers.
    let ni = shifted.to_bits() as i32 - 0x4B40_0000;
    let (a, b) = (ni >> 1, ni - (ni >> 1));
    let pow2 = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    y * pow2(a) * pow2(b)
}

/// `x · sigmoid(x)` as the reference computes it: `x / (1 + exp(-x))`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// `erf(x)`: a rational approximation (Eigen's), absolute error below 5e-7, exactly ±1
/// where the f32 result rounds to it.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 + -2.101_024e-6;
    p = p * x2 + -5.692_506_4e-5;
    p = p * x2 + -7.349_906_3e-4;
    p = p * x2 + -2.954_600_1e-3;
    p = p * x2 + -1.609_603_3e-2;
    let mut q = -1.456_607_2e-5f32;
    q = q * x2 + -2.133_740_6e-4;
    q = q * x2 + -1.682_827e-3;
    q = q * x2 + -7.373_329_3e-3;
    q = q * x2 + -1.426_473_9e-2;
    // Beyond 3.9, erf rounds to ±1 in f32.
    if x.abs() >= 3.9 {
        1f32.copysign(x)
    } else {
        x * p / q
    }
}

/// Exact GELU, `0.5·x·(1 + erf(x/√2))`.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    (erf(x * std::f32::consts::FRAC_1_SQRT_2) + 1.0) * 0.5 * x
}

/// GELU's tanh approximation, `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
    let y = SQRT_TWO_OVER_PI * x * (1.0 + 0.044715 * x * x);
    // tanh(y) = sign(y)·(1 − e^{−2|y|}) / (1 + e^{−2|y|}).
    let e = exp(-2.0 * y.abs());
    let t = ((1.0 - e) / (1.0 + e)).copysign(y);
    0.5 * x * (1.0 + t)
}

/// Runs `$body` with `$f` bound to the element-wise function of `$act`, so that each
/// activation gets its own vectorised loop.
macro_rules! with_act {
    ($act:expr, $f:ident => $body:expr) => {
        match $act {
            $crate::config::Activation::Identity => {
                let $f = |v: f32| v;
                $body
            }
            $crate::config::Activation::Relu => {
                let $f = |v: f32| v.max(0.0);
                $body
            }
            $crate::config::Activation::Silu => {
                let $f = $crate::cpu::silu;
                $body
            }
            $crate::config::Activation::Gelu => {
                let $f = $crate::cpu::gelu;
                $body
            }
            $crate::config::Activation::GeluTanh => {
                let $f = $crate::cpu::gelu_tanh;
                $body
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use with_act;

/// Applies an activation to a scalar (reference paths and tests).
pub fn act(v: f32, a: Activation) -> f32 {
    with_act!(a, f => f(v))
}

/// Where an epilogue adds its residual: `act(v + r)` or `act(v) + r`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddAt {
    BeforeAct,
    AfterAct,
}

#[inline(always)]
fn bias_act_impl(row: &mut [f32], bias: f32, residual: Option<&[f32]>, at: AddAt, act: Activation) {
    with_act!(act, f => match (residual, at) {
        (Some(r), AddAt::BeforeAct) => row.iter_mut().zip(r).for_each(|(v, r)| *v = f(*v + bias + *r)),
        (Some(r), AddAt::AfterAct) => row.iter_mut().zip(r).for_each(|(v, r)| *v = f(*v + bias) + *r),
        (None, _) => row.iter_mut().for_each(|v| *v = f(*v + bias)),
    })
}

simd_dispatch! {
    /// `row[i] = act(row[i] + bias + residual[i])`, or `act(row[i] + bias) + residual[i]`
    /// (residual optional).
    pub fn bias_act(row: &mut [f32], bias: f32, residual: Option<&[f32]>, at: AddAt, act: Activation) => bias_act_impl
}

#[inline(always)]
fn bias_row_act_impl(row: &mut [f32], bias: &[f32], residual: Option<&[f32]>, act: Activation) {
    with_act!(act, f => match residual {
        Some(r) => row.iter_mut().zip(bias).zip(r).for_each(|((v, b), r)| *v = f(*v + *b + *r)),
        None => row.iter_mut().zip(bias).for_each(|(v, b)| *v = f(*v + *b)),
    })
}

simd_dispatch! {
    /// `row[j] = act(row[j] + bias[j] + residual[j])` (residual optional).
    pub fn bias_row_act(row: &mut [f32], bias: &[f32], residual: Option<&[f32]>, act: Activation) => bias_row_act_impl
}

#[inline(always)]
fn act_inplace_impl(x: &mut [f32], act: Activation) {
    with_act!(act, f => x.iter_mut().for_each(|v| *v = f(*v)))
}

simd_dispatch! {
    /// `x[i] = act(x[i])`.
    pub fn act_inplace(x: &mut [f32], act: Activation) => act_inplace_impl
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_map_equals_the_sum_to_rounding() {
        for n in (0..40).chain([255, 256, 1000]) {
            let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 101) as f32 / 13.0 - 3.0).collect();
            let want: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
            let got = sum_map(&x, |v| v * v) as f64;
            assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "n {n}: {got} vs {want}");
        }
    }

    #[test]
    fn exp_matches_std() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "max relative error {worst:e}");
        assert!(exp(-1000.0) >= 0.0 && exp(-1000.0) < 1e-37);
        assert!(exp(1000.0) > 1e38);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn silu_saturates() {
        assert_eq!(silu(0.0), 0.0);
        assert!(silu(-200.0).abs() < 1e-30);
        assert!((silu(200.0) - 200.0).abs() < 1e-4);
        for x in [-5.0f32, -0.3, 0.7, 3.0] {
            assert!((silu(x) - x / (1.0 + (-x).exp())).abs() < 1e-6);
        }
    }

    /// erf by its Taylor series in f64 (accurate to ~1e-9 for |x| <= 4; beyond, erf is
    /// ±1 within 2e-8).
    fn erf_ref(x: f64) -> f64 {
        if x.abs() > 4.0 {
            return x.signum();
        }
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term.abs() > 1e-17 * sum.abs().max(1e-300) || n < 5.0 {
            n += 1.0;
            term *= -x * x / n;
            sum += term / (2.0 * n + 1.0);
            if n > 200.0 {
                break;
            }
        }
        (sum * 2.0 / std::f64::consts::PI.sqrt()).clamp(-1.0, 1.0)
    }

    #[test]
    fn erf_and_gelus_match_references() {
        let mut x = -6.0f32;
        while x < 6.0 {
            let e = erf_ref(x as f64);
            assert!((erf(x) as f64 - e).abs() < 5e-7, "erf({x})");
            let g = 0.5 * x as f64 * (1.0 + erf_ref(x as f64 * std::f64::consts::FRAC_1_SQRT_2));
            assert!((gelu(x) as f64 - g).abs() < 1e-6 * (x.abs() as f64).max(1.0), "gelu({x})");
            let y = 0.797_884_560_802_865_4 * x as f64 * (1.0 + 0.044715 * (x * x) as f64);
            let gt = 0.5 * x as f64 * (1.0 + y.tanh());
            assert!((gelu_tanh(x) as f64 - gt).abs() < 1e-6 * (x.abs() as f64).max(1.0), "gelu_tanh({x})");
            x += 0.00731;
        }
        assert_eq!(gelu(0.0), 0.0);
        assert!((gelu(100.0) - 100.0).abs() < 1e-4 && gelu(-100.0).abs() < 1e-6);
        assert!((gelu_tanh(100.0) - 100.0).abs() < 1e-4 && gelu_tanh(-100.0).abs() < 1e-6);
    }

    const ACTS: [Activation; 5] =
        [Activation::Identity, Activation::Relu, Activation::Silu, Activation::Gelu, Activation::GeluTanh];

    #[test]
    fn epilogues_all_kinds_and_lengths() {
        for len in [0usize, 1, 7, 16, 33] {
            let base: Vec<f32> = (0..len).map(|i| (i as f32 - 10.0) * 0.37).collect();
            let res: Vec<f32> = (0..len).map(|i| (i as f32) * 0.1 - 1.0).collect();
            let bias: Vec<f32> = (0..len).map(|i| (i as f32) * -0.05 + 0.3).collect();
            for a in ACTS {
                for residual in [None, Some(res.as_slice())] {
                    let mut got = base.clone();
                    bias_act(&mut got, 0.25, residual, AddAt::BeforeAct, a);
                    let mut got_after = base.clone();
                    bias_act(&mut got_after, 0.25, residual, AddAt::AfterAct, a);
                    let mut got_row = base.clone();
                    bias_row_act(&mut got_row, &bias, residual, a);
                    for i in 0..len {
                        let r = residual.map_or(0.0, |r| r[i]);
                        let want = act(base[i] + 0.25 + r, a);
                        assert!((got[i] - want).abs() <= 1e-6 * want.abs().max(1.0), "{a:?} {i}");
                        let want = act(base[i] + 0.25, a) + r;
                        assert!((got_after[i] - want).abs() <= 1e-6 * want.abs().max(1.0), "{a:?} {i}");
                        let want = act(base[i] + bias[i] + r, a);
                        assert!((got_row[i] - want).abs() <= 1e-6 * want.abs().max(1.0), "{a:?} {i}");
                    }
                }
                let mut got = base.clone();
                act_inplace(&mut got, a);
                for i in 0..len {
                    assert_eq!(got[i], act(base[i], a), "{a:?} {i}");
                }
            }
        }
    }
}
