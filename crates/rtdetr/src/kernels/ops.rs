//! Dense kernels on row-major f32 buffers for the transformer parts: linear layers with a
//! fused epilogue, layer norm with a fused residual add, softmax and multi-head attention.
//!
//! Work is cut into a few row blocks run as rayon tasks (each product single-threaded on
//! the `gemm` crate), so both cores stay busy without a second thread pool and small
//! problems run inline.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::io::config::Activation;
use crate::kernels::dispatch::{self, bias_row_act, simd_dispatch};
use crate::kernels::sgemm;

thread_local! {
    /// Rows of a linear layer's input packed for the f32 kernel, reused across calls.
    static LHS: RefCell<sgemm::PackedWeights> = RefCell::new(sgemm::PackedWeights::new(&[], 0, 0));
}

/// Products smaller than this many multiply-adds run on the calling thread.
const SERIAL_MACS: usize = 1 << 20;

/// Rows per task for `rows` rows of `macs_per_row` multiply-adds: about eight tasks, at
/// least 16 rows each, one task for small problems.
fn row_block(rows: usize, macs_per_row: usize) -> usize {
    if rows * macs_per_row <= SERIAL_MACS {
        return rows.max(1);
    }
    rows.div_ceil(8).max(16)
}

/// `dst (m×n, row stride ldd) = scale · A (m×k, row stride lda) · Bᵀ` where `b` holds B
/// as n rows of k (row stride ldb): every operand is row-major, as stored by the model.
///
/// # Safety
/// The pointers cover the described ranges (`a`: m rows of k, `b`: n rows of k, `dst`: m
/// rows of n, each row inside its buffer) and rows do not overlap (`lda >= k`, `ldb >= k`,
/// `ldd >= n`); `dst` does not overlap the inputs and only this thread accesses it. Debug
/// builds assert the strides and that dst's block is apart from the inputs' (callers
/// holding slices check the lengths).
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_abt(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    ldd: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    scale: f32,
) {
    debug_check_product((dst.cast_const(), m, n, ldd), (a, m, k, lda), (b, n, k, ldb));
    // SAFETY: the operands as documented (the caller's promise): the `gemm` crate reads A
    // with row stride lda, Bᵀ as B's rows (column stride ldb), and writes m × n of dst.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            ldd as isize,
            false,
            a,
            1,
            lda as isize,
            b,
            ldb as isize,
            1,
            0.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// `dst (m×n, row stride ldd) = A (m×k, row stride lda) · B (k×n, row stride ldb)`.
///
/// # Safety
/// As [`gemm_abt`], with `b` k rows of n (`ldb >= n`).
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_ab(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    ldd: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
) {
    debug_check_product((dst.cast_const(), m, n, ldd), (a, m, k, lda), (b, k, n, ldb));
    // SAFETY: the operands as documented (the caller's promise).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            ldd as isize,
            false,
            a,
            1,
            lda as isize,
            b,
            1,
            ldb as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// An operand of a product as the kernels get it: pointer, rows, columns, row stride.
type Operand = (*const f32, usize, usize, usize);

/// Debug builds: what [`gemm_abt`] and [`gemm_ab`] are promised that can be checked without
/// the lengths behind the pointers (callers holding slices check those): no null pointer,
/// no overlapping rows, dst apart from both inputs. Nothing in release builds.
#[inline(always)]
fn debug_check_product(dst: Operand, a: Operand, b: Operand) {
    if cfg!(debug_assertions) {
        let span = |(_, rows, cols, stride): Operand| dispatch::extent(rows, cols, stride);
        for (what, (p, rows, cols, stride)) in [("dst", dst), ("a", a), ("b", b)] {
            assert!(!p.is_null(), "gemm {what}: null pointer");
            assert!(rows <= 1 || stride >= cols, "gemm {what}: rows overlap (stride {stride} < {cols} columns)");
        }
        assert!(dispatch::disjoint(dst.0, span(dst), a.0, span(a)), "gemm: dst overlaps a");
        assert!(dispatch::disjoint(dst.0, span(dst), b.0, span(b)), "gemm: dst overlaps b");
    }
}

/// `act(x · Wᵀ + bias + residual)`: `x` is (rows, k), `wt` is Wᵀ as (k, n) row-major (the
/// layout the `gemm` crate multiplies without repacking), `bias` (n), `residual` (rows, n).
/// With `wt_bf16` (Wᵀ packed for the bf16 kernel) the product runs in bf16, else on the
/// packed f32 kernel where `packed_f32` (which needs [`sgemm::available`]), else on the
/// `gemm` crate.
#[allow(clippy::too_many_arguments)]
pub fn linear(
    x: &[f32],
    rows: usize,
    wt: &[f32],
    wt_bf16: Option<&crate::kernels::bf16::PackedB>,
    packed_f32: bool,
    bias: &[f32],
    n: usize,
    residual: Option<&[f32]>,
    act: Activation,
) -> Vec<f32> {
    let k = wt.len().checked_div(n).unwrap_or(0);
    assert_eq!(wt.len(), n * k, "linear weight shape");
    assert_eq!(x.len(), rows * k, "linear input length");
    assert_eq!(bias.len(), n, "linear bias shape");
    if let Some(r) = residual {
        assert_eq!(r.len(), rows * n, "linear residual length");
    }
    if let Some(p) = wt_bf16 {
        assert_eq!(p.cols(), n, "packed weight shape");
    }
    let block = row_block(rows, n * k);
    let run = |dst: &mut [f32], r0: usize| {
        let nr = dst.len() / n.max(1);
        let xs = &x[r0 * k..(r0 + nr) * k];
        if let Some(r) = residual {
            dispatch::debug_check_block("linear residual", r.len(), r0 * n, nr, n, n);
        }
        let epi = sgemm::Epilogue {
            bias: Some(sgemm::Bias::Cols(bias)),
            residual: residual.map(|r| (r[r0 * n..].as_ptr(), dispatch::AddAt::BeforeAct)),
            act,
        };
        match wt_bf16 {
            Some(p) => {
                // SAFETY: a packed matrix exists only where the bf16 kernel is available
                // (`PackedB::new` asserts it); dst (and the residual from row r0, a
                // separate buffer) holds nr rows of n.
                unsafe { crate::kernels::bf16::gemm_packed_b(xs, nr, p, dst.as_mut_ptr(), n, epi) };
                return;
            }
            None if packed_f32 => {
                // The rows of x are the left operand here (packed per call, a pass over
                // x against k passes of multiply-adds), Wᵀ is read in place.
                LHS.with_borrow_mut(|lhs| {
                    lhs.repack(xs, nr, k);
                    // SAFETY: packed_f32 only where available() (the caller's duty, checked
                    // again in debug builds); wt holds k rows of n, dst (and the residual
                    // from row r0, a separate buffer) nr rows of n.
                    unsafe { sgemm::gemm(lhs, 0, nr, wt.as_ptr(), n, n, dst.as_mut_ptr(), n, epi) };
                });
                return;
            }
            None => {
                // SAFETY: xs holds nr rows of k, wt k rows of n, dst nr rows of n: all
                // slices of exactly these lengths, dst apart from the inputs.
                unsafe { gemm_ab(nr, n, k, dst.as_mut_ptr(), n, xs.as_ptr(), k, wt.as_ptr(), n) }
            }
        }
        for (i, row) in dst.chunks_exact_mut(n).enumerate() {
            let res = residual.map(|r| &r[(r0 + i) * n..(r0 + i + 1) * n]);
            bias_row_act(row, bias, res, act);
        }
    };
    let mut out = vec![0f32; rows * n];
    if n == 0 || rows == 0 {
        return out;
    }
    if block >= rows {
        run(&mut out, 0);
    } else {
        out.par_chunks_mut(block * n).enumerate().for_each(|(i, dst)| run(dst, i * block));
    }
    out
}

#[inline(always)]
fn layer_norm_row_impl(dst: &mut [f32], x: &[f32], residual: Option<&[f32]>, w: &[f32], b: &[f32], eps: f32) {
    match residual {
        Some(r) => dst.iter_mut().zip(x).zip(r).for_each(|((d, x), r)| *d = *x + *r),
        None => dst.copy_from_slice(x),
    }
    let n = dst.len() as f32;
    let mean = dispatch::sum_map(dst, |v| v) / n;
    dst.iter_mut().for_each(|v| *v -= mean);
    let var = dispatch::sum_map(dst, |v| v * v) / n;
    let std = (var + eps).sqrt();
    dst.iter_mut().zip(w).zip(b).for_each(|((v, w), b)| *v = *v / std * *w + *b);
}

simd_dispatch! {
    fn layer_norm_row(dst: &mut [f32], x: &[f32], residual: Option<&[f32]>, w: &[f32], b: &[f32], eps: f32)
        => layer_norm_row_impl
}

/// `LayerNorm(x + residual)` over rows of `w.len()` (the reference's arithmetic: mean,
/// centred variance, division by `sqrt(var + eps)`).
pub fn layer_norm(x: &[f32], residual: Option<&[f32]>, w: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
    let dim = w.len();
    assert!(dim > 0 && x.len().is_multiple_of(dim), "layer norm input length");
    if let Some(r) = residual {
        assert_eq!(r.len(), x.len(), "layer norm residual length");
    }
    let mut out = vec![0f32; x.len()];
    let rows = x.len() / dim;
    // Memory-bound: parallel only for large inputs.
    let block = if x.len() < 1 << 17 { rows.max(1) } else { rows.div_ceil(8) };
    out.par_chunks_mut(block * dim).enumerate().for_each(|(i, dst)| {
        for (j, row) in dst.chunks_exact_mut(dim).enumerate() {
            let r = (i * block + j) * dim;
            layer_norm_row(row, &x[r..r + dim], residual.map(|s| &s[r..r + dim]), w, b, eps);
        }
    });
    out
}

#[inline(always)]
fn softmax_rows_impl(x: &mut [f32], cols: usize) {
    for row in x.chunks_exact_mut(cols) {
        let max = dispatch::max(row);
        row.iter_mut().for_each(|v| *v = dispatch::exp(*v - max));
        let sum = dispatch::sum_map(row, |v| v);
        row.iter_mut().for_each(|v| *v /= sum);
    }
}

simd_dispatch! {
    /// In-place softmax of each row of `cols` values: `exp(v − max) / Σ`.
    pub fn softmax_rows(x: &mut [f32], cols: usize) => softmax_rows_impl
}

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Multi-head scaled dot-product attention. `q`: (B, Lq, H·hd), `k` and `v`: (B, Lk, H·hd),
/// all row-major; returns (B, Lq, H·hd). One task per (image, head).
pub fn attention(q: &[f32], k: &[f32], v: &[f32], batch: usize, heads: usize, dim: usize) -> Vec<f32> {
    assert!(heads > 0 && dim.is_multiple_of(heads) && batch > 0, "attention shapes");
    let lq = q.len() / (batch * dim);
    let lk = k.len() / (batch * dim);
    assert_eq!(q.len(), batch * lq * dim, "attention q length");
    assert_eq!(k.len(), batch * lk * dim, "attention k length");
    assert_eq!(v.len(), k.len(), "attention v length");
    let hd = dim / heads;
    let scale = (hd as f64).powf(-0.5) as f32;
    let mut out = vec![0f32; batch * lq * dim];
    let dst = dispatch::SendPtr::new(&mut out);
    let task = |t: usize| {
        let (b, h) = (t / heads, t % heads);
        SCORES.with_borrow_mut(|s| {
            if s.len() < lq * lk {
                s.resize(lq * lk, 0.0);
            }
            let s = &mut s[..lq * lk];
            // Head h of image b: hd columns from `off` of its lq (or lk) rows of dim.
            let (q_off, kv_off) = (b * lq * dim + h * hd, b * lk * dim + h * hd);
            dispatch::debug_check_block("attention q", q.len(), q_off, lq, hd, dim);
            dispatch::debug_check_block("attention k", k.len(), kv_off, lk, hd, dim);
            dispatch::debug_check_block("attention v", v.len(), kv_off, lk, hd, dim);
            // SAFETY: the scores are this thread's lq × lk buffer; the head's columns of q
            // and k lie inside them (checked in debug builds above).
            unsafe {
                gemm_abt(lq, lk, hd, s.as_mut_ptr(), lk, q.as_ptr().add(q_off), dim, k.as_ptr().add(kv_off), dim, scale)
            };
            softmax_rows(s, lk);
            // SAFETY: the head's columns of v (checked above) and of out: inside out
            // (checked in debug builds by `at`), written by this task alone (tasks split
            // images and heads, heads split the columns).
            unsafe {
                let out = dst.at(q_off, dispatch::extent(lq, hd, dim));
                gemm_ab(lq, hd, lk, out, dim, s.as_ptr(), lk, v.as_ptr().add(kv_off), dim)
            };
        });
    };
    if batch * lq * lk * hd * heads <= SERIAL_MACS {
        (0..batch * heads).for_each(task);
    } else {
        (0..batch * heads).into_par_iter().for_each(task);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_rng::Rng;

    fn close(got: &[f32], want: &[f32], tol: f32, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol * w.abs().max(1.0), "{what} [{i}]: {g} vs {w}");
        }
    }

    #[test]
    fn linear_matches_naive() {
        let mut rng = Rng(7);
        for (rows, k, n) in [(1, 1, 1), (3, 5, 7), (300, 256, 80), (1000, 64, 33), (17, 300, 300), (2, 0, 3)] {
            let x = rng.vec(rows * k);
            let w = rng.vec(n * k);
            let b = rng.vec(n);
            let r = rng.vec(rows * n);
            for (res, act) in
                [(None, Activation::Identity), (Some(r.as_slice()), Activation::Relu), (None, Activation::Gelu)]
            {
                let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
                let mut want = vec![0f32; rows * n];
                for i in 0..rows {
                    for j in 0..n {
                        let mut s = 0f64;
                        for c in 0..k {
                            s += x[i * k + c] as f64 * w[j * k + c] as f64;
                        }
                        let v = s as f32 + b[j] + res.map_or(0.0, |r| r[i * n + j]);
                        want[i * n + j] = dispatch::act(v, act);
                    }
                }
                // The `gemm` crate everywhere, the packed kernel where the CPU runs it.
                for packed_f32 in [false, true].into_iter().filter(|&p| !p || sgemm::available()) {
                    let got = linear(&x, rows, &wt, None, packed_f32, &b, n, res, act);
                    let what = format!("linear {rows}x{k}x{n} packed_f32={packed_f32}");
                    close(&got, &want, 1e-5 * (k as f32).sqrt().max(1.0), &what);
                }
            }
        }
    }

    #[test]
    fn layer_norm_matches_naive() {
        let mut rng = Rng(8);
        for (rows, dim) in [(1, 1), (5, 7), (3000, 256), (2, 1000)] {
            let x = rng.vec(rows * dim);
            let r = rng.vec(rows * dim);
            let w = rng.vec(dim);
            let b = rng.vec(dim);
            for res in [None, Some(r.as_slice())] {
                let got = layer_norm(&x, res, &w, &b, 1e-5);
                let mut want = Vec::new();
                for i in 0..rows {
                    let v: Vec<f64> =
                        (0..dim).map(|j| x[i * dim + j] as f64 + res.map_or(0.0, |r| r[i * dim + j] as f64)).collect();
                    let mean = v.iter().sum::<f64>() / dim as f64;
                    let var = v.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / dim as f64;
                    for j in 0..dim {
                        want.push(((v[j] - mean) / (var + 1e-5).sqrt() * w[j] as f64 + b[j] as f64) as f32);
                    }
                }
                close(&got, &want, 1e-4, &format!("layer norm {rows}x{dim}"));
            }
        }
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        let mut x = vec![1.0, 2.0, 3.0, -1e30, 0.0, 1e3];
        softmax_rows(&mut x, 3);
        let e = [1f32.exp(), 2f32.exp(), 3f32.exp()];
        let s: f32 = e.iter().sum();
        close(&x[..3], &[e[0] / s, e[1] / s, e[2] / s], 1e-6, "softmax");
        close(&x[3..], &[0.0, 0.0, 1.0], 1e-6, "softmax extreme");
    }

    #[test]
    fn attention_matches_naive() {
        let mut rng = Rng(9);
        for (b, lq, lk, heads, hd) in
            [(1, 1, 1, 1, 1), (2, 5, 7, 3, 4), (1, 300, 300, 8, 32), (2, 40, 13, 8, 5), (1, 13, 70, 2, 17)]
        {
            let dim = heads * hd;
            let q = rng.vec(b * lq * dim);
            let k = rng.vec(b * lk * dim);
            let v = rng.vec(b * lk * dim);
            let got = attention(&q, &k, &v, b, heads, dim);
            let mut want = vec![0f32; b * lq * dim];
            let scale = (hd as f64).powf(-0.5);
            for bi in 0..b {
                for h in 0..heads {
                    for i in 0..lq {
                        let s: Vec<f64> = (0..lk)
                            .map(|j| {
                                (0..hd)
                                    .map(|c| {
                                        q[(bi * lq + i) * dim + h * hd + c] as f64
                                            * k[(bi * lk + j) * dim + h * hd + c] as f64
                                    })
                                    .sum::<f64>()
                                    * scale
                            })
                            .collect();
                        let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                        let z: f64 = e.iter().sum();
                        for c in 0..hd {
                            let o: f64 = (0..lk).map(|j| e[j] / z * v[(bi * lk + j) * dim + h * hd + c] as f64).sum();
                            want[(bi * lq + i) * dim + h * hd + c] = o as f32;
                        }
                    }
                }
            }
            close(&got, &want, 1e-5, &format!("attention b{b} {lq}x{lk} h{heads} hd{hd}"));
        }
    }
}
