//! Winograd convolution F(m×m, 3×3) for stride-1 3×3 layers (Lavin & Gray, 2016).
//!
//! Each output tile of m×m pixels is computed from an α×α input patch (α = m + 2):
//! `Y = Aᵀ [Σ_ci (G g Gᵀ) ⊙ (Bᵀ d B)] A`. The element-wise products summed over input
//! channels are α² independent matrix products, [tiles × Cin] · [Cin × Cout], run on
//! the `gemm` crate; the weight transform `G g Gᵀ` is done once at load time.
//!
//! Work is cut into tasks of whole tile rows (and output-channel blocks for small maps):
//! each task transforms its input patches into a per-thread buffer, runs the α² products,
//! then transforms back straight into the output rows it owns and applies the fused
//! bias / residual / activation epilogue to them while they are in cache.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::io::config::Activation;
use crate::kernels::bf16;
use crate::kernels::dispatch::{self, simd_dispatch, AddAt};
use crate::kernels::sgemm;
use crate::kernels::Products;

/// A transform set: Bᵀ (α×α), G (α×3), Aᵀ (m×α), row-major. G is applied from this table
/// (once, at load); Bᵀ and Aᵀ are the specification of the hand-unrolled input and output
/// transforms below (hot loops). The tests check the set against the Winograd identity and
/// the unrolled code against direct convolution.
struct Transform {
    m: usize,
    #[cfg_attr(not(test), allow(dead_code))]
    bt: &'static [f32],
    g: &'static [f32],
    #[cfg_attr(not(test), allow(dead_code))]
    at: &'static [f32],
}

/// F(2×2, 3×3), points 0, 1, −1, ∞: 2.25× fewer multiplications, near-direct accuracy.
const F2: Transform = Transform {
    m: 2,
    bt: &[
        1.0, 0.0, -1.0, 0.0, //
        0.0, 1.0, 1.0, 0.0, //
        0.0, -1.0, 1.0, 0.0, //
        0.0, 1.0, 0.0, -1.0,
    ],
    g: &[
        1.0, 0.0, 0.0, //
        0.5, 0.5, 0.5, //
        0.5, -0.5, 0.5, //
        0.0, 0.0, 1.0,
    ],
    at: &[
        1.0, 1.0, 1.0, 0.0, //
        0.0, 1.0, -1.0, -1.0,
    ],
};

/// F(4×4, 3×3), points 0, ±1, ±2, ∞: 4× fewer multiplications.
const F4: Transform = Transform {
    m: 4,
    bt: &[
        4.0, 0.0, -5.0, 0.0, 1.0, 0.0, //
        0.0, -4.0, -4.0, 1.0, 1.0, 0.0, //
        0.0, 4.0, -4.0, -1.0, 1.0, 0.0, //
        0.0, -2.0, -1.0, 2.0, 1.0, 0.0, //
        0.0, 2.0, -1.0, -2.0, 1.0, 0.0, //
        0.0, 4.0, 0.0, -5.0, 0.0, 1.0,
    ],
    g: &[
        1.0 / 4.0,
        0.0,
        0.0, //
        -1.0 / 6.0,
        -1.0 / 6.0,
        -1.0 / 6.0, //
        -1.0 / 6.0,
        1.0 / 6.0,
        -1.0 / 6.0, //
        1.0 / 24.0,
        1.0 / 12.0,
        1.0 / 6.0, //
        1.0 / 24.0,
        -1.0 / 12.0,
        1.0 / 6.0, //
        0.0,
        0.0,
        1.0,
    ],
    at: &[
        1.0, 1.0, 1.0, 1.0, 1.0, 0.0, //
        0.0, 1.0, -1.0, 2.0, -2.0, 0.0, //
        0.0, 1.0, 1.0, 4.0, 4.0, 0.0, //
        0.0, 1.0, -1.0, 8.0, -8.0, 1.0,
    ],
};

/// Output tile size of the Winograd variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tile {
    F2,
    F4,
}

impl Tile {
    fn transform(self) -> &'static Transform {
        match self {
            Tile::F2 => &F2,
            Tile::F4 => &F4,
        }
    }
}

/// The α² weight matrices U[ξ] (c_out × c_in).
#[derive(Debug, Clone)]
enum Weights {
    /// Packed for the AVX-512 kernel, one per ξ.
    Packed(Vec<sgemm::PackedWeights>),
    /// Row-major U[ξ][co][ci] for the `gemm` crate.
    Plain(Vec<f32>),
    /// bf16 pairs for `--precision bf16`, one per ξ.
    Bf16(Vec<bf16::PackedWeights>),
}

/// A stride-1 3×3 convolution with its weights in the Winograd domain.
#[derive(Debug, Clone)]
pub struct Winograd3x3 {
    tile: Tile,
    u: Weights,
    c_in: usize,
    c_out: usize,
    padding: usize,
}

/// One call's sizes: output tile m×m from input patch a×a (a = m + 2), output oh×ow,
/// th×tw tiles.
#[derive(Clone, Copy)]
struct Geometry {
    m: usize,
    a: usize,
    oh: usize,
    ow: usize,
    th: usize,
    tw: usize,
}

/// Maps of at most this many tiles take [`Winograd3x3::run_phased`].
const PHASED_MAX_TILES: usize = 256;

thread_local! {
    /// Per-thread packed bf16 panel.
    static BF16_PANEL: RefCell<bf16::Scratch> = RefCell::new(bf16::Scratch::default());
    /// Per-thread transformed input (V), products (M) and zero-padded input rows.
    static BUFS: RefCell<(Vec<f32>, Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

impl Winograd3x3 {
    /// `weight`: (c_out, c_in, 3, 3) flattened.
    /// The weights are transformed for `products` (bf16 needs [`bf16::available`], packed
    /// f32 [`sgemm::available`]).
    pub fn new(weight: &[f32], c_in: usize, c_out: usize, padding: usize, tile: Tile, products: Products) -> Self {
        assert_eq!(weight.len(), c_out * c_in * 9, "winograd weight shape");
        let t = tile.transform();
        let a = t.m + 2;
        let mut u = vec![0f32; a * a * c_out * c_in];
        // U = G g Gᵀ in f64, rounded once.
        for co in 0..c_out {
            for ci in 0..c_in {
                let g = &weight[(co * c_in + ci) * 9..][..9];
                let mut tmp = [0f64; 18]; // G g: α×3
                for i in 0..a {
                    for j in 0..3 {
                        tmp[i * 3 + j] = (0..3).map(|k| t.g[i * 3 + k] as f64 * g[k * 3 + j] as f64).sum();
                    }
                }
                for i in 0..a {
                    for j in 0..a {
                        let v: f64 = (0..3).map(|k| tmp[i * 3 + k] * t.g[j * 3 + k] as f64).sum();
                        u[((i * a + j) * c_out + co) * c_in + ci] = v as f32;
                    }
                }
            }
        }
        let u = match products {
            Products::Bf16 => {
                Weights::Bf16(u.chunks_exact(c_out * c_in).map(|m| bf16::PackedWeights::new(m, c_out, c_in)).collect())
            }
            Products::PackedF32 => Weights::Packed(
                u.chunks_exact(c_out * c_in).map(|m| sgemm::PackedWeights::new(m, c_out, c_in)).collect(),
            ),
            Products::Gemm => Weights::Plain(u),
        };
        Self { tile, u, c_in, c_out, padding }
    }

    /// Tile and output sizes for an `h`×`w` input.
    fn geometry(&self, h: usize, w: usize) -> Geometry {
        let m = self.tile.transform().m;
        let (oh, ow) = (h + 2 * self.padding - 2, w + 2 * self.padding - 2);
        Geometry { m, a: m + 2, oh, ow, th: oh.div_ceil(m), tw: ow.div_ceil(m) }
    }

    /// Same contract as [`crate::kernels::conv::Conv2d::run`] for a 3×3 stride-1 convolution.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        x: &[f32],
        bias: &[f32],
        b: usize,
        h: usize,
        w: usize,
        residual: Option<(&[f32], AddAt)>,
        act: Activation,
    ) -> Vec<f32> {
        let geom = self.geometry(h, w);
        let Geometry { m, a, oh, ow, th, tw } = geom;
        let hw = oh * ow;
        assert_eq!(x.len(), b * self.c_in * h * w, "winograd input length");
        if th * tw <= PHASED_MAX_TILES && !matches!(self.u, Weights::Plain(_)) {
            return self.run_phased(x, bias, b, h, w, geom, residual, act);
        }
        // Tile rows per task: about 128 tiles, and enough tasks for two threads.
        let rows_per_task = (64 / tw.max(1)).clamp(1, th.max(1));
        let n_row_tasks = th.div_ceil(rows_per_task);
        let mut cblock = self.c_out;
        while b * n_row_tasks * self.c_out.div_ceil(cblock) < 6 && cblock >= 64 {
            // Whole weight panels of the packed kernel.
            cblock = (cblock / 2).next_multiple_of(sgemm::MR);
        }
        let n_cblocks = self.c_out.div_ceil(cblock);
        let tasks = b * n_row_tasks * n_cblocks;
        let fill = |dst: dispatch::SendPtr| {
            (0..tasks).into_par_iter().for_each(|task| {
                let img = task / (n_row_tasks * n_cblocks);
                let rt = (task / n_cblocks) % n_row_tasks;
                let c0 = (task % n_cblocks) * cblock;
                let cn = cblock.min(self.c_out - c0);
                let r0 = rt * rows_per_task;
                let r1 = (r0 + rows_per_task).min(th);
                let nt = (r1 - r0) * tw;
                let xi = &x[img * self.c_in * h * w..(img + 1) * self.c_in * h * w];
                BUFS.with_borrow_mut(|(v, mm, padded)| {
                    v.resize(v.len().max(a * a * self.c_in * nt), 0.0);
                    mm.resize(mm.len().max(a * a * cn * nt), 0.0);
                    self.input_transform(xi, h, w, r0, r1, tw, &mut v[..a * a * self.c_in * nt], padded);
                    for xi_idx in 0..a * a {
                        // M[ξ] (cn × nt) = U[ξ] (cn × c_in) · V[ξ] (c_in × nt).
                        let (v_off, m_off) = (xi_idx * self.c_in * nt, xi_idx * cn * nt);
                        // SAFETY: plane ξ of V (c_in rows of nt) and of M (cn rows of nt) lie
                        // in this thread's buffers, sized a²·c_in·nt and a²·cn·nt just
                        // above; c0 is a multiple of MR (cblock is).
                        unsafe {
                            let (vx, mx) = (v.as_ptr().add(v_off), mm.as_mut_ptr().add(m_off));
                            self.product(xi_idx, c0, cn, vx, v.len() - v_off, nt, mx, mm.len() - m_off)
                        };
                    }
                    let (y0, y1) = (r0 * m, (r1 * m).min(oh));
                    let out_base = img * self.c_out * hw;
                    for co in c0..c0 + cn {
                        let off = out_base + co * hw + y0 * ow;
                        // SAFETY: output rows y0..y1 of channel co of image img, inside the
                        // output (checked in debug builds), are this task's alone: tasks
                        // split the images, tile rows and channel blocks. The output pass
                        // below writes all of them before the epilogue reads them.
                        let rows = unsafe { dst.slice(off, (y1 - y0) * ow) };
                        let mm = &mm[(co - c0) * nt..];
                        match self.tile {
                            Tile::F2 => output_f2(mm, cn * nt, rows, ow, y1 - y0, tw),
                            Tile::F4 => output_f4(mm, cn * nt, rows, ow, y1 - y0, tw),
                        }
                        let (res, at) = match residual {
                            Some((r, at)) => (Some(&r[off..off + rows.len()]), at),
                            None => (None, AddAt::BeforeAct),
                        };
                        dispatch::bias_act(rows, bias[co], res, at, act);
                    }
                });
            });
        };
        // SAFETY: task (image, tile rows, channel block) writes output rows
        // [r0·m, min(r1·m, oh)) of its channels only; together the tasks cover everything
        // (debug builds check that every element was written).
        unsafe { dispatch::filled_by(b * self.c_out * hw, fill) }
    }

    /// `M[ξ] (cn × nt, row stride nt) = U[ξ] rows c0..c0+cn · V[ξ] (c_in × nt)`.
    ///
    /// # Safety
    /// `v` holds c_in rows of nt within the `v_len` elements from `v` to the end of its
    /// buffer, `m` cn rows of nt within its `m_len`, owned by this task; `c0 + cn <= c_out`
    /// and c0 is a multiple of [`sgemm::MR`]. Debug builds assert all of it.
    #[allow(clippy::too_many_arguments)]
    unsafe fn product(
        &self,
        xi: usize,
        c0: usize,
        cn: usize,
        v: *const f32,
        v_len: usize,
        nt: usize,
        m: *mut f32,
        m_len: usize,
    ) {
        dispatch::debug_check_block("winograd V plane", v_len, 0, self.c_in, nt, nt);
        dispatch::debug_check_block("winograd M plane", m_len, 0, cn, nt, nt);
        debug_assert!(c0 + cn <= self.c_out && c0.is_multiple_of(sgemm::MR), "winograd: channels {c0}+{cn}");
        // SAFETY: the weights of the products (packed f32 or bf16) exist only where their
        // kernel runs (`Winograd3x3::new`'s contract, checked again in debug builds); the
        // operands as the caller promised; rows c0..c0 + cn of U[ξ] exist.
        unsafe {
            match &self.u {
                Weights::Packed(u) => sgemm::gemm(&u[xi], c0, cn, v, nt, nt, m, nt, sgemm::Epilogue::NONE),
                Weights::Bf16(u) => {
                    BF16_PANEL
                        .with_borrow_mut(|s| bf16::gemm(&u[xi], c0, cn, v, nt, nt, m, nt, s, sgemm::Epilogue::NONE));
                }
                Weights::Plain(u) => crate::kernels::ops::gemm_ab(
                    cn,
                    nt,
                    self.c_in,
                    m,
                    nt,
                    u.as_ptr().add((xi * self.c_out + c0) * self.c_in),
                    self.c_in,
                    v,
                    nt,
                ),
            }
        }
    }

    /// Small maps, in three parallel passes per image: the input transform of all tiles
    /// (split by channels), the α² products (one task per ξ), the output transform and
    /// epilogue (split by channels). Cutting such a map into tile-row tasks would leave
    /// too few, uneven tasks, and splitting the output channels instead would repeat the
    /// input transform per channel block.
    #[allow(clippy::too_many_arguments)]
    fn run_phased(
        &self,
        x: &[f32],
        bias: &[f32],
        b: usize,
        h: usize,
        w: usize,
        geom: Geometry,
        residual: Option<(&[f32], AddAt)>,
        act: Activation,
    ) -> Vec<f32> {
        let Geometry { a, oh, ow, th, tw, .. } = geom;
        let (nt, hw) = (th * tw, oh * ow);
        let (c_in, c_out) = (self.c_in, self.c_out);
        // Channel groups per transform pass: a few per thread for balance.
        let groups = |c: usize| c.div_ceil(8).max(1);
        let mut v = vec![0f32; a * a * c_in * nt];
        let mut mm = vec![0f32; a * a * c_out * nt];
        let out_len = b * c_out * hw;
        let fill = |dst: dispatch::SendPtr| {
            for img in 0..b {
                let xi = &x[img * c_in * h * w..(img + 1) * c_in * h * w];
                let vp = dispatch::SendPtr::new(&mut v);
                let gc = groups(c_in);
                (0..c_in.div_ceil(gc)).into_par_iter().for_each(|gi| {
                    let (c0, c1) = (gi * gc, ((gi + 1) * gc).min(c_in));
                    let g = InGeom { c_in: c1 - c0, c_planes: c_in, h, w, pad: self.padding, r0: 0, r1: th, tw };
                    // The call writes channels c0..c1 of every ξ plane: disjoint across
                    // tasks.
                    let len = a * a * c_in * nt - c0 * nt;
                    // SAFETY: from channel c0 of plane 0 to the end of V (checked in debug
                    // builds).
                    let vs = Planes { ptr: unsafe { vp.at(c0 * nt, len) }, len };
                    BUFS.with_borrow_mut(|(_, _, padded)| match self.tile {
                        Tile::F2 => input_f2(&xi[c0 * h * w..c1 * h * w], g, vs, padded),
                        Tile::F4 => input_f4(&xi[c0 * h * w..c1 * h * w], g, vs, padded),
                    });
                });
                let mp = dispatch::SendPtr::new(&mut mm);
                let vr = &v;
                (0..a * a).into_par_iter().for_each(|xi_idx| {
                    // M[ξ] (c_out × nt) = U[ξ] · V[ξ] (c_in × nt).
                    let v_off = xi_idx * c_in * nt;
                    // SAFETY: plane ξ of V (c_in rows of nt, written by the pass above) and
                    // of M (c_out rows of nt, this task's alone; checked in debug builds).
                    unsafe {
                        let (vx, mx) = (vr.as_ptr().add(v_off), mp.at(xi_idx * c_out * nt, c_out * nt));
                        self.product(xi_idx, 0, c_out, vx, vr.len() - v_off, nt, mx, c_out * nt)
                    };
                });
                let mr = &mm;
                let go = groups(c_out);
                (0..c_out.div_ceil(go)).into_par_iter().for_each(|gi| {
                    for co in gi * go..((gi + 1) * go).min(c_out) {
                        let off = (img * c_out + co) * hw;
                        // SAFETY: the plane of channel co of image img, inside the output
                        // (checked in debug builds), is this task's alone (tasks split the
                        // channels). The output pass below writes all of it before the
                        // epilogue reads it.
                        let rows = unsafe { dst.slice(off, hw) };
                        match self.tile {
                            Tile::F2 => output_f2(&mr[co * nt..], c_out * nt, rows, ow, oh, tw),
                            Tile::F4 => output_f4(&mr[co * nt..], c_out * nt, rows, ow, oh, tw),
                        }
                        let (res, at) = match residual {
                            Some((r, at)) => (Some(&r[off..off + hw]), at),
                            None => (None, AddAt::BeforeAct),
                        };
                        dispatch::bias_act(rows, bias[co], res, at, act);
                    }
                });
            }
        };
        // SAFETY: per image, the output pass's tasks write disjoint channel planes and
        // together cover the image (debug builds check that every element was written).
        unsafe { dispatch::filled_by(out_len, fill) }
    }

    /// V[ξ][ci][tile] = (Bᵀ d B)[ξ] for the tiles of tile rows r0..r1 (zero padding).
    #[allow(clippy::too_many_arguments)]
    fn input_transform(
        &self,
        x: &[f32],
        h: usize,
        w: usize,
        r0: usize,
        r1: usize,
        tw: usize,
        v: &mut [f32],
        padded: &mut Vec<f32>,
    ) {
        let v = Planes::new(v);
        let g = InGeom { c_in: self.c_in, c_planes: self.c_in, h, w, pad: self.padding, r0, r1, tw };
        match self.tile {
            Tile::F2 => input_f2(x, g, v, padded),
            Tile::F4 => input_f4(x, g, v, padded),
        }
    }
}

/// Tiles processed together, one SIMD lane each.
const L: usize = 16;
type Lanes = [f32; L];
/// Up to 6×6 values of L tiles: `blk[i][j][lane]`.
type Block = [[Lanes; 6]; 6];

/// Where an input transform writes V: planes that several tasks fill at disjoint offsets
/// (a raw pointer, so that no task holds a `&mut` over another's part). Invariant: `ptr`
/// points at `len` writable f32s of a live buffer while the value is used (it is built by
/// [`Planes::new`] or from a [`dispatch::SendPtr`] range).
#[derive(Clone, Copy)]
struct Planes {
    ptr: *mut f32,
    len: usize,
}

impl Planes {
    fn new(v: &mut [f32]) -> Self {
        Self { ptr: v.as_mut_ptr(), len: v.len() }
    }

    /// Writes the first `n` lanes of `src` at `off`.
    ///
    /// # Safety
    /// The planes are still allocated (`ptr` points at `len` writable f32s) and no other
    /// thread reads or writes `off..off + n` meanwhile. The bounds are asserted.
    #[inline(always)]
    unsafe fn write(&self, off: usize, src: &Lanes, n: usize) {
        assert!(n <= L && off + n <= self.len, "V plane bounds");
        // SAFETY: in bounds (checked); alive and unshared (caller).
        unsafe {
            if n == L {
                std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(off), L);
            } else {
                // Element by element (a masked store once vectorised), not a memcpy call
                // per partial chunk.
                for (l, v) in src.iter().enumerate() {
                    if l < n {
                        self.ptr.add(off + l).write(*v);
                    }
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
struct InGeom {
    /// Channels transformed by this call (x starts at the first).
    c_in: usize,
    /// Channels of V's planes (v starts at this call's first channel).
    c_planes: usize,
    h: usize,
    w: usize,
    pad: usize,
    r0: usize,
    r1: usize,
    tw: usize,
}

/// A Winograd variant's 1-D transforms, lane-wise over L tiles (the first α of 6 values
/// are used). Written out so that no multiplication by 0 or 1 is performed.
trait Variant {
    /// Output tile size.
    const M: usize;
    /// Input tile size, M + 2.
    const A: usize;
    /// `Bᵀ d`.
    fn bt(d: &[Lanes; 6]) -> [Lanes; 6];
    /// `Aᵀ m` (first M values).
    fn at(m: &[Lanes; 6]) -> [Lanes; 6];
}

struct VF2;
struct VF4;

impl Variant for VF2 {
    const M: usize = 2;
    const A: usize = 4;
    #[inline(always)]
    fn bt(d: &[Lanes; 6]) -> [Lanes; 6] {
        let mut t = [[0f32; L]; 6];
        for l in 0..L {
            let (a, b, c, e) = (d[0][l], d[1][l], d[2][l], d[3][l]);
            t[0][l] = a - c;
            t[1][l] = b + c;
            t[2][l] = c - b;
            t[3][l] = b - e;
        }
        t
    }
    #[inline(always)]
    fn at(m: &[Lanes; 6]) -> [Lanes; 6] {
        let mut y = [[0f32; L]; 6];
        for l in 0..L {
            let (a, b, c, e) = (m[0][l], m[1][l], m[2][l], m[3][l]);
            y[0][l] = a + b + c;
            y[1][l] = b - c - e;
        }
        y
    }
}

impl Variant for VF4 {
    const M: usize = 4;
    const A: usize = 6;
    #[inline(always)]
    fn bt(d: &[Lanes; 6]) -> [Lanes; 6] {
        let mut t = [[0f32; L]; 6];
        for l in 0..L {
            let (d0, d1, d2, d3, d4, d5) = (d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]);
            t[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
            t[1][l] = -4.0 * (d1 + d2) + (d3 + d4);
            t[2][l] = 4.0 * (d1 - d2) + (d4 - d3);
            t[3][l] = 2.0 * (d3 - d1) + (d4 - d2);
            t[4][l] = 2.0 * (d1 - d3) + (d4 - d2);
            t[5][l] = 4.0 * d1 - 5.0 * d3 + d5;
        }
        t
    }
    #[inline(always)]
    fn at(m: &[Lanes; 6]) -> [Lanes; 6] {
        let mut y = [[0f32; L]; 6];
        for l in 0..L {
            let (m0, m1, m2, m3, m4, m5) = (m[0][l], m[1][l], m[2][l], m[3][l], m[4][l], m[5][l]);
            let (p12, n12, p34, n34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
            y[0][l] = m0 + p12 + p34;
            y[1][l] = n12 + 2.0 * n34;
            y[2][l] = p12 + 4.0 * p34;
            y[3][l] = n12 + 8.0 * n34 + m5;
        }
        y
    }
}

#[inline(always)]
#[allow(clippy::needless_range_loop)] // the transforms' indices are the maths' i, j, k
fn input_impl<T: Variant>(x: &[f32], g: InGeom, v: Planes, padded: &mut Vec<f32>) {
    let (m, a) = (T::M, T::A);
    let nt = (g.r1 - g.r0) * g.tw;
    let plane_stride = g.c_planes * nt;
    // The channel's input rows of tile rows r0..r1, zero-padded, each long enough for a
    // 128-wide window at every chunk. Zeroed once: the copies below only write the
    // image's columns of the image's rows, so padding stays zero across channels.
    let width = g.tw.div_ceil(L) * L * m + 128;
    let n_rows = (g.r1 - g.r0) * m + 2;
    padded.clear();
    padded.resize(n_rows * width, 0.0);
    let y0 = (g.r0 * m) as isize - g.pad as isize;
    let n = g.w.min(width - g.pad);
    let mut t: Block = [[[0f32; L]; 6]; 6];
    for ci in 0..g.c_in {
        let plane = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for (r, row) in padded.chunks_exact_mut(width).enumerate() {
            let yy = y0 + r as isize;
            if yy >= 0 && yy < g.h as isize {
                row[g.pad..g.pad + n].copy_from_slice(&plane[yy as usize * g.w..yy as usize * g.w + n]);
            }
        }
        for ty in g.r0..g.r1 {
            let rows = &padded[(ty - g.r0) * m * width..];
            for tx0 in (0..g.tw).step_by(L) {
                let nl = L.min(g.tw - tx0);
                // Bᵀ d B as α row transforms into `t` (transposed: t[k][i] = (d B)[i][k]),
                // then α transforms of t's rows: (Bᵀ d B)[i][j] = Bᵀ(t[j])[i]. One patch
                // row or column at a time stays in registers.
                for i in 0..a {
                    // Patch column k of lane l is row[l·m + k] (constant offsets in a
                    // fixed-size window, so the loads vectorise as shuffles).
                    let row: &[f32; 128] =
                        rows[i * width + tx0 * m..i * width + tx0 * m + 128].try_into().expect("window");
                    let mut di = [[0f32; L]; 6];
                    for (k, dk) in di.iter_mut().enumerate().take(a) {
                        for (l, v) in dk.iter_mut().enumerate() {
                            *v = row[l * T::M + k];
                        }
                    }
                    let r = T::bt(&di);
                    for k in 0..a {
                        t[k][i] = r[k];
                    }
                }
                let tile0 = (ty - g.r0) * g.tw + tx0;
                for j in 0..a {
                    let col = T::bt(&t[j]);
                    for (i, ci_lanes) in col.iter().enumerate().take(a) {
                        let off = (i * a + j) * plane_stride + ci * nt + tile0;
                        // SAFETY: the caller's planes; this call's channels only.
                        unsafe { v.write(off, ci_lanes, nl) };
                    }
                }
            }
        }
    }
}

#[inline(always)]
fn input_f2_impl(x: &[f32], g: InGeom, v: Planes, padded: &mut Vec<f32>) {
    input_impl::<VF2>(x, g, v, padded)
}

#[inline(always)]
fn input_f4_impl(x: &[f32], g: InGeom, v: Planes, padded: &mut Vec<f32>) {
    input_impl::<VF4>(x, g, v, padded)
}

simd_dispatch! {
    fn input_f2(x: &[f32], g: InGeom, v: Planes, padded: &mut Vec<f32>) => input_f2_impl
}

simd_dispatch! {
    fn input_f4(x: &[f32], g: InGeom, v: Planes, padded: &mut Vec<f32>) => input_f4_impl
}

/// Writes Aᵀ M A for every tile of one output channel into `rows` (`n_rows` output rows
/// of width `ow`, starting at a tile row boundary). `mm[ξ·stride + tile]` holds M.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // as in input_impl
fn output_impl<T: Variant>(mm: &[f32], stride: usize, rows: &mut [f32], ow: usize, n_rows: usize, tw: usize) {
    let (mo, a) = (T::M, T::A);
    // t[c][i] = (M A)[i][c], then m[c][r] = Aᵀ(t[c])[r] = (Aᵀ M A)[r][c]: one row or
    // column of the tile at a time stays in registers.
    let mut t: Block = [[[0f32; L]; 6]; 6];
    let mut m: Block = [[[0f32; L]; 6]; 6];
    for ty in 0..n_rows.div_ceil(mo) {
        for tx0 in (0..tw).step_by(L) {
            let nl = L.min(tw - tx0);
            let tile0 = ty * tw + tx0;
            for i in 0..a {
                let mut mi = [[0f32; L]; 6];
                for (j, mij) in mi.iter_mut().enumerate().take(a) {
                    let off = (i * a + j) * stride + tile0;
                    if nl == L {
                        let src: &[f32; L] = mm[off..off + L].try_into().expect("L lanes");
                        *mij = *src;
                    } else {
                        mij[..nl].copy_from_slice(&mm[off..off + nl]);
                    }
                }
                let r = T::at(&mi);
                for c in 0..mo {
                    t[c][i] = r[c];
                }
            }
            for c in 0..mo {
                m[c] = T::at(&t[c]);
            }
            let full = (tx0 + nl) * mo <= ow;
            for r in 0..mo.min(n_rows - ty * mo) {
                let dst = &mut rows[(ty * mo + r) * ow..(ty * mo + r + 1) * ow];
                if full && nl == L {
                    let dst = &mut dst[tx0 * mo..(tx0 + L) * mo];
                    for l in 0..L {
                        for c in 0..mo {
                            dst[l * mo + c] = m[c][r][l];
                        }
                    }
                } else {
                    for l in 0..nl {
                        for c in 0..mo {
                            if let Some(o) = dst.get_mut((tx0 + l) * mo + c) {
                                *o = m[c][r][l];
                            }
                        }
                    }
                }
            }
        }
    }
}

#[inline(always)]
fn output_f2_impl(mm: &[f32], stride: usize, rows: &mut [f32], ow: usize, n_rows: usize, tw: usize) {
    output_impl::<VF2>(mm, stride, rows, ow, n_rows, tw)
}

#[inline(always)]
fn output_f4_impl(mm: &[f32], stride: usize, rows: &mut [f32], ow: usize, n_rows: usize, tw: usize) {
    output_impl::<VF4>(mm, stride, rows, ow, n_rows, tw)
}

simd_dispatch! {
    fn output_f2(mm: &[f32], stride: usize, rows: &mut [f32], ow: usize, n_rows: usize, tw: usize) => output_f2_impl
}

simd_dispatch! {
    fn output_f4(mm: &[f32], stride: usize, rows: &mut [f32], ow: usize, n_rows: usize, tw: usize) => output_f4_impl
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_rng::Rng;

    /// Direct convolution in f64.
    fn naive(x: &[f32], wt: &[f32], bias: &[f32], dims: (usize, usize, usize, usize, usize), pad: usize) -> Vec<f32> {
        let (b, ci, co, h, w) = dims;
        let (oh, ow) = (h + 2 * pad - 2, w + 2 * pad - 2);
        let mut out = vec![0f32; b * co * oh * ow];
        for n in 0..b {
            for o in 0..co {
                for y in 0..oh {
                    for xx in 0..ow {
                        let mut s = bias[o] as f64;
                        for c in 0..ci {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (iy, ix) =
                                        ((y + ky) as isize - pad as isize, (xx + kx) as isize - pad as isize);
                                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                        s += x[((n * ci + c) * h + iy as usize) * w + ix as usize] as f64
                                            * wt[((o * ci + c) * 3 + ky) * 3 + kx] as f64;
                                    }
                                }
                            }
                        }
                        out[((n * co + o) * oh + y) * ow + xx] = s as f32;
                    }
                }
            }
        }
        out
    }

    fn check(tile: Tile, seed: u64, dims: (usize, usize, usize, usize, usize), pad: usize, tol: f32) {
        let (b, ci, co, h, w) = dims;
        let mut rng = Rng(seed);
        let x = rng.vec(b * ci * h * w);
        let wt = rng.vec(co * ci * 9);
        let bias = rng.vec(co);
        let want = naive(&x, &wt, &bias, dims, pad);
        let wino = Winograd3x3::new(&wt, ci, co, pad, tile, crate::kernels::KernelConfig::default().products);
        let got = wino.run(&x, &bias, b, h, w, None, Activation::Identity);
        let scale = (ci as f32 * 9.0).sqrt();
        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
            assert!((g - e).abs() <= tol * scale, "{tile:?} {dims:?} pad {pad} [{i}]: {g} vs {e}");
        }
        // Fused epilogue: the exact convolution followed by the shared epilogue (`Conv2d::run` itself
        // would take this Winograd path, so it cannot be the reference).
        let res = rng.vec(want.len());
        let plane = want.len() / (b * co);
        let unbiased = naive(&x, &wt, &vec![0.0; co], dims, pad);
        for (at, act) in [(AddAt::BeforeAct, Activation::Relu), (AddAt::AfterAct, Activation::Silu)] {
            let got = wino.run(&x, &bias, b, h, w, Some((&res, at)), act);
            let mut want = unbiased.clone();
            for (i, row) in want.chunks_exact_mut(plane).enumerate() {
                dispatch::bias_act(row, bias[i % co], Some(&res[i * plane..(i + 1) * plane]), at, act);
            }
            for (g, e) in got.iter().zip(&want) {
                assert!((g - e).abs() <= tol * scale, "{tile:?} {dims:?} epilogue {act:?}: {g} vs {e}");
            }
        }
    }

    /// bf16 products (AVX512-BF16 CPUs): the same convolution within bf16 rounding,
    /// amplified by the transforms; both the tile-row and the phased paths. The weights'
    /// transform and bf16 packing (portable) are built on every CPU.
    #[test]
    fn bf16_products_match_direct_convolution() {
        let skip_kernel = dispatch::skip_unless(
            bf16::available(),
            "kernels::winograd::tests::bf16_products_match_direct_convolution (kernel part; weights built)",
            "AVX512-BF16",
        );
        for (tile, tol) in [(Tile::F2, 1e-2), (Tile::F4, 4e-2)] {
            for (seed, dims) in [(1, (1, 33, 17, 40, 37)), (2, (2, 20, 30, 70, 66)), (3, (1, 64, 64, 20, 20))] {
                let (b, ci, co, h, w) = dims;
                let mut rng = Rng(seed);
                let x = rng.vec(b * ci * h * w);
                let wt = rng.vec(co * ci * 9);
                let bias = rng.vec(co);
                let wino = Winograd3x3::new(&wt, ci, co, 1, tile, Products::Bf16);
                let a = tile.transform().m + 2;
                let Weights::Bf16(u) = &wino.u else { panic!("bf16 products need bf16 weights") };
                assert!(u.len() == a * a && u.iter().all(|p| (p.rows(), p.kdim()) == (co, ci)), "U[ξ] shapes");
                if skip_kernel {
                    continue;
                }
                let want = naive(&x, &wt, &bias, dims, 1);
                let got = wino.run(&x, &bias, b, h, w, None, Activation::Identity);
                // Relative to the output's typical magnitude.
                let rms = (want.iter().map(|v| v * v).sum::<f32>() / want.len() as f32).sqrt();
                let worst = got.iter().zip(&want).map(|(g, e)| (g - e).abs()).fold(0f32, f32::max) / rms;
                eprintln!("{tile:?} {dims:?}: max |error| {worst:.4} x rms");
                assert!(worst <= tol * 10.0, "{tile:?} {dims:?}: max error {worst} x rms");
                let mean = got.iter().zip(&want).map(|(g, e)| (g - e).abs()).sum::<f32>() / want.len() as f32 / rms;
                assert!(mean <= tol, "{tile:?} {dims:?}: mean error {mean} x rms");
            }
        }
    }

    /// Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A equals the m×m correlation of an α×α patch d with g.
    #[test]
    fn transform_tables_satisfy_the_winograd_identity() {
        let mut rng = Rng(3);
        for t in [&F2, &F4] {
            let (m, a) = (t.m, t.m + 2);
            let mat = |x: &[f32]| -> Vec<f64> { x.iter().map(|&v| v as f64).collect() };
            let (bt, g_, at) = (mat(t.bt), mat(t.g), mat(t.at));
            // (r×k) · (k×c), both row-major; `tr` reads the right operand transposed.
            let mul = |l: &[f64], r: &[f64], rows: usize, k: usize, cols: usize, tr: bool| -> Vec<f64> {
                let at_r = |i: usize, j: usize| if tr { r[j * k + i] } else { r[i * cols + j] };
                (0..rows * cols).map(|o| (0..k).map(|q| l[o / cols * k + q] * at_r(q, o % cols)).sum()).collect()
            };
            let d: Vec<f64> = rng.vec(a * a).into_iter().map(f64::from).collect();
            let g: Vec<f64> = rng.vec(9).into_iter().map(f64::from).collect();
            let u = mul(&mul(&g_, &g, a, 3, 3, false), &g_, a, 3, a, true);
            let v = mul(&mul(&bt, &d, a, a, a, false), &bt, a, a, a, true);
            let uv: Vec<f64> = u.iter().zip(&v).map(|(x, y)| x * y).collect();
            let y = mul(&mul(&at, &uv, m, a, a, false), &at, m, a, m, true);
            for i in 0..m {
                for j in 0..m {
                    let want: f64 = (0..9).map(|q| d[(i + q / 3) * a + j + q % 3] * g[q]).sum();
                    assert!((y[i * m + j] - want).abs() < 1e-5, "F{m} [{i}][{j}]: {} vs {want}", y[i * m + j]);
                }
            }
        }
    }

    #[test]
    fn f2_matches_direct_convolution() {
        check(Tile::F2, 1, (1, 3, 4, 8, 8), 1, 1e-6);
        check(Tile::F2, 2, (2, 5, 7, 9, 11), 1, 1e-6);
        check(Tile::F2, 3, (1, 16, 70, 1, 1), 1, 1e-6);
        check(Tile::F2, 4, (1, 4, 3, 7, 5), 0, 1e-6);
        check(Tile::F2, 5, (1, 33, 17, 40, 37), 1, 1e-6);
        check(Tile::F2, 6, (1, 64, 64, 20, 20), 1, 1e-6);
    }

    #[test]
    fn f4_matches_direct_convolution() {
        check(Tile::F4, 1, (1, 3, 4, 8, 8), 1, 1e-5);
        check(Tile::F4, 2, (2, 5, 7, 9, 11), 1, 1e-5);
        check(Tile::F4, 3, (1, 16, 70, 1, 1), 1, 1e-5);
        check(Tile::F4, 4, (1, 4, 3, 7, 5), 0, 1e-5);
        check(Tile::F4, 5, (1, 33, 17, 40, 37), 1, 1e-5);
        check(Tile::F4, 6, (1, 64, 64, 20, 20), 1, 1e-5);
        // More than PHASED_MAX_TILES tiles: the tile-row task path.
        check(Tile::F4, 7, (2, 20, 30, 70, 66), 1, 1e-5);
    }
}
