//! bf16 matrix products with f32 accumulation on CPUs with AVX512-BF16 (`vdpbf16ps`), for
//! `--precision bf16`.
//!
//! `C[r][j] = Σ_k W[r][k] · B[k][j]`: W is a layer's weight (rows × kdim), converted once
//! to bf16 pairs along k; B is an activation panel (kdim × cols, f32, any row stride),
//! converted per call into 64-column chunks of k-pair-interleaved bf16 (the operand layout
//! of `vdpbf16ps`, which multiplies two bf16 pairs per f32 lane and adds both products
//! to the lane). Rounding is round-to-nearest-even on both operands; sums stay f32.
//!
//! The micro-kernel holds an MR × 64 block of C in 24 registers (MR ≤ 6) and streams W's
//! pairs as broadcasts and B's chunk as four vectors per k-pair.

use std::sync::OnceLock;

use crate::kernels::sgemm::Epilogue;

/// Whether this CPU has the bf16 dot-product instructions the kernel needs.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx512bf16")
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Columns per packed chunk of B (four 16-lane vectors).
const NC: usize = 64;
/// Rows of C per micro-kernel call.
const MR: usize = 6;

/// Round-to-nearest-even f32 → bf16 (NaN stays NaN), as the hardware conversion does.
pub fn to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// bf16 → f32 (exact).
pub fn from_bf16(v: u16) -> f32 {
    f32::from_bits((v as u32) << 16)
}

/// A weight matrix (rows × kdim) as bf16 pairs along k: row r, pair p holds
/// `W[r][2p]` (low half) and `W[r][2p+1]` (high half, 0 past kdim).
#[derive(Debug, Clone)]
pub struct PackedWeights {
    pairs: Vec<u32>,
    rows: usize,
    kdim: usize,
}

impl PackedWeights {
    /// `w`: rows × kdim, row-major.
    pub fn new(w: &[f32], rows: usize, kdim: usize) -> Self {
        assert_eq!(w.len(), rows * kdim, "weight shape");
        let kp = kdim.div_ceil(2);
        let mut pairs = vec![0u32; rows * kp];
        for (r, row) in w.chunks_exact(kdim.max(1)).enumerate().take(rows) {
            for p in 0..kp {
                let lo = to_bf16(row[2 * p]) as u32;
                let hi = if 2 * p + 1 < kdim { to_bf16(row[2 * p + 1]) as u32 } else { 0 };
                pairs[r * kp + p] = lo | (hi << 16);
            }
        }
        Self { pairs, rows, kdim }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn kdim(&self) -> usize {
        self.kdim
    }

    fn kpairs(&self) -> usize {
        self.kdim.div_ceil(2)
    }
}

/// Per-thread scratch for the packed B panel (u32 = one bf16 pair).
#[derive(Default)]
pub struct Scratch(Vec<u32>);

/// A constant right-hand matrix (kdim × cols, e.g. a linear layer's Wᵀ) packed once into
/// the kernel's chunked, k-pair-interleaved layout.
#[derive(Debug, Clone)]
pub struct PackedB {
    data: Vec<u32>,
    kdim: usize,
    cols: usize,
}

impl PackedB {
    /// `b`: kdim × cols, row-major. Requires [`available`].
    pub fn new(b: &[f32], kdim: usize, cols: usize) -> Self {
        assert!(available(), "bf16 packing needs AVX512-BF16");
        assert_eq!(b.len(), kdim * cols, "matrix shape");
        let mut data = vec![0u32; cols.div_ceil(NC) * kdim.div_ceil(2) * NC];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: available() asserted; `b` holds kdim rows of cols (asserted) and `data`
        // every chunk of kdim.div_ceil(2) pairs by NC columns.
        unsafe {
            x86::pack_b(b.as_ptr(), cols, kdim, cols, data.as_mut_ptr(), data.len())
        };
        Self { data, kdim, cols }
    }

    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// `dst (rows × b.cols, row stride dst_stride) = a (rows × kdim f32, row-major) · B`
/// (overwrites dst): the rows of `a` are converted here, B was packed once.
///
/// # Safety
/// Requires [`available`] (a [`PackedB`] exists only where it is; asserted again in debug
/// builds). `a` holds rows × b.kdim f32s (always asserted); `dst` points at `rows` rows of
/// b.cols f32s, `dst_stride` apart, writable by this thread only (the stride is checked in
/// debug builds); the epilogue's residual, if any, is laid out like dst and apart from it.
pub unsafe fn gemm_packed_b(a: &[f32], rows: usize, b: &PackedB, dst: *mut f32, dst_stride: usize, epi: Epilogue) {
    assert_eq!(a.len(), rows * b.kdim, "lhs shape");
    epi.check(rows, b.cols);
    debug_assert!(available(), "the bf16 kernel needs AVX512-BF16");
    debug_assert!(!dst.is_null() && (rows <= 1 || dst_stride >= b.cols), "dst rows: stride {dst_stride}");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has AVX512-BF16 and the operands are as documented (the caller's
    // promise; the lhs and bias lengths asserted above).
    unsafe {
        x86::gemm_packed_b(a, rows, b, dst, dst_stride, epi)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (dst, dst_stride, epi);
        unreachable!("bf16 kernels are x86-64 only; check available()")
    }
}

/// `dst[r·dst_stride + j] = Σ_k W[r0 + r][k] · b[k·b_stride + j]` for r < nrows, j < cols
/// (overwrites dst).
///
/// # Safety
/// Requires [`available`]. `b` points at `w.kdim()` rows of `cols` readable f32s,
/// `b_stride` apart; `dst` at `nrows` rows of `cols` f32s, `dst_stride` apart, writable by
/// this thread only; the epilogue's residual, if any, is laid out like dst and apart from
/// it; `r0 + nrows <= w.rows()`. The weight rows are always asserted; the CPU, strides and
/// pointers in debug builds.
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
    scratch: &mut Scratch,
    epi: Epilogue,
) {
    assert!(r0 + nrows <= w.rows, "weight rows");
    epi.check(nrows, cols);
    crate::kernels::sgemm::debug_check_operands(available, w.kdim, nrows, b, b_stride, cols, dst, dst_stride);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has AVX512-BF16 and the operands are as documented (the caller's
    // promise); the weight rows and the bias lengths were asserted above.
    unsafe {
        x86::gemm(w, r0, nrows, b, b_stride, cols, dst, dst_stride, scratch, epi)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (b, b_stride, cols, dst, dst_stride, scratch, epi);
        unreachable!("bf16 kernels are x86-64 only; check available()")
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{PackedB, PackedWeights, Scratch, MR, NC};
    use crate::kernels::sgemm::x86::{lane_mask, lane_masks, store, Tail};
    use crate::kernels::sgemm::{finish_block, Epilogue};

    thread_local! {
        /// Rows of the left operand as bf16 pairs, reused across calls.
        static LHS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// # Safety
    /// The CPU has AVX512-BF16 (and AVX-512 F/BW); the operands are as
    /// [`super::gemm_packed_b`] requires, which asserts `a`'s length and the bias lengths.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn gemm_packed_b(a: &[f32], rows: usize, b: &PackedB, dst: *mut f32, dst_stride: usize, epi: Epilogue) {
        let kp = b.kdim.div_ceil(2);
        LHS.with_borrow_mut(|lhs| {
            if lhs.len() < rows * kp {
                lhs.resize(rows * kp, 0);
            }
            for r in 0..rows {
                // SAFETY: the CPU features (the caller's promise); row r < rows of `a`
                // (rows × kdim f32s) and of `lhs` (at least rows × kp pairs, that is
                // 2·kp >= kdim u16 per row, which convert_row fills).
                unsafe { convert_row(a.as_ptr().add(r * b.kdim), b.kdim, lhs.as_mut_ptr().add(r * kp) as *mut u16) };
            }
            // SAFETY: the CPU features; `lhs` holds rows × kp pairs, `b.data` every chunk
            // of b.cols, dst and the epilogue as the caller promised.
            unsafe { product(lhs.as_ptr(), kp, rows, b.data.as_ptr(), b.cols, dst, dst_stride, &epi) };
        })
    }

    /// f32 → bf16 (nearest even) of n values; an odd n gets a zero pad to a whole pair.
    ///
    /// # Safety
    /// The CPU has AVX512-BF16 (and AVX-512 F/BW); `x` points at `n` readable f32s, `out`
    /// at `n.div_ceil(2)·2` writable u16s.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn convert_row(x: *const f32, n: usize, out: *mut u16) {
        let mut i = 0;
        while i < n {
            let m = (n - i).min(32);
            let lo_n = m.min(16);
            let hi_n = m - lo_n;
            // SAFETY: values i..i + lo_n and i + 16.. i + 16 + hi_n (i + lo_n + hi_n =
            // i + m <= n) are inside `x`; the masks keep the loads to them (an address
            // one past the end, with an empty mask, is allowed).
            let (lo, hi) = unsafe {
                (
                    _mm512_maskz_loadu_ps(((1u32 << lo_n) - 1) as __mmask16, x.add(i)),
                    _mm512_maskz_loadu_ps(((1u64 << hi_n) - 1) as __mmask16, x.add(i + 16.min(m))),
                )
            };
            // SAFETY: 32 bf16 and 32 i16 lanes are the same 512 bits.
            let v: __m512i = unsafe { std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo)) };
            let keep = m.div_ceil(2) * 2;
            // SAFETY: u16s i..i + keep <= n.div_ceil(2)·2 of `out`; the mask keeps the store
            // to them.
            unsafe { _mm512_mask_storeu_epi16(out.add(i) as *mut i16, ((1u64 << keep) - 1) as __mmask32, v) };
            i += 32;
        }
    }

    /// # Safety
    /// The CPU has AVX512-BF16 (and AVX-512 F/BW); the operands are as [`super::gemm`]
    /// requires, which asserts the weight rows and the bias lengths.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
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
        scratch: &mut Scratch,
        epi: Epilogue,
    ) {
        let kp = w.kpairs();
        let chunks = cols.div_ceil(NC);
        let need = chunks * kp * NC;
        if scratch.0.len() < need {
            scratch.0.resize(need, 0);
        }
        let packed = scratch.0.as_mut_ptr();
        // SAFETY: the CPU features; b as the caller promised; the scratch holds `need`
        // pairs, every chunk.
        unsafe { pack_b(b, b_stride, w.kdim, cols, packed, scratch.0.len()) };
        // SAFETY: rows r0..r0 + nrows <= w.rows (asserted by the caller) of kp pairs each;
        // the chunks just packed; dst and the epilogue as the caller promised.
        unsafe { product(w.pairs.as_ptr().add(r0 * kp), kp, nrows, packed, cols, dst, dst_stride, &epi) };
    }

    /// dst (nrows × cols) = epi(A (nrows rows of kp pairs) · packed B).
    ///
    /// # Safety
    /// The CPU has AVX512-BF16 (and AVX-512 F/BW). `a` points at `nrows` rows of `kp`
    /// pairs; `packed` at `cols.div_ceil(NC)` chunks of `kp`·NC pairs; `dst` at `nrows`
    /// rows of `cols` f32s, `dst_stride` apart, that only this thread accesses; the
    /// epilogue's bias covers the rows or columns and its residual is laid out like dst.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn product(
        a: *const u32,
        kp: usize,
        nrows: usize,
        packed: *const u32,
        cols: usize,
        dst: *mut f32,
        dst_stride: usize,
        epi: &Epilogue,
    ) {
        // Row blocks outside, chunks inside: each block of output rows is written as
        // long sequential runs (r50vd bf16 ~410 -> ~394 ms); the packed panel is
        // re-read from L2 per block, the block's weights stay in L1.
        let mut r = 0;
        while r < nrows {
            let m = MR.min(nrows - r);
            // SAFETY: row r < nrows of a.
            let a = unsafe { a.add(r * kp) };
            for c in 0..cols.div_ceil(NC) {
                // SAFETY: chunk c of the packed panel.
                let bc = unsafe { packed.add(c * kp * NC) };
                let j0 = c * NC;
                let ncols = NC.min(cols - j0);
                // SAFETY: row r, column j0 < cols of dst.
                let out = unsafe { dst.add(r * dst_stride + j0) };
                // SAFETY: the bias and residual cover (r, j0) (the caller's promise).
                let tail = unsafe { Tail::at(epi, r, j0, dst_stride) };
                // SAFETY: the CPU features; m <= MR rows of kp pairs from a, the chunk's
                // kp·NC pairs, an m × ncols block of dst at (r, j0) and its epilogue.
                unsafe {
                    match m {
                        6 => kernel::<6>(a, kp, bc, out, dst_stride, ncols, tail),
                        5 => kernel::<5>(a, kp, bc, out, dst_stride, ncols, tail),
                        4 => kernel::<4>(a, kp, bc, out, dst_stride, ncols, tail),
                        3 => kernel::<3>(a, kp, bc, out, dst_stride, ncols, tail),
                        2 => kernel::<2>(a, kp, bc, out, dst_stride, ncols, tail),
                        _ => kernel::<1>(a, kp, bc, out, dst_stride, ncols, tail),
                    }
                }
                // SAFETY: the same block of dst and the call's epilogue.
                unsafe { finish_block(out, dst_stride, m, ncols, epi, r, j0) };
            }
            r += m;
        }
    }

    /// Packs B (kdim × cols f32, row stride `stride`) into chunks of NC columns:
    /// chunk c, pair p: 64 u32 = (B[2p][j], B[2p+1][j]) for the chunk's 64 columns, zero
    /// past cols and kdim.
    ///
    /// # Safety
    /// The CPU has AVX512-BF16 (and AVX-512 F/BW). `b` points at `kdim` rows of `cols`
    /// readable f32s, `stride` apart; `out` at `out_len` writable u32s, at least
    /// `cols.div_ceil(NC)·kdim.div_ceil(2)·NC` (asserted in debug builds, with the stride).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn pack_b(b: *const f32, stride: usize, kdim: usize, cols: usize, out: *mut u32, out_len: usize) {
        let kp = kdim.div_ceil(2);
        let chunks = cols.div_ceil(NC);
        debug_assert!(out_len >= chunks * kp * NC, "packed panel: {out_len} < {chunks} chunks x {kp} pairs");
        debug_assert!(kdim <= 1 || stride >= cols, "rows of b overlap: stride {stride} < {cols} columns");
        // Interleaves [x0..x15 | y0..y15] (16-bit lanes) into x0 y0 x1 y1 ...
        let idx = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17,
            1, 16, 0,
        );
        for c in 0..chunks {
            for p in 0..kp {
                // SAFETY: rows 2p < kdim and min(2p + 1, kdim − 1) of b, and pair p of
                // chunk c of out: in bounds (the caller's promise).
                let (row0, row1, dst) = unsafe {
                    (b.add(2 * p * stride), b.add((2 * p + 1).min(kdim - 1) * stride), out.add((c * kp + p) * NC))
                };
                let has1 = 2 * p + 1 < kdim;
                for v in 0..NC / 16 {
                    let j = c * NC + v * 16;
                    let mask = lane_mask(cols.saturating_sub(j));
                    // SAFETY: the masked lanes are columns j.. < cols of rows of b; a
                    // vector wholly past cols (mask 0, address computed with
                    // `wrapping_add` as it may lie past the buffer) is not accessed.
                    let (x, y) = unsafe {
                        let x = _mm512_maskz_loadu_ps(mask, row0.wrapping_add(j));
                        (x, if has1 { _mm512_maskz_loadu_ps(mask, row1.wrapping_add(j)) } else { _mm512_setzero_ps() })
                    };
                    // Low 256 bits: x as bf16, high: y.
                    // SAFETY: 32 bf16 and 32 i16 lanes are the same 512 bits.
                    let xy: __m512i = unsafe { std::mem::transmute(_mm512_cvtne2ps_pbh(y, x)) };
                    // SAFETY: the 16 u32s of vector v of pair p of chunk c, inside `out`.
                    unsafe { _mm512_storeu_si512(dst.add(v * 16) as *mut _, _mm512_permutexvar_epi16(idx, xy)) };
                }
            }
        }
    }

    /// C (M × up to 64 columns) = A (M rows of kp pairs, row stride kp) · one packed chunk.
    ///
    /// # Safety
    /// The CPU has AVX512-BF16 (this is inlined into [`product`]). `M <= MR` (asserted in
    /// debug builds); `a` points at M rows of `kp` pairs; `b` at a packed chunk of
    /// `kp`·NC pairs; `out` at M rows of `ncols <= 64` f32s, `out_stride` apart, that only
    /// this thread accesses; the tail as [`store`] requires.
    #[inline(always)]
    unsafe fn kernel<const M: usize>(
        a: *const u32,
        kp: usize,
        b: *const u32,
        out: *mut f32,
        out_stride: usize,
        ncols: usize,
        tail: Tail,
    ) {
        debug_assert!(M <= MR && ncols <= NC, "{M} rows x {ncols} columns");
        // SAFETY: AVX512-BF16 and AVX-512F (the caller's promise), as for every intrinsic
        // below.
        let mut acc = unsafe { [[_mm512_setzero_ps(); 4]; M] };
        for p in 0..kp {
            // SAFETY: the 4 vectors of pair p < kp of the chunk (the caller's promise);
            // 32 bf16 and 16 i32 lanes are the same 512 bits.
            let (b0, b1, b2, b3): (__m512bh, __m512bh, __m512bh, __m512bh) = unsafe {
                let bp = b.add(p * NC);
                (
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp as *const _)),
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp.add(16) as *const _)),
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp.add(32) as *const _)),
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp.add(48) as *const _)),
                )
            };
            for (i, row) in acc.iter_mut().enumerate() {
                // SAFETY: pair p < kp of row i < M of a (the caller's promise); the CPU
                // features; a bf16 pair and an i32 are the same 32 bits.
                unsafe {
                    let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(i * kp + p) as i32));
                    row[0] = _mm512_dpbf16_ps(row[0], av, b0);
                    row[1] = _mm512_dpbf16_ps(row[1], av, b1);
                    row[2] = _mm512_dpbf16_ps(row[2], av, b2);
                    row[3] = _mm512_dpbf16_ps(row[3], av, b3);
                }
            }
        }
        // SAFETY: out covers the M × ncols block and the tail its epilogue (the caller's
        // promise); the masks are those of the block's columns.
        unsafe { store::<M, 4>(acc, out, out_stride, lane_masks::<4>(ncols), true, Some(tail)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kernels::dispatch::skip_unless;
    use crate::test_rng::Rng;

    #[test]
    fn packed_b_matches_rounded_reference() {
        // Packing B already needs the bf16 instructions: nothing here runs elsewhere.
        if skip_unless(available(), "kernels::bf16::tests::packed_b_matches_rounded_reference", "AVX512-BF16") {
            return;
        }
        let mut rng = Rng(11);
        for &(rows, kdim, cols) in &[(1, 1, 1), (3, 33, 65), (7, 256, 256), (300, 255, 100), (13, 2, 7), (1, 64, 200)] {
            let a = rng.vec(rows * kdim);
            let b = rng.vec(kdim * cols);
            let packed = PackedB::new(&b, kdim, cols);
            let mut dst = vec![f32::NAN; rows * (cols + 1)];
            // SAFETY: available() checked; dst holds rows of cols + 1.
            unsafe { gemm_packed_b(&a, rows, &packed, dst.as_mut_ptr(), cols + 1, Epilogue::NONE) };
            let q = |v: f32| from_bf16(to_bf16(v)) as f64;
            for r in 0..rows {
                for j in 0..cols {
                    let want: f64 = (0..kdim).map(|k| q(a[r * kdim + k]) * q(b[k * cols + j])).sum();
                    let got = dst[r * (cols + 1) + j];
                    assert!((got as f64 - want).abs() <= 4e-6 * (kdim as f64).sqrt().max(1.0), "{got} vs {want}");
                }
                assert!(dst[r * (cols + 1) + cols].is_nan());
            }
        }
    }

    /// The shared epilogue (bias per row or column, residual, activation) on both entry
    /// points.
    #[test]
    fn epilogues_match_reference() {
        use crate::io::config::Activation;
        use crate::kernels::dispatch::{act, AddAt};
        use crate::kernels::sgemm::Bias;
        if skip_unless(available(), "kernels::bf16::tests::epilogues_match_reference", "AVX512-BF16") {
            return;
        }
        let mut rng = Rng(13);
        let (rows, kdim, cols) = (13, 70, 150);
        let w = rng.vec(rows * kdim);
        let b = rng.vec(kdim * cols);
        let (row_bias, col_bias, res) = (rng.vec(rows), rng.vec(cols), rng.vec(rows * cols));
        let q = |v: f32| from_bf16(to_bf16(v)) as f64;
        let dot = |r: usize, j: usize| (0..kdim).map(|k| q(w[r * kdim + k]) * q(b[k * cols + j])).sum::<f64>() as f32;
        for (mode, a) in
            [(0, Activation::Relu), (1, Activation::Silu), (2, Activation::Gelu), (3, Activation::Identity)]
        {
            let at = if mode == 2 { AddAt::AfterAct } else { AddAt::BeforeAct };
            let epi = Epilogue {
                bias: Some(if mode == 3 { Bias::Cols(&col_bias) } else { Bias::Rows(&row_bias) }),
                residual: (mode != 3).then_some((res.as_ptr(), at)),
                act: a,
            };
            let mut dst = vec![f32::NAN; rows * cols];
            let mut dst_b = vec![f32::NAN; rows * cols];
            let packed = PackedWeights::new(&w, rows, kdim);
            let packed_b = PackedB::new(&b, kdim, cols);
            // SAFETY: available() checked; buffers sized as documented.
            unsafe {
                gemm(&packed, 0, rows, b.as_ptr(), cols, cols, dst.as_mut_ptr(), cols, &mut Scratch::default(), epi);
                gemm_packed_b(&w, rows, &packed_b, dst_b.as_mut_ptr(), cols, epi);
            }
            for r in 0..rows {
                for j in 0..cols {
                    let (v, rv) = (dot(r, j), res[r * cols + j]);
                    let want = match mode {
                        3 => v + col_bias[j],
                        2 => act(v + row_bias[r], a) + rv,
                        _ => act(v + row_bias[r] + rv, a),
                    };
                    for got in [dst[r * cols + j], dst_b[r * cols + j]] {
                        assert!(
                            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                            "mode {mode} r{r} j{j}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rounding_is_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
        assert_eq!(to_bf16(1.0 + 2f32.powi(-8)), 0x3f80);
        assert_eq!(to_bf16(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
    }

    /// The kernel equals the product of the bf16-rounded operands (accumulated in f64)
    /// to f32 summation error, on shapes that cover every row remainder, column tails,
    /// odd kdim and strided inputs. The weight packing (portable) is checked on every CPU.
    #[test]
    fn matches_rounded_reference() {
        let skip_kernel = skip_unless(
            available(),
            "kernels::bf16::tests::matches_rounded_reference (kernel part; packing checked)",
            "AVX512-BF16",
        );
        let mut rng = Rng(7);
        for &(rows, kdim, cols, r0, nrows, b_stride_extra) in &[
            (1, 1, 1, 0, 1, 0),
            (7, 3, 17, 0, 7, 0),
            (13, 64, 64, 2, 11, 5),
            (6, 255, 130, 0, 6, 0),
            (32, 288, 200, 5, 20, 3),
            (256, 256, 400, 0, 256, 0),
            (5, 2, 63, 1, 4, 1),
        ] {
            let w = rng.vec(rows * kdim);
            let b_stride = cols + b_stride_extra;
            let b = rng.vec(kdim * b_stride);
            let packed = PackedWeights::new(&w, rows, kdim);
            let kp = kdim.div_ceil(2);
            assert_eq!(packed.pairs.len(), rows * kp, "pairs");
            for (i, pair) in packed.pairs.iter().enumerate() {
                let (r, k) = (i / kp, i % kp * 2);
                let hi = if k + 1 < kdim { to_bf16(w[r * kdim + k + 1]) } else { 0 };
                assert_eq!(*pair, to_bf16(w[r * kdim + k]) as u32 | (hi as u32) << 16, "row {r} pair {}", k / 2);
            }
            if skip_kernel {
                continue;
            }
            let dst_stride = cols + 3;
            let mut dst = vec![f32::NAN; nrows * dst_stride];
            let mut scratch = Scratch::default();
            // SAFETY: available() checked; buffers sized as documented.
            unsafe {
                gemm(
                    &packed,
                    r0,
                    nrows,
                    b.as_ptr(),
                    b_stride,
                    cols,
                    dst.as_mut_ptr(),
                    dst_stride,
                    &mut scratch,
                    Epilogue::NONE,
                )
            };
            let q = |v: f32| from_bf16(to_bf16(v)) as f64;
            for r in 0..nrows {
                for j in 0..cols {
                    let want: f64 = (0..kdim).map(|k| q(w[(r0 + r) * kdim + k]) * q(b[k * b_stride + j])).sum();
                    let got = dst[r * dst_stride + j];
                    let tol = 1e-6 * (kdim as f64).sqrt().max(1.0) * 4.0;
                    assert!((got as f64 - want).abs() <= tol, "({rows},{kdim},{cols}) r{r} j{j}: {got} vs {want}");
                }
                // Padding columns of dst untouched.
                for j in cols..dst_stride {
                    assert!(dst[r * dst_stride + j].is_nan());
                }
            }
        }
    }
}
