//! The AVX2 + FMA micro-kernel of the packed-weight f32 products ([`super::sgemm`]), for
//! CPUs without AVX-512 (AMD Zen 2 and 3, Intel before Skylake-SP and its client parts).
//!
//! Same contract and weight layout as the AVX-512 kernel: W packed once in panels of
//! [`MR`] rows, B read in place. The block of C is MR × 16 (two 8-lane vectors per row):
//! 12 accumulators, two B vectors and a broadcast fill 15 of the 16 ymm registers. Full
//! chunks load B with plain loads; a tail chunk (fewer than 16 columns) with masked ones.

use std::arch::x86_64::*;

use super::sgemm::{drive, in_registers, Block, Epilogue, MicroKernel, PackedWeights, Tail, MR};
use crate::io::config::Activation;
use crate::kernels::dispatch::AddAt;

/// # Safety
/// The CPU has AVX2 and FMA, and the operands are as [`super::sgemm::gemm`] requires
/// (which asserts the weight rows and the epilogue's bias lengths before calling this).
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(
    w: &PackedWeights,
    r0: usize,
    nrows: usize,
    b: *const f32,
    b_stride: usize,
    cols: usize,
    dst: *mut f32,
    dst_stride: usize,
    epi: Epilogue,
) {
    // SAFETY: AVX2 and FMA (this function's features), operands as `gemm` requires.
    unsafe { drive::<Avx2>(w, r0, nrows, b, b_stride, cols, dst, dst_stride, epi) }
}

/// The AVX2 micro-kernel: MR × 16 blocks.
struct Avx2;

impl MicroKernel for Avx2 {
    /// Two 8-lane vectors.
    const NC: usize = 16;
    /// The chunk's B rows (KC × 64 bytes) stay in L1.
    const KC: usize = 256;
    const PACK_B: bool = true;

    #[inline(always)]
    unsafe fn block(x: Block) {
        // SAFETY: the caller's promise (MicroKernel::block's contract).
        unsafe { dispatch(x) }
    }
}

/// The kernel for m rows and ncols columns: full 16-column chunks without masks.
///
/// # Safety
/// As [`kernel`], with `1 <= args.rows <= MR` and `1 <= args.ncols <= 16` (asserted in
/// debug builds).
#[inline(always)]
unsafe fn dispatch(args: Block) {
    let (m, ncols) = (args.rows, args.ncols);
    debug_assert!((1..=MR).contains(&m) && (1..=Avx2::NC).contains(&ncols), "block {m} rows x {ncols} columns");
    macro_rules! rows {
        ($nv:literal, $masked:literal) => {
            match m {
                6 => kernel::<6, $nv, $masked>(args),
                5 => kernel::<5, $nv, $masked>(args),
                4 => kernel::<4, $nv, $masked>(args),
                3 => kernel::<3, $nv, $masked>(args),
                2 => kernel::<2, $nv, $masked>(args),
                _ => kernel::<1, $nv, $masked>(args),
            }
        };
    }
    // SAFETY: the caller's promise for `kernel`, with M = m, NV = ⌈ncols / 8⌉ and masks
    // unless the chunk is whole.
    unsafe {
        match ncols {
            16 => rows!(2, false),
            9..=15 => rows!(2, true),
            8 => rows!(1, false),
            _ => rows!(1, true),
        }
    }
}

/// The lane masks of NV vectors covering `ncols` columns (all ones for a whole vector).
#[inline(always)]
fn lane_masks<const NV: usize>(ncols: usize) -> [__m256i; NV] {
    std::array::from_fn(|v| {
        let n = ncols.saturating_sub(v * 8).min(8) as i32;
        // SAFETY: AVX (implied by the AVX2 of every caller).
        unsafe {
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lanes)
        }
    })
}

/// Loads vector v of a row: whole, or the lanes of `mask`.
///
/// # Safety
/// AVX2; `p` points at the lanes the load reads (8, or those set in `mask`).
#[inline(always)]
unsafe fn load<const MASKED: bool>(p: *const f32, mask: __m256i) -> __m256 {
    // SAFETY: the caller's promise.
    unsafe {
        if MASKED {
            _mm256_maskload_ps(p, mask)
        } else {
            _mm256_loadu_ps(p)
        }
    }
}

/// C (M × ncols ≤ 8·NV) (+)= panel · B block.
///
/// # Safety
/// The CPU has AVX2 and FMA (this is inlined into [`gemm`]). `M <= MR`, `x.ncols <= 8·NV`
/// and NV = ⌈ncols / 8⌉, `x.ncols == 8·NV` unless MASKED (asserted in debug builds);
/// `x.a` points at `x.kc`·MR readable weights; `x.b` at `x.kc` rows of `x.ncols` readable
/// f32s, `x.b_stride` apart; `x.out` at M rows of `x.ncols` f32s, `x.dst_stride` apart,
/// that only this thread accesses; the tail's pointers as [`store`] requires.
#[inline(always)]
unsafe fn kernel<const M: usize, const NV: usize, const MASKED: bool>(x: Block) {
    debug_assert!(M <= MR && x.ncols <= 8 * NV && x.ncols > 8 * (NV - 1), "{M} x {} in {NV} vectors", x.ncols);
    debug_assert!(MASKED || x.ncols == 8 * NV, "an unmasked block is whole");
    let masks = lane_masks::<NV>(x.ncols);
    // SAFETY: AVX (the caller's promise), as for every intrinsic below.
    let mut acc = unsafe { [[_mm256_setzero_ps(); NV]; M] };
    for k in 0..x.kc {
        // SAFETY: row k < kc of the block of b, vector v < NV starting at column 8·v <
        // ncols: inside b (the caller's promise); masked loads read only the block's
        // columns.
        let bv: [__m256; NV] = unsafe {
            let bp = x.b.add(k * x.b_stride);
            std::array::from_fn(|v| load::<MASKED>(bp.add(v * 8), masks[v]))
        };
        // SAFETY: the panel's MR weights of k < kc (the caller's promise).
        let ak = unsafe { x.a.add(k * MR) };
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: weight i < M <= MR of the panel at k; AVX.
            let av = unsafe { _mm256_broadcast_ss(&*ak.add(i)) };
            for (r, b) in row.iter_mut().zip(bv.iter()) {
                // SAFETY: FMA (the caller's promise).
                *r = unsafe { _mm256_fmadd_ps(av, *b, *r) };
            }
        }
    }
    // SAFETY: x.out covers the M × ncols block and the tail its epilogue (the caller's
    // promise); the masks are those of the block's columns.
    unsafe { store::<M, NV, MASKED>(acc, x.out, x.dst_stride, masks, x.first, x.tail) };
}

/// Stores an M × 8·NV block of accumulators at `out` (row stride `stride`, lanes limited
/// by `masks` when MASKED): added to what is there unless `first`, then the tail's part
/// of the epilogue.
///
/// # Safety
/// AVX2. `out` (and the tail's residual, laid out like it) points at M rows, `stride`
/// apart, whose lanes in `masks` (all 8·NV unless MASKED) are writable (readable for the
/// residual) and accessed by no other thread; the tail's bias holds one value per row (row
/// bias) or the masks' lanes (column bias).
#[inline(always)]
unsafe fn store<const M: usize, const NV: usize, const MASKED: bool>(
    acc: [[__m256; NV]; M],
    out: *mut f32,
    stride: usize,
    masks: [__m256i; NV],
    first: bool,
    tail: Option<Tail>,
) {
    // SAFETY: AVX2 and the bounds above are the caller's promise; every load and store
    // below covers the lanes of row i < M, vector v < NV of the block (masked when MASKED).
    unsafe {
        #[allow(clippy::needless_range_loop)]
        for i in 0..M {
            let o = out.add(i * stride);
            let bias = tail.and_then(|t| t.bias);
            for v in 0..NV {
                let ov = o.add(v * 8);
                let mut val = acc[i][v];
                if !first {
                    val = _mm256_add_ps(val, load::<MASKED>(ov, masks[v]));
                }
                match bias {
                    Some((p, false)) => val = _mm256_add_ps(val, _mm256_broadcast_ss(&*p.add(i))),
                    Some((p, true)) => val = _mm256_add_ps(val, load::<MASKED>(p.add(v * 8), masks[v])),
                    None => {}
                }
                if let Some(t) = tail {
                    let res = t.residual.map(|(p, at)| (load::<MASKED>(p.add(i * stride + v * 8), masks[v]), at));
                    if let Some((r, AddAt::BeforeAct)) = res {
                        val = _mm256_add_ps(val, r);
                    }
                    if in_registers(t.act) {
                        if t.act == Activation::Relu {
                            val = _mm256_max_ps(val, _mm256_setzero_ps());
                        }
                        if let Some((r, AddAt::AfterAct)) = res {
                            val = _mm256_add_ps(val, r);
                        }
                    }
                }
                if MASKED {
                    _mm256_maskstore_ps(ov, masks[v], val);
                } else {
                    _mm256_storeu_ps(ov, val);
                }
            }
        }
    }
}
