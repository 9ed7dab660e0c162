//! f32 matrix products with a layer's weight packed once at load, for the convolutions
//! (im2col, 1×1 and the Winograd-domain products) and linear layers, on CPUs with AVX-512
//! or AVX2 + FMA.
//!
//! This file holds the weight packing and the blocking driver ([`drive`]), which know
//! nothing of the instruction set; each micro-kernel ([`MicroKernel`]: `x86` for AVX-512,
//! `sgemm_avx2` for AVX2 + FMA) computes one block of C and knows nothing of the model.
//!
//! `C[r][j] = Σ_k W[r][k] · B[k][j]`: W (rows × kdim) is stored as panels of MR rows,
//! k-major, so the micro-kernel broadcasts its six weights per k from one 24-byte line; B
//! is read in place (any row stride) 64 columns at a time. The micro-kernel keeps an
//! MR × 64 block of C in 24 registers over a block of KC values of k; the bias is added and
//! the result stored on the last block, and the caller's epilogue (residual, activation)
//! runs on the block right away, while it is in L1.
//!
//! Unlike a general GEMM (the `gemm` crate), nothing is copied per call: the weights are
//! packed once and B needs no packing because every call here reads at most a few hundred
//! rows of 256 bytes per column chunk, which stay in L2 across the row panels.

use crate::io::config::Activation;
use crate::kernels::dispatch::{self, AddAt};

/// Rows of C per micro-kernel call (one weight panel).
pub const MR: usize = 6;

/// A weight matrix (rows × kdim) as panels of [`MR`] rows, k-major:
/// `panels[(p·kdim + k)·MR + i] = W[p·MR + i][k]` (zero past the last row).
#[derive(Debug, Clone)]
pub struct PackedWeights {
    panels: Vec<f32>,
    rows: usize,
    kdim: usize,
}

impl PackedWeights {
    /// `w`: rows × kdim, row-major.
    pub fn new(w: &[f32], rows: usize, kdim: usize) -> Self {
        let mut packed = Self { panels: Vec::new(), rows: 0, kdim: 0 };
        packed.repack(w, rows, kdim);
        packed
    }

    /// Packs `w` (rows × kdim, row-major) into this buffer, reusing its allocation (for
    /// activations packed per call).
    pub fn repack(&mut self, w: &[f32], rows: usize, kdim: usize) {
        assert_eq!(w.len(), rows * kdim, "matrix shape");
        self.panels.clear();
        self.panels.resize(rows.div_ceil(MR) * MR * kdim, 0.0);
        for (r, row) in w.chunks_exact(kdim.max(1)).enumerate().take(rows) {
            let (p, i) = (r / MR, r % MR);
            for (k, v) in row.iter().enumerate() {
                self.panels[(p * kdim + k) * MR + i] = *v;
            }
        }
        (self.rows, self.kdim) = (rows, kdim);
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn kdim(&self) -> usize {
        self.kdim
    }
}

/// Whether this CPU runs one of the micro-kernels (AVX-512 F, or AVX2 + FMA); elsewhere
/// callers use the `gemm` crate.
pub fn available() -> bool {
    dispatch::isa() != dispatch::Isa::Portable
}

/// A bias added to C: one value per row (a convolution's output channel) or per column
/// (a linear layer's output feature).
#[derive(Clone, Copy)]
pub enum Bias<'a> {
    /// Indexed from the call's first row.
    Rows(&'a [f32]),
    /// Indexed by column.
    Cols(&'a [f32]),
}

/// What happens to each block of C after the product: `act(C + bias + residual)` or
/// `act(C + bias) + residual` (see [`AddAt`]).
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    pub bias: Option<Bias<'a>>,
    /// Laid out like dst (same offsets and row stride), not overlapping it.
    pub residual: Option<(*const f32, AddAt)>,
    pub act: Activation,
}

impl Epilogue<'_> {
    /// The plain product.
    pub const NONE: Epilogue<'static> = Epilogue { bias: None, residual: None, act: Activation::Identity };

    /// Panics unless the bias covers a `rows` × `cols` product (the kernels read it raw).
    pub(crate) fn check(&self, rows: usize, cols: usize) {
        match self.bias {
            Some(Bias::Rows(v)) => assert!(v.len() >= rows, "bias length"),
            Some(Bias::Cols(v)) => assert!(v.len() >= cols, "bias length"),
            None => {}
        }
    }
}

/// Debug-build checks of what the `# Safety` sections of the products promise about
/// operands they read through raw pointers, as far as it can be checked without the
/// lengths behind the pointers (the callers holding slices check those): the CPU runs the
/// kernel (`kernel_available`, called in debug builds only), the pointers are not null, and rows of `b` (`kdim` × `cols`) and of `dst`
/// (`nrows` × `cols`) do not overlap.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn debug_check_operands(
    kernel_available: fn() -> bool,
    kdim: usize,
    nrows: usize,
    b: *const f32,
    b_stride: usize,
    cols: usize,
    dst: *const f32,
    dst_stride: usize,
) {
    debug_assert!(kernel_available(), "this CPU lacks the instructions of the product kernel");
    debug_assert!(!b.is_null() && !dst.is_null(), "null operand");
    debug_assert!(kdim <= 1 || b_stride >= cols, "rows of b overlap: stride {b_stride} < {cols} columns");
    debug_assert!(nrows <= 1 || dst_stride >= cols, "rows of dst overlap: stride {dst_stride} < {cols} columns");
}

/// `dst[r·dst_stride + j] = epilogue(Σ_k W[r0 + r][k] · b[k·b_stride + j])` for r < nrows,
/// j < cols (overwrites dst).
///
/// # Safety
/// Requires [`available`]. `r0` is a multiple of [`MR`] and `r0 + nrows <= w.rows()`; `b`
/// points at `w.kdim()` rows of `cols` readable f32s, `b_stride` apart; `dst` (and the
/// residual, if any, which does not overlap dst) at `nrows` rows of `cols` f32s,
/// `dst_stride` apart, writable by this thread only. (With `w.kdim()` 0 nothing is read,
/// but `b` is still offset by each 64-column chunk's first column, which must stay in its
/// allocation.) The weight rows are always asserted; the CPU, strides and pointers in debug
/// builds (see `debug_check_operands`).
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
    assert!(r0.is_multiple_of(MR) && r0 + nrows <= w.rows, "weight rows");
    epi.check(nrows, cols);
    debug_check_operands(available, w.kdim, nrows, b, b_stride, cols, dst, dst_stride);
    // SAFETY: the micro-kernel of this CPU's instruction set (the caller's promise:
    // `available()`), operands as documented; the weight rows and the bias lengths were
    // asserted above.
    unsafe { gemm_on(dispatch::isa(), w, r0, nrows, b, b_stride, cols, dst, dst_stride, epi) }
}

/// [`gemm`] on the micro-kernel of `isa` (tests run every kernel the CPU can).
///
/// # Safety
/// As [`gemm`], with a CPU that has `isa` (V4 or V3), after `gemm`'s assertions.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_on(
    isa: dispatch::Isa,
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
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F (the caller's promise); operands as for `gemm`.
        dispatch::Isa::V4 => unsafe { x86::gemm(w, r0, nrows, b, b_stride, cols, dst, dst_stride, epi) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (the caller's promise); operands as for `gemm`.
        dispatch::Isa::V3 => unsafe { super::sgemm_avx2::gemm(w, r0, nrows, b, b_stride, cols, dst, dst_stride, epi) },
        _ => {
            let _ = (w, r0, nrows, b, b_stride, cols, dst, dst_stride, epi);
            unreachable!("the packed f32 kernels need AVX2 + FMA or AVX-512; check available()")
        }
    }
}

/// The part of an epilogue applied in registers to one block of C.
#[derive(Clone, Copy)]
pub(crate) struct Tail {
    /// At the block's first row, or (true) its first column.
    pub(crate) bias: Option<(*const f32, bool)>,
    /// At the block's origin, dst's stride.
    pub(crate) residual: Option<(*const f32, AddAt)>,
    /// Applied in registers (with an AfterAct residual) when [`in_registers`]; else only
    /// the bias and a BeforeAct residual are, and [`finish_block`] does the rest.
    pub(crate) act: Activation,
}

impl Tail {
    /// For the block at row r, column j0 of a call with this epilogue.
    ///
    /// # Safety
    /// The epilogue's bias covers row r (row bias) or column j0 (column bias), and its
    /// residual, laid out like the call's dst with row stride `dst_stride`, covers row
    /// r, column j0.
    #[inline(always)]
    pub(crate) unsafe fn at(epi: &Epilogue, r: usize, j0: usize, dst_stride: usize) -> Self {
        Tail {
            bias: epi.bias.map(|b| match b {
                // SAFETY: r is inside the row bias (the caller's promise).
                Bias::Rows(v) => (unsafe { v.as_ptr().add(r) }, false),
                // SAFETY: j0 is inside the column bias (the caller's promise).
                Bias::Cols(v) => (unsafe { v.as_ptr().add(j0) }, true),
            }),
            // SAFETY: (r, j0) is inside the residual (the caller's promise).
            residual: epi.residual.map(|(p, at)| (unsafe { p.add(r * dst_stride + j0) }, at)),
            act: epi.act,
        }
    }
}

/// One block of C for a micro-kernel: at most [`MR`] rows by `K::NC` columns.
#[derive(Clone, Copy)]
pub(crate) struct Block {
    /// Weight panel at k0 (MR values per k).
    pub(crate) a: *const f32,
    pub(crate) kc: usize,
    /// B at (k0, j0).
    pub(crate) b: *const f32,
    pub(crate) b_stride: usize,
    pub(crate) out: *mut f32,
    pub(crate) dst_stride: usize,
    pub(crate) rows: usize,
    pub(crate) ncols: usize,
    /// Overwrite C (else accumulate onto it).
    pub(crate) first: bool,
    /// The epilogue's part in registers, on the last k block.
    pub(crate) tail: Option<Tail>,
}

/// A micro-kernel of the packed products: one instruction set's block of C.
pub(crate) trait MicroKernel {
    /// Columns per block.
    const NC: usize;
    /// Values of k per pass over a block: the chunk's B rows stay in cache while every
    /// row panel of the weights passes over them.
    const KC: usize;
    /// Copy each KC × NC block of B into a contiguous buffer before the row panels read
    /// it: B's rows are often a power-of-two multiple of 1 KiB apart (im2col tiles,
    /// feature maps), so read in place they fall into the same L1 sets and evict each
    /// other; a small L1 (AVX2 machines) loses the block between panels.
    const PACK_B: bool;
    /// C block (+)= panel · B block, then the tail's part of the epilogue.
    ///
    /// # Safety
    /// The CPU has the kernel's instruction set; `1 <= x.rows <= MR`,
    /// `1 <= x.ncols <= NC`; `x.a` points at `x.kc`·MR readable weights; `x.b` at `x.kc`
    /// rows of `x.ncols` readable f32s, `x.b_stride` apart; `x.out` at `x.rows` rows of
    /// `x.ncols` f32s, `x.dst_stride` apart, that only this thread accesses; the tail's
    /// bias and residual cover the block (as [`Tail::at`] makes them).
    unsafe fn block(x: Block);
}

/// The blocking driver shared by the micro-kernels: 64- or 16-column chunks of B, blocks
/// of KC values of k, and the weight's row panels over each; the rest of the epilogue on
/// each finished block while it is in L1.
///
/// # Safety
/// As [`gemm`] (after its assertions), on a CPU with `K`'s instruction set; inlined into
/// a function compiled for it.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn drive<K: MicroKernel>(
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
    let kdim = w.kdim;
    let p0 = r0 / MR;
    debug_assert!(r0.is_multiple_of(MR) && r0 + nrows <= w.rows, "weight rows");
    // One panel reads the block once: packing it would only add a copy.
    let pack_b = K::PACK_B && nrows > MR && kdim > 0;
    let mut packed = Vec::new();
    if pack_b {
        packed = PACKED_B.take();
        packed.resize(K::KC * K::NC, 0.0);
    }
    for j0 in (0..cols).step_by(K::NC) {
        let ncols = K::NC.min(cols - j0);
        let mut k0 = 0;
        // kdim == 0 still needs one pass to write bias-only rows.
        loop {
            let kc = K::KC.min(kdim - k0);
            let (first, last) = (k0 == 0, k0 + kc == kdim);
            // SAFETY: row k0 < kdim (or 0), column j0 < cols: inside b's rows (the
            // caller's promise, which covers kdim 0).
            let mut bk = unsafe { b.add(k0 * b_stride + j0) };
            let mut bk_stride = b_stride;
            if pack_b {
                debug_assert!(kc * K::NC <= packed.len() && ncols <= K::NC, "packed block size");
                for k in 0..kc {
                    // SAFETY: rows k0 + k < kdim of b hold `ncols` readable f32s from
                    // column j0 (the caller's promise); row k of `packed` holds NC >= ncols
                    // (checked in debug builds); the two do not overlap (`packed` is ours).
                    unsafe {
                        std::ptr::copy_nonoverlapping(bk.add(k * b_stride), packed.as_mut_ptr().add(k * K::NC), ncols)
                    };
                }
                (bk, bk_stride) = (packed.as_ptr(), K::NC);
            }
            let mut r = 0;
            while r < nrows {
                let m = MR.min(nrows - r);
                let start = ((p0 + r / MR) * kdim + k0) * MR;
                debug_assert!(start + kc * MR <= w.panels.len(), "weight panel out of bounds");
                // SAFETY: panel p0 + r / MR holds rows r0 + r.. < w.rows (asserted by the
                // caller; r0 is a multiple of MR), at k0 <= kdim: inside `panels`
                // (rows.div_ceil(MR)·MR·kdim values), as checked in debug builds above.
                let a = unsafe { w.panels.as_ptr().add(start) };
                // SAFETY: row r < nrows, column j0 < cols of dst (the caller's promise).
                let out = unsafe { dst.add(r * dst_stride + j0) };
                // SAFETY: the bias covers the call's rows or columns (asserted by
                // `Epilogue::check`) and the residual is laid out like dst.
                let tail = last.then(|| unsafe { Tail::at(&epi, r, j0, dst_stride) });
                let block = Block { a, kc, b: bk, b_stride: bk_stride, out, dst_stride, rows: m, ncols, first, tail };
                // SAFETY: the CPU has K's instruction set (the caller's promise); the block
                // is m <= MR rows by ncols <= NC columns at (r, j0) of dst, with its weight
                // panel from k0 and kc rows of b from k0: all inside the operands as shown
                // above.
                unsafe { K::block(block) };
                if last {
                    // SAFETY: the same block of dst, and the call's epilogue.
                    unsafe { finish_block(out, dst_stride, m, ncols, &epi, r, j0) };
                }
                r += m;
            }
            k0 += kc;
            if k0 >= kdim {
                break;
            }
        }
    }
    if pack_b {
        PACKED_B.set(packed);
    }
}

thread_local! {
    /// The packed block of B of [`drive`], reused across calls on each thread.
    static PACKED_B: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Whether the kernel applies the whole epilogue in registers (else it adds bias and a
/// BeforeAct residual, and [`finish_block`] the rest).
pub(crate) fn in_registers(act: Activation) -> bool {
    matches!(act, Activation::Identity | Activation::Relu)
}

/// The rest of an epilogue the kernel could not do in registers: the activation, then an
/// AfterAct residual, on the `nrows` × `ncols` block at `dst`, which is at row r, column
/// j0 of the call.
///
/// # Safety
/// As [`gemm`]'s dst and residual: `dst` points at `nrows` rows of `ncols` writable f32s,
/// `dst_stride` apart (`dst_stride >= ncols` unless one row, asserted in debug builds),
/// that no other thread accesses meanwhile; the epilogue's residual, if any, is laid out
/// like the call's dst (so its block starts at `r·dst_stride + j0`) and does not overlap
/// dst.
pub(crate) unsafe fn finish_block(
    dst: *mut f32,
    dst_stride: usize,
    nrows: usize,
    ncols: usize,
    epi: &Epilogue,
    r: usize,
    j0: usize,
) {
    debug_assert!(nrows <= 1 || dst_stride >= ncols, "rows of dst overlap: stride {dst_stride} < {ncols}");
    if in_registers(epi.act) {
        return;
    }
    // SAFETY: the block's row r, column j0 lies inside the call's residual, which covers
    // the call like dst (the caller's promise).
    let residual = epi.residual.map(|(p, at)| (unsafe { p.add(r * dst_stride + j0) }, at));
    let epi = Epilogue { residual, ..*epi };
    for r in 0..nrows {
        // SAFETY: row r < nrows of the block: `ncols` writable f32s that only this thread
        // accesses, and the rows do not overlap (the caller's promise).
        let row = unsafe { std::slice::from_raw_parts_mut(dst.add(r * dst_stride), ncols) };
        match epi.residual {
            Some((res, AddAt::AfterAct)) => {
                // SAFETY: row r of the block's residual, laid out like dst and apart from
                // it (the caller's promise); only read.
                let res = unsafe { std::slice::from_raw_parts(res.add(r * dst_stride), ncols) };
                dispatch::bias_act(row, 0.0, Some(res), AddAt::AfterAct, epi.act)
            }
            _ => dispatch::act_inplace(row, epi.act),
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    use super::{drive, in_registers, Block, Epilogue, MicroKernel, PackedWeights, MR};
    use crate::io::config::Activation;
    use crate::kernels::dispatch::AddAt;

    /// # Safety
    /// The CPU has AVX-512F, and the operands are as [`super::gemm`] requires (which
    /// asserts the weight rows and the epilogue's bias lengths before calling this).
    #[target_feature(enable = "avx512f")]
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
        // SAFETY: AVX-512F (this function's feature), operands as `gemm` requires.
        unsafe { drive::<Avx512>(w, r0, nrows, b, b_stride, cols, dst, dst_stride, epi) }
    }

    /// The AVX-512 micro-kernel: MR × 64 blocks (four 16-lane vectors per row) in 24
    /// registers.
    struct Avx512;

    impl MicroKernel for Avx512 {
        /// Four 16-lane vectors.
        const NC: usize = 64;
        /// The chunk's B rows (KC × 256 bytes) stay in L2.
        const KC: usize = 512;
        /// Read in place, as this kernel did before the driver was shared (it was tuned
        /// on Zen 4, whose 1 MiB L2 holds the block); packing is unmeasured on AVX-512.
        const PACK_B: bool = false;

        #[inline(always)]
        unsafe fn block(x: Block) {
            // SAFETY: the caller's promise (MicroKernel::block's contract), with
            // NV = ⌈ncols / 16⌉ vectors.
            unsafe { dispatch(x.rows, x.ncols.div_ceil(16), x) }
        }
    }

    /// Re-exported for the bf16 kernel, which shares the epilogue.
    pub(crate) use super::Tail;

    /// The kernel for m rows and nv vectors of columns (a tail chunk runs only the
    /// vectors it needs).
    ///
    /// # Safety
    /// As [`kernel`], with `1 <= m <= MR` and `1 <= nv <= 4` its M and NV (asserted in
    /// debug builds).
    #[inline(always)]
    unsafe fn dispatch(m: usize, nv: usize, args: Block) {
        debug_assert!((1..=MR).contains(&m) && (1..=4).contains(&nv), "block {m} rows x {nv} vectors");
        macro_rules! rows {
            ($nv:literal) => {
                match m {
                    6 => kernel::<6, $nv>(args),
                    5 => kernel::<5, $nv>(args),
                    4 => kernel::<4, $nv>(args),
                    3 => kernel::<3, $nv>(args),
                    2 => kernel::<2, $nv>(args),
                    _ => kernel::<1, $nv>(args),
                }
            };
        }
        // SAFETY: the caller's promise for `kernel`, with M = m and NV = nv.
        unsafe {
            match nv {
                4 => rows!(4),
                3 => rows!(3),
                2 => rows!(2),
                _ => rows!(1),
            }
        }
    }

    /// C (M × ncols ≤ 16·NV) (+)= panel · B block.
    ///
    /// # Safety
    /// The CPU has AVX-512F (this is inlined into [`gemm`]). `M <= MR` and
    /// `x.ncols <= 16·NV` (asserted in debug builds), and NV = ⌈ncols / 16⌉ (no vector
    /// wholly past the block's columns); `x.a` points at `x.kc`·MR readable weights; `x.b`
    /// at `x.kc` rows of `x.ncols` readable f32s, `x.b_stride` apart; `x.out` at M rows of
    /// `x.ncols` f32s, `x.dst_stride` apart, that only this thread accesses; the tail's
    /// pointers as [`store`] requires.
    #[inline(always)]
    unsafe fn kernel<const M: usize, const NV: usize>(x: Block) {
        debug_assert!(M <= MR && x.ncols <= 16 * NV, "{M} rows x {} columns in {NV} vectors", x.ncols);
        let masks = lane_masks::<NV>(x.ncols);
        // SAFETY: AVX-512F (the caller's promise), as for every intrinsic below.
        let mut acc = unsafe { [[_mm512_setzero_ps(); NV]; M] };
        // Masked loads (all-ones but for a tail chunk) keep one loop body: LLVM then
        // holds the accumulators in registers.
        for k in 0..x.kc {
            // SAFETY: row k < kc of the block of b, vector v < NV starting at column
            // 16·v < ncols: inside b (the caller's promise); the masks keep the loads to
            // the block's ncols columns.
            let bv: [__m512; NV] = unsafe {
                let bp = x.b.add(k * x.b_stride);
                std::array::from_fn(|v| _mm512_maskz_loadu_ps(masks[v], bp.add(v * 16)))
            };
            // SAFETY: the panel's MR weights of k < kc (the caller's promise).
            let ak = unsafe { x.a.add(k * MR) };
            for (i, row) in acc.iter_mut().enumerate() {
                // SAFETY: weight i < M <= MR of the panel at k; AVX-512F.
                let av = unsafe { _mm512_set1_ps(*ak.add(i)) };
                for (r, b) in row.iter_mut().zip(bv.iter()) {
                    // SAFETY: AVX-512F (the caller's promise).
                    *r = unsafe { _mm512_fmadd_ps(av, *b, *r) };
                }
            }
        }
        // SAFETY: x.out covers the M × ncols block and the tail its epilogue (the caller's
        // promise), the masks are those of the block's columns.
        unsafe { store::<M, NV>(acc, x.out, x.dst_stride, masks, x.first, x.tail) };
    }

    /// The lanes of the first `n` of 16 values.
    #[inline(always)]
    pub(crate) fn lane_mask(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    /// The lane masks of NV vectors covering `ncols` columns.
    #[inline(always)]
    pub(crate) fn lane_masks<const NV: usize>(ncols: usize) -> [__mmask16; NV] {
        std::array::from_fn(|v| lane_mask(ncols.saturating_sub(v * 16)))
    }

    /// Stores an M × 16·NV block of accumulators at `out` (row stride `stride`, lanes
    /// limited by `masks`): added to what is there unless `first`, then the tail's part of
    /// the epilogue. The accumulators come by value so that they stay in registers.
    ///
    /// # Safety
    /// The CPU has AVX-512F (this is inlined into a function compiled for it). `out` (and
    /// the tail's residual, laid out like it) points at M rows, `stride` apart, whose
    /// lanes set in `masks` are writable (readable for the residual) and accessed by no
    /// other thread; the tail's bias holds one value per row (row bias) or the masks'
    /// lanes (column bias). Vectors whose mask is 0 (past a tail chunk's columns in the
    /// bf16 kernel, which always stores 4) are not accessed: their addresses are computed
    /// with `wrapping_add`, as they may lie past the end of the buffers.
    #[inline(always)]
    pub(crate) unsafe fn store<const M: usize, const NV: usize>(
        acc: [[__m512; NV]; M],
        out: *mut f32,
        stride: usize,
        masks: [__mmask16; NV],
        first: bool,
        tail: Option<Tail>,
    ) {
        // SAFETY: AVX-512F and the bounds above are the caller's promise; every load and
        // store below is masked to the lanes it covers, at row i < M and vector v < NV of
        // the block (a vector with mask 0 is neither loaded nor stored).
        unsafe {
            #[allow(clippy::needless_range_loop)]
            for i in 0..M {
                let o = out.add(i * stride);
                let bias = tail.and_then(|t| t.bias);
                for v in 0..NV {
                    let ov = o.wrapping_add(v * 16);
                    let mut val = acc[i][v];
                    if !first {
                        val = _mm512_add_ps(val, _mm512_maskz_loadu_ps(masks[v], ov));
                    }
                    match bias {
                        Some((p, false)) => val = _mm512_add_ps(val, _mm512_set1_ps(*p.add(i))),
                        Some((p, true)) => {
                            val = _mm512_add_ps(val, _mm512_maskz_loadu_ps(masks[v], p.wrapping_add(v * 16)))
                        }
                        None => {}
                    }
                    if let Some(t) = tail {
                        let res = t.residual.map(|(p, at)| {
                            (_mm512_maskz_loadu_ps(masks[v], p.add(i * stride).wrapping_add(v * 16)), at)
                        });
                        if let Some((r, AddAt::BeforeAct)) = res {
                            val = _mm512_add_ps(val, r);
                        }
                        if in_registers(t.act) {
                            if t.act == Activation::Relu {
                                val = _mm512_max_ps(val, _mm512_setzero_ps());
                            }
                            if let Some((r, AddAt::AfterAct)) = res {
                                val = _mm512_add_ps(val, r);
                            }
                        }
                    }
                    if masks[v] == 0xffff {
                        _mm512_storeu_ps(ov, val);
                    } else if masks[v] != 0 {
                        _mm512_mask_storeu_ps(ov, masks[v], val);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_rng::Rng;

    /// The kernel equals an f64 product (with bias, residual, activation) to f32 summation
    /// error, on shapes covering every row remainder, column tails, k blocks and strides.
    /// The weight packing (portable) is checked on every CPU.
    #[test]
    fn matches_reference() {
        let skip_kernel = dispatch::skip_unless(
            available(),
            "kernels::sgemm::tests::matches_reference (kernel part; packing checked)",
            "AVX2 + FMA or AVX-512F",
        );
        // Every micro-kernel this CPU runs: AVX2 on AVX2 and AVX-512 machines, AVX-512 on
        // the latter.
        let kernels: Vec<dispatch::Isa> = [dispatch::Isa::V4, dispatch::Isa::V3]
            .into_iter()
            .filter(|&k| match dispatch::isa() {
                dispatch::Isa::V4 => true,
                dispatch::Isa::V3 => k == dispatch::Isa::V3,
                dispatch::Isa::Portable => false,
            })
            .collect();
        let mut rng = Rng(5);
        let acts = [Activation::Identity, Activation::Relu, Activation::Silu, Activation::Gelu];
        for (case, &(rows, kdim, cols, r0, nrows, b_extra)) in [
            (1, 1, 1, 0, 1, 0),
            (7, 3, 17, 0, 7, 0),
            (13, 64, 64, 6, 7, 5),
            (6, 255, 130, 0, 6, 0),
            (32, 1100, 200, 12, 20, 3),
            (256, 256, 400, 0, 256, 0),
            (5, 2, 63, 0, 4, 1),
            (12, 0, 10, 6, 6, 0),
            (20, 1025, 65, 0, 20, 7),
        ]
        .iter()
        .enumerate()
        {
            let wt = rng.vec(rows * kdim);
            let b_stride = cols + b_extra;
            let b = rng.vec(kdim.max(1) * b_stride);
            let bias = rng.vec(nrows);
            let col_bias = rng.vec(cols);
            let dst_stride = cols + 3;
            let residual = rng.vec(nrows * dst_stride);
            let packed = PackedWeights::new(&wt, rows, kdim);
            assert_eq!(packed.panels.len(), rows.div_ceil(MR) * MR * kdim, "case {case}: panels");
            for (i, v) in packed.panels.iter().enumerate() {
                let (p, k, r) = (i / (MR * kdim), i / MR % kdim, i % MR);
                let want = if p * MR + r < rows { wt[(p * MR + r) * kdim + k] } else { 0.0 };
                assert_eq!(*v, want, "case {case}: panel {p} k {k} row {r}");
            }
            if skip_kernel {
                continue;
            }
            for (ai, &act) in acts.iter().enumerate() {
                for mode in 0..5 {
                    let epi = Epilogue {
                        bias: match mode {
                            0 => None,
                            4 => Some(Bias::Cols(&col_bias)),
                            _ => Some(Bias::Rows(&bias)),
                        },
                        residual: match mode {
                            2 => Some((residual.as_ptr(), AddAt::BeforeAct)),
                            3 => Some((residual.as_ptr(), AddAt::AfterAct)),
                            _ => None,
                        },
                        act,
                    };
                    for &isa in &kernels {
                        let mut dst = vec![f32::NAN; nrows * dst_stride];
                        // SAFETY: the CPU has `isa` (filtered above); buffers sized as
                        // documented.
                        unsafe {
                            gemm_on(
                                isa,
                                &packed,
                                r0,
                                nrows,
                                b.as_ptr(),
                                b_stride,
                                cols,
                                dst.as_mut_ptr(),
                                dst_stride,
                                epi,
                            )
                        };
                        for r in 0..nrows {
                            for j in 0..cols {
                                let dot: f64 = (0..kdim)
                                    .map(|k| wt[(r0 + r) * kdim + k] as f64 * b[k * b_stride + j] as f64)
                                    .sum();
                                let v = dot as f32
                                    + match mode {
                                        0 => 0.0,
                                        4 => col_bias[j],
                                        _ => bias[r],
                                    };
                                let res = residual[r * dst_stride + j];
                                let want = match mode {
                                    2 => dispatch::act(v + res, act),
                                    3 => dispatch::act(v, act) + res,
                                    _ => dispatch::act(v, act),
                                };
                                let got = dst[r * dst_stride + j];
                                let tol = 2e-6 * (kdim as f32).sqrt().max(1.0) * want.abs().max(1.0);
                                assert!(
                                    (got - want).abs() <= tol,
                                    "{isa:?} case {case} act {ai} mode {mode} r{r} j{j}: {got} vs {want}"
                                );
                            }
                            for j in cols..dst_stride {
                                assert!(dst[r * dst_stride + j].is_nan(), "padding written");
                            }
                        }
                    }
                }
            }
        }
    }
}
