//! CPU plumbing for the hand-written kernels: zero-copy access to a candle tensor's f32
//! buffer, run-time SIMD dispatch (AVX-512 / AVX2+FMA / portable), and vectorisable
//! element-wise math (bias + activation epilogues, a polynomial `exp`).
//!
//! Kernels are written once as plain loops over slices (`#[inline(always)]`) and compiled
//! per instruction set by [`simd_dispatch!`]; the binary never assumes a CPU feature at
//! build time.

use std::sync::OnceLock;

use candle_core::{Device, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::io::config::Activation;

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
                /// # Safety
                /// The CPU has AVX-512 F/BW/DQ/VL, AVX2 and FMA.
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? {
                    $imp($($arg),*)
                }
                /// # Safety
                /// The CPU has AVX2 and FMA.
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? {
                    $imp($($arg),*)
                }
                match $crate::kernels::dispatch::isa() {
                    // SAFETY: `isa()` returned V4 only because the CPU has every feature
                    // `v4` was compiled for (AVX-512 F/BW/DQ/VL, AVX2, FMA).
                    $crate::kernels::dispatch::Isa::V4 => return unsafe { v4($($arg),*) },
                    // SAFETY: `isa()` returned V3 only because the CPU has AVX2 and FMA,
                    // the features `v3` was compiled for.
                    $crate::kernels::dispatch::Isa::V3 => return unsafe { v3($($arg),*) },
                    $crate::kernels::dispatch::Isa::Portable => {}
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

/// The bit pattern debug builds fill [`filled_by`]'s buffers with before `fill` runs: a
/// quiet NaN with a payload that no kernel computes (arithmetic makes NaNs with payload 0,
/// or passes on an input's), so an element still holding it afterwards was never written.
const UNWRITTEN: u32 = 0x7fc0_dead;

/// A buffer of `len` f32 that `fill` writes completely before anything reads it (`fill`
/// gets a raw pointer, so that parallel tasks can write disjoint parts).
///
/// The memory is not initialised first: a kernel's output would otherwise be written
/// twice. Setting the length of uninitialised f32s is sound only because every element has
/// been written when `fill` returns, so nothing uninitialised is ever read (any bit pattern
/// is a valid f32, but reading memory never written is undefined behaviour all the same).
/// Debug builds check it: they fill the buffer with the NaN pattern `UNWRITTEN` first and
/// panic, naming the first element left, if any element still holds it afterwards.
///
/// # Safety
/// The caller takes the responsibility that, when `fill` returns normally, it has written
/// every one of the `len` elements, only within `0..len`, and that no two threads wrote
/// the same element. (If `fill` panics, nothing is read.)
pub unsafe fn filled_by(len: usize, fill: impl FnOnce(SendPtr)) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(len);
    if cfg!(debug_assertions) {
        v.spare_capacity_mut()[..len].fill(std::mem::MaybeUninit::new(f32::from_bits(UNWRITTEN)));
    }
    fill(SendPtr { ptr: v.as_mut_ptr(), len });
    // SAFETY: the capacity is at least `len` (allocated above), and the caller guarantees
    // that `fill` initialised all `len` elements (checked just below in debug builds).
    unsafe { v.set_len(len) };
    if cfg!(debug_assertions) {
        if let Some(first) = v.iter().position(|x| x.to_bits() == UNWRITTEN) {
            let left = v.iter().filter(|x| x.to_bits() == UNWRITTEN).count();
            panic!(
                "filled_by: {left} of {len} output elements were never written (the first at index {first}): \
                 the kernel's tasks do not cover its output"
            );
        }
    }
    v
}

/// A raw pointer to a buffer of `len` f32 that parallel tasks writing disjoint ranges may
/// share. The length serves the debug builds' bounds checks.
#[derive(Clone, Copy)]
pub struct SendPtr {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: a `SendPtr` is a pointer and a length; it reads and writes nothing by itself.
// Every access through it is an `unsafe fn` (`at`, `slice`) whose caller promises that no
// two threads touch the same elements at once, so moving it to another thread is sound.
unsafe impl Send for SendPtr {}
// SAFETY: as for `Send`: a shared `&SendPtr` only gives copies of the pointer, and the
// accesses through them carry the disjointness promise.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The buffer `buf`, for tasks that each write their own part of it. The pointer is
    /// valid while `buf` is neither moved, reallocated nor accessed another way.
    pub fn new(buf: &mut [f32]) -> Self {
        Self { ptr: buf.as_mut_ptr(), len: buf.len() }
    }

    /// The address of element `offset`, where the caller will access `len` elements (for
    /// a strided block, its [`extent`]).
    ///
    /// # Safety
    /// `offset + len` is at most the buffer's length (asserted in debug builds), and the
    /// buffer is still allocated.
    pub unsafe fn at(self, offset: usize, len: usize) -> *mut f32 {
        debug_assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "SendPtr::at: {offset} + {len} is past the buffer's {} elements",
            self.len
        );
        // SAFETY: offset <= offset + len <= the buffer's length (the caller's promise),
        // so the result stays inside the allocation (or one past its end).
        unsafe { self.ptr.add(offset) }
    }

    /// Elements `offset..offset + len` as a slice.
    ///
    /// # Safety
    /// `offset..offset + len` is inside the buffer (asserted in debug builds), the buffer
    /// is still allocated, and no other thread (nor another slice) reads or writes that
    /// range while the slice lives. `std::slice::from_raw_parts_mut` also asks for
    /// initialised elements: a slice of a [`filled_by`] buffer taken before its elements
    /// are written (as the Winograd output pass does) relies on f32 having no invalid bit
    /// patterns and on writing every element before reading it.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, offset: usize, len: usize) -> &mut [f32] {
        // SAFETY: in bounds (the caller's promise, checked by `at` in debug builds).
        let start = unsafe { self.at(offset, len) };
        // SAFETY: `len` elements from `start` lie in one live allocation and nothing else
        // accesses them while the slice lives (the caller's promise).
        unsafe { std::slice::from_raw_parts_mut(start, len) }
    }
}

/// The number of elements a block of `rows` rows of `cols` values, `stride` apart, spans
/// from its first element: `(rows − 1)·stride + cols`, or 0 for an empty block. Debug
/// builds compare it with the length behind a raw pointer.
#[inline(always)]
pub fn extent(rows: usize, cols: usize, stride: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * stride + cols
    }
}

/// Debug builds: panics unless a block of `rows` rows of `cols` values, `stride` apart,
/// starting at `offset` of a buffer of `len` elements, lies inside it with rows that do
/// not overlap: what a kernel reading or writing the block through a raw pointer is
/// promised. Nothing in release builds.
#[inline(always)]
#[track_caller]
pub fn debug_check_block(what: &str, len: usize, offset: usize, rows: usize, cols: usize, stride: usize) {
    debug_assert!(rows <= 1 || stride >= cols, "{what}: rows overlap (stride {stride} < {cols} columns)");
    debug_assert!(
        offset.checked_add(extent(rows, cols, stride)).is_some_and(|end| end <= len),
        "{what}: {rows} x {cols} block (stride {stride}) at {offset} is past the buffer's {len} elements"
    );
}

/// Whether `n` f32s from `p` and `m` f32s from `q` share no element (address arithmetic
/// only, for debug assertions).
pub fn disjoint(p: *const f32, n: usize, q: *const f32, m: usize) -> bool {
    let (p, q, size) = (p as usize, q as usize, std::mem::size_of::<f32>());
    n == 0 || m == 0 || p + n * size <= q || q + m * size <= p
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
            $crate::io::config::Activation::Identity => {
                let $f = |v: f32| v;
                $body
            }
            $crate::io::config::Activation::Relu => {
                let $f = |v: f32| v.max(0.0);
                $body
            }
            $crate::io::config::Activation::Silu => {
                let $f = $crate::kernels::dispatch::silu;
                $body
            }
            $crate::io::config::Activation::Gelu => {
                let $f = $crate::kernels::dispatch::gelu;
                $body
            }
            $crate::io::config::Activation::GeluTanh => {
                let $f = $crate::kernels::dispatch::gelu_tanh;
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

#[inline(always)]
fn affine_add_impl(x: &mut [f32], scale: f32, shift: f32, residual: Option<&[f32]>) {
    match residual {
        Some(r) => x.iter_mut().zip(r).for_each(|(v, r)| *v = scale * *v + shift + r),
        None => x.iter_mut().for_each(|v| *v = scale * *v + shift),
    }
}

simd_dispatch! {
    /// `x[i] = scale · x[i] + shift (+ residual[i])`.
    fn affine_add(x: &mut [f32], scale: f32, shift: f32, residual: Option<&[f32]>) => affine_add_impl
}

/// [`affine_add`] over a whole buffer, in parallel chunks; `residual` has `x`'s length.
pub fn affine_add_par(x: &mut [f32], scale: f32, shift: f32, residual: Option<&[f32]>) {
    const CHUNK: usize = 1 << 14;
    match residual {
        Some(r) => {
            assert_eq!(r.len(), x.len(), "residual length");
            x.par_chunks_mut(CHUNK).zip(r.par_chunks(CHUNK)).for_each(|(x, r)| affine_add(x, scale, shift, Some(r)))
        }
        None => x.par_chunks_mut(CHUNK).for_each(|x| affine_add(x, scale, shift, None)),
    }
}

#[inline(always)]
fn act_affine_inplace_impl(x: &mut [f32], act: Activation, scale: f32, shift: f32) {
    with_act!(act, f => x.iter_mut().for_each(|v| *v = scale * f(*v) + shift))
}

simd_dispatch! {
    /// `x[i] = scale · act(x[i]) + shift` (an activation then HGNetV2's learnable affine
    /// block).
    pub fn act_affine_inplace(x: &mut [f32], act: Activation, scale: f32, shift: f32) => act_affine_inplace_impl
}

/// For tests whose kernel part needs an instruction set: `false` where `feature_ok` (run
/// it); else `true` after printing `SKIPPED <test>: needs <needs>, this CPU has <isa>` to
/// the process's stderr, past the test harness's capture, so that a skip is visible in
/// `cargo test`'s output instead of passing silently. Use as
/// `if skip_unless(available(), "module::test", "AVX-512F") { return; }` after the part
/// that runs everywhere.
#[cfg(test)]
pub fn skip_unless(feature_ok: bool, test: &str, needs: &str) -> bool {
    if !feature_ok {
        use std::io::Write;
        let line = format!("SKIPPED {test}: needs {needs}, this CPU has {}\n", isa().describe());
        // Written to the stream itself: `eprintln!` output is captured for passing tests.
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
    !feature_ok
}

impl Isa {
    /// The instruction set in words, for test and benchmark reports.
    pub fn describe(self) -> &'static str {
        match self {
            Isa::V4 => "V4 (AVX-512 F/BW/DQ/VL)",
            Isa::V3 => "V3 (AVX2 + FMA, no AVX-512)",
            Isa::Portable => "portable (neither AVX2 + FMA nor AVX-512)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which instruction-set paths this machine exercises (printed past the capture, as
    /// the skips are), and that the detected [`Isa`] agrees with the CPU's feature flags.
    #[test]
    fn isa_paths_exercised() {
        use crate::kernels::{bf16, sgemm};
        use std::io::Write;
        let isa = isa();
        let runs = |yes: bool| if yes { "runs here" } else { "not exercised here" };
        let line = format!(
            "ISA paths: dispatch {}; packed f32 kernels: AVX-512 {}, AVX2 {}; AVX512-BF16 kernel {}\n",
            isa.describe(),
            runs(isa == Isa::V4),
            runs(sgemm::available()),
            runs(bf16::available())
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
        #[cfg(target_arch = "x86_64")]
        {
            let avx512 = [
                is_x86_feature_detected!("avx512f"),
                is_x86_feature_detected!("avx512bw"),
                is_x86_feature_detected!("avx512dq"),
                is_x86_feature_detected!("avx512vl"),
            ];
            let v3 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            let want = match (avx512.iter().all(|&f| f), v3) {
                (true, true) => Isa::V4,
                (_, true) => Isa::V3,
                _ => Isa::Portable,
            };
            assert_eq!(isa, want, "detected ISA vs the CPU's flags (avx512 f/bw/dq/vl {avx512:?}, avx2+fma {v3})");
            let bf16_flags = is_x86_feature_detected!("avx512bf16") && avx512[0] && avx512[1];
            assert_eq!(bf16::available(), bf16_flags, "bf16 kernel vs avx512bf16/f/bw flags");
        }
        #[cfg(not(target_arch = "x86_64"))]
        assert_eq!(isa, Isa::Portable, "only x86-64 has SIMD paths");
        assert_eq!(sgemm::available(), isa != Isa::Portable, "the packed f32 kernels run on V4 and V3");
    }

    #[test]
    fn filled_by_returns_what_fill_wrote() {
        let fill = |dst: SendPtr| {
            for i in 0..37 {
                // SAFETY: i + 1 <= 37, the buffer's length; one thread.
                unsafe { dst.at(i, 1).write(i as f32) };
            }
        };
        // SAFETY: `fill` writes all 37 elements, in bounds, from one thread.
        let v = unsafe { filled_by(37, fill) };
        assert_eq!(v, (0..37).map(|i| i as f32).collect::<Vec<_>>());
        // SAFETY: nothing to write.
        assert!(unsafe { filled_by(0, |_| {}) }.is_empty());
    }

    /// Debug builds catch a kernel that leaves part of its output unwritten (in release
    /// builds the same call would return uninitialised memory, so it runs in debug only).
    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "1 of 8 output elements were never written (the first at index 5)")]
    fn filled_by_catches_unwritten_elements_in_debug_builds() {
        let fill = |dst: SendPtr| {
            for i in (0..8).filter(|&i| i != 5) {
                // SAFETY: i < 8, the buffer's length; one thread.
                unsafe { dst.at(i, 1).write(1.0) };
            }
        };
        // SAFETY: deliberately broken (element 5 is never written): the debug check panics
        // before the buffer is returned.
        let _ = unsafe { filled_by(8, fill) };
    }

    /// `SendPtr` bounds are checked in debug builds.
    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "past the buffer")]
    fn send_ptr_bounds_are_checked_in_debug_builds() {
        let mut buf = vec![0f32; 4];
        let p = SendPtr::new(&mut buf);
        // SAFETY: deliberately out of bounds: the debug assertion panics before `add`.
        let _ = unsafe { p.at(3, 2) };
    }

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
