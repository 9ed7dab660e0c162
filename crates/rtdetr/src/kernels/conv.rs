//! 2-D convolution on NCHW f32 buffers as GEMM, with bias, residual add and activation
//! fused into an epilogue that runs on each output tile while it is still in cache.
//!
//! The output positions of each image are cut into column tiles (and, for small maps, the
//! output channels into blocks); every tile is one task for rayon:
//! - 1x1 stride-1 convolutions read the input in place: out[Cout, T] = W[Cout, Cin] ·
//!   X[Cin, T] (no copy at all);
//! - every other convolution (3x3, strided, padded) first gathers its tile's receptive
//!   fields into a per-thread reusable im2col buffer [Cin·k·k, T], then multiplies.
//!
//! The products run on the `gemm` crate (AVX-512 / AVX2 chosen at run time) single-threaded
//! per task, so that both cores work on independent tiles and the epilogue stays local.

use std::cell::RefCell;
use std::sync::OnceLock;

use candle_core::Tensor;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::io::config::Activation;
use crate::kernels::bf16::{self, PackedWeights};
use crate::kernels::dispatch::{self, simd_dispatch, AddAt};
use crate::kernels::sgemm;
use crate::kernels::winograd::Winograd3x3;
use crate::kernels::{KernelConfig, Products};

/// A convolution with bias (BatchNorm already folded in) and a fused activation.
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// (c_out, c_in·k·k), row-major: the PyTorch weight layout flattened.
    weight: Vec<f32>,
    bias: Vec<f32>,
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    /// Multiply-adds per output position of the layers this one computes (more than its
    /// own c_out·c_in·k² after [`Conv2d::add_centered`]): the model's nominal cost.
    nominal_macs: usize,
    /// The kernels this layer runs on.
    kernels: KernelConfig,
    /// The Winograd form of a stride-1 3×3 layer, built on first use.
    winograd: OnceLock<Option<Winograd3x3>>,
    /// The weights as bf16 pairs, built on first use with bf16 products.
    bf16: OnceLock<PackedWeights>,
    /// The weights packed for the AVX-512 f32 kernel, built on first use.
    packed: OnceLock<sgemm::PackedWeights>,
}

/// Geometry of one call.
#[derive(Debug, Clone, Copy)]
struct Geom {
    h: usize,
    w: usize,
    ow: usize,
}

thread_local! {
    /// Per-thread im2col tile, grown on demand and reused across calls.
    static COLS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Per-thread packed bf16 panel.
    static BF16_PANEL: RefCell<bf16::Scratch> = RefCell::new(bf16::Scratch::default());
}

impl Conv2d {
    /// `weight`: (c_out, c_in, k, k) flattened; `bias`: (c_out).
    pub fn new(
        weight: Vec<f32>,
        bias: Vec<f32>,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Self {
        assert_eq!(weight.len(), c_out * c_in * kernel * kernel, "conv weight shape");
        assert_eq!(bias.len(), c_out, "conv bias shape");
        assert!(kernel >= 1 && stride >= 1, "kernel and stride must be positive");
        let nominal_macs = c_out * c_in * kernel * kernel;
        Self {
            weight,
            bias,
            c_in,
            c_out,
            kernel,
            stride,
            padding,
            nominal_macs,
            kernels: KernelConfig::default(),
            winograd: OnceLock::new(),
            bf16: OnceLock::new(),
            packed: OnceLock::new(),
        }
    }

    /// The same layer on other kernels.
    pub fn with_kernels(mut self, kernels: KernelConfig) -> Self {
        self.kernels = kernels;
        self.winograd = OnceLock::new();
        self.bf16 = OnceLock::new();
        self.packed = OnceLock::new();
        self
    }

    /// Adds a smaller centred kernel with the same stride (and its bias) into this one:
    /// `self(x) + other(x)` becomes one convolution, exactly in real arithmetic.
    pub fn add_centered(&mut self, other: &Conv2d) -> Result<()> {
        let (k, ko) = (self.kernel, other.kernel);
        let centred = ko <= k
            && (k - ko) % 2 == 0
            && other.stride == self.stride
            && self.padding >= (k - ko) / 2
            && other.padding == self.padding - (k - ko) / 2;
        if !centred || other.c_in != self.c_in || other.c_out != self.c_out {
            return Err(Error::Config("convolutions cannot be merged: geometry differs".into()));
        }
        let off = (k - ko) / 2;
        for co in 0..self.c_out {
            for ci in 0..self.c_in {
                for y in 0..ko {
                    for x in 0..ko {
                        let dst = ((co * self.c_in + ci) * k + y + off) * k + x + off;
                        self.weight[dst] += other.weight[((co * self.c_in + ci) * ko + y) * ko + x];
                    }
                }
            }
            self.bias[co] += other.bias[co];
        }
        self.nominal_macs += other.nominal_macs;
        self.winograd = OnceLock::new();
        self.bf16 = OnceLock::new();
        self.packed = OnceLock::new();
        Ok(())
    }

    /// One convolution computing the output channels of `parts` (same input and geometry)
    /// one after the other.
    pub fn concat(parts: &[&Conv2d]) -> Result<Self> {
        let first = parts.first().ok_or_else(|| Error::Config("nothing to concatenate".into()))?;
        if parts
            .iter()
            .any(|p| (p.c_in, p.kernel, p.stride, p.padding) != (first.c_in, first.kernel, first.stride, first.padding))
        {
            return Err(Error::Config("concatenated convolutions need the same geometry".into()));
        }
        Ok(Self {
            weight: parts.iter().flat_map(|p| p.weight.iter().copied()).collect(),
            bias: parts.iter().flat_map(|p| p.bias.iter().copied()).collect(),
            c_out: parts.iter().map(|p| p.c_out).sum(),
            nominal_macs: parts.iter().map(|p| p.nominal_macs).sum(),
            winograd: OnceLock::new(),
            bf16: OnceLock::new(),
            packed: OnceLock::new(),
            ..(*first).clone()
        })
    }

    /// Output spatial size for an `h`x`w` input.
    pub fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        let o = |n: usize| (n + 2 * self.padding).saturating_sub(self.kernel) / self.stride + 1;
        (o(h), o(w))
    }

    /// The model's floating-point operations (multiply-adds ×2) for one `h`x`w` image.
    pub fn flops(&self, h: usize, w: usize) -> u64 {
        let (oh, ow) = self.out_size(h, w);
        2 * (oh * ow * self.nominal_macs) as u64
    }

    /// `act(conv(x) + bias + residual)` (or `act(conv(x) + bias) + residual`, see
    /// [`AddAt`]) on a (B, c_in, H, W) tensor; `residual` has the output's shape.
    pub fn forward(&self, x: &Tensor, residual: Option<(&Tensor, AddAt)>, act: Activation) -> Result<Tensor> {
        self.forward_affine(x, residual, act, None)
    }

    /// [`Conv2d::forward`], then `scale · y + shift` on the activation's output when
    /// `affine` is `Some((scale, shift))` (HGNetV2's learnable affine block), with an
    /// [`AddAt::AfterAct`] residual added after it, in one parallel pass over the output.
    pub fn forward_affine(
        &self,
        x: &Tensor,
        residual: Option<(&Tensor, AddAt)>,
        act: Activation,
        affine: Option<(f32, f32)>,
    ) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        if c != self.c_in {
            return Err(Error::InvalidArgument(format!("conv expects {} input channels, got {c}", self.c_in)));
        }
        let (oh, ow) = self.out_size(h, w);
        if h + 2 * self.padding < self.kernel || w + 2 * self.padding < self.kernel {
            return Err(Error::InvalidArgument(format!("conv input {h}x{w} is smaller than its kernel")));
        }
        let out_shape = (b, self.c_out, oh, ow);
        if let Some((r, _)) = residual {
            if r.dims() != [b, self.c_out, oh, ow] {
                return Err(Error::InvalidArgument(format!("residual {:?} != conv output {out_shape:?}", r.dims())));
            }
        }
        let started = crate::kernels::flops::start();
        let out = dispatch::with_f32(x, |xs| match (residual, affine) {
            (Some((r, at)), None) => dispatch::with_f32(r, |rs| self.run(xs, b, h, w, Some((rs, at)), act)),
            (None, None) => Ok(self.run(xs, b, h, w, None, act)),
            (residual, Some((scale, shift))) => {
                let mut out = self.run(xs, b, h, w, None, act);
                match residual {
                    None => dispatch::affine_add_par(&mut out, scale, shift, None),
                    Some((r, AddAt::AfterAct)) => {
                        dispatch::with_f32(r, |rs| dispatch::affine_add_par(&mut out, scale, shift, Some(rs)))?
                    }
                    Some((_, AddAt::BeforeAct)) => {
                        return Err(Error::InvalidArgument(
                            "an affine block takes its residual after the activation".into(),
                        ))
                    }
                }
                Ok(out)
            }
        })??;
        let flops = b as u64 * self.flops(h, w);
        crate::kernels::flops::add(flops);
        crate::kernels::flops::record(started, || self.describe(b, h, w), flops);
        dispatch::tensor(out, out_shape, x.device())
    }

    /// The layer, its input and kernel path, for profiles: "conv3x3/1 256->256 80x80 winograd".
    fn describe(&self, b: usize, h: usize, w: usize) -> String {
        let path = if self.winograd().is_some() {
            "winograd"
        } else if self.kernel == 1 && self.stride == 1 && self.padding == 0 {
            "direct"
        } else {
            "im2col"
        };
        let k = self.kernel;
        format!("conv{k}x{k}/{} {}->{} {b}x{h}x{w} {path}", self.stride, self.c_in, self.c_out)
    }

    /// The kernel on raw buffers: `x` is (b, c_in, h, w), `residual` (b, c_out, oh, ow).
    pub fn run(
        &self,
        x: &[f32],
        b: usize,
        h: usize,
        w: usize,
        residual: Option<(&[f32], AddAt)>,
        act: Activation,
    ) -> Vec<f32> {
        let (oh, ow) = self.out_size(h, w);
        let g = Geom { h, w, ow };
        let hw = oh * ow;
        assert_eq!(x.len(), b * self.c_in * h * w, "conv input length");
        if let Some((r, _)) = residual {
            assert_eq!(r.len(), b * self.c_out * hw, "conv residual length");
        }
        if let Some(wino) = self.winograd() {
            return wino.run(x, &self.bias, b, h, w, residual, act);
        }
        let kdim = self.c_in * self.kernel * self.kernel;
        let direct = self.kernel == 1 && self.stride == 1 && self.padding == 0;
        // Tasks whose panel is built per task (im2col, or the bf16 packing) split the
        // columns first, so that no two tasks build the same panel.
        let narrow = !direct || self.kernels.products == Products::Bf16;
        let (tile, cblock) = plan(hw, kdim, self.c_out, b, narrow);
        let n_tiles = hw.div_ceil(tile);
        let n_cblocks = self.c_out.div_ceil(cblock);
        let tasks = b * n_tiles * n_cblocks;
        let len = b * self.c_out * hw;
        let fill = |dst: dispatch::SendPtr| {
            (0..tasks).into_par_iter().for_each(|t| {
                let img = t / (n_tiles * n_cblocks);
                let tile_idx = (t / n_cblocks) % n_tiles;
                let cb = t % n_cblocks;
                let p0 = tile_idx * tile;
                let cols = tile.min(hw - p0);
                let c0 = cb * cblock;
                let rows = cblock.min(self.c_out - c0);
                let xi = &x[img * self.c_in * h * w..(img + 1) * self.c_in * h * w];
                let out_base = img * self.c_out * hw;
                let off = out_base + c0 * hw + p0;
                // The task's block: rows × cols at `off`, row stride hw.
                let span = dispatch::extent(rows, cols, hw);
                // SAFETY: the block is inside the residual, which has the output's length
                // (asserted above; `dst.at` below checks the same bounds in debug builds).
                let residual = residual.map(|(r, at)| (unsafe { r.as_ptr().add(off) }, at));
                let epi = sgemm::Epilogue { bias: Some(sgemm::Bias::Rows(&self.bias[c0..c0 + rows])), residual, act };
                // SAFETY: the block is inside the output (asserted in debug builds).
                let out = unsafe { dst.at(off, span) };
                if direct {
                    // SAFETY: a 1×1 stride-1 convolution reads its input in place: c_in
                    // (= kdim) rows of the image, row stride hw, from column p0 (checked
                    // against the image's length in debug builds); the block of the output
                    // is this task's alone, and `residual` is a separate buffer.
                    unsafe {
                        let lhs = xi.as_ptr().add(p0);
                        self.gemm_tile(lhs, xi.len().saturating_sub(p0), hw, out, len - off, hw, cols, c0, rows, epi)
                    };
                } else {
                    COLS.with_borrow_mut(|buf| {
                        if buf.len() < kdim * cols {
                            buf.resize(kdim * cols, 0.0);
                        }
                        self.im2col(xi, g, p0, cols, &mut buf[..kdim * cols]);
                        // SAFETY: the im2col panel is kdim rows of cols (row stride cols);
                        // the output block as above.
                        unsafe {
                            self.gemm_tile(buf.as_ptr(), buf.len(), cols, out, len - off, hw, cols, c0, rows, epi)
                        };
                    });
                }
            });
        };
        // SAFETY: the tasks cover every (image, channel, position) exactly once: `plan`'s
        // tiles partition the hw positions and its channel blocks the c_out channels, and
        // each task writes its block of output rows × tile columns, through gemm then the
        // epilogue (debug builds check that every element was written).
        unsafe { dispatch::filled_by(len, fill) }
    }

    /// The Winograd form of this layer where it applies (3×3, stride 1, enough channels to
    /// amortise the transforms).
    fn winograd(&self) -> Option<&Winograd3x3> {
        // With bf16 products a 32-channel input is faster direct (r50vd's stem at 320x320:
        // 12.2 vs 14.2 ms and 7.7 vs 8.3 ms); f32 products gain from 16 channels on.
        let min_c_in = if self.kernels.products == Products::Bf16 { 64 } else { 16 };
        self.winograd
            .get_or_init(|| {
                let tile = self.kernels.winograd?;
                (self.kernel == 3 && self.stride == 1 && self.c_in >= min_c_in && self.c_out >= 16).then(|| {
                    Winograd3x3::new(&self.weight, self.c_in, self.c_out, self.padding, tile, self.kernels.products)
                })
            })
            .as_ref()
    }

    /// `out[r·out_stride + j] = epi(Σ_k W[c0 + r, k] · lhs[k·lhs_stride + j])` for
    /// r < rows, j < cols.
    ///
    /// # Safety
    /// `lhs` points at kdim rows of `cols` readable elements `lhs_stride` apart, within the
    /// `lhs_len` elements from `lhs` to the end of its buffer; `out` (and the epilogue's
    /// residual, a separate buffer) at `rows` rows of `cols` elements `out_stride` apart,
    /// within the `out_len` elements from `out` to the end of its buffer, owned by this
    /// task; `c0 + rows <= c_out`, and c0 is a multiple of [`sgemm::MR`]. Debug builds
    /// assert the extents and channels.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_tile(
        &self,
        lhs: *const f32,
        lhs_len: usize,
        lhs_stride: usize,
        out: *mut f32,
        out_len: usize,
        out_stride: usize,
        cols: usize,
        c0: usize,
        rows: usize,
        epi: sgemm::Epilogue,
    ) {
        let kdim = self.c_in * self.kernel * self.kernel;
        dispatch::debug_check_block("conv tile lhs", lhs_len, 0, kdim, cols, lhs_stride);
        dispatch::debug_check_block("conv tile output", out_len, 0, rows, cols, out_stride);
        debug_assert!(c0 + rows <= self.c_out && c0.is_multiple_of(sgemm::MR), "conv tile: channels {c0}+{rows}");
        match self.kernels.products {
            Products::Bf16 => {
                let packed = self.bf16.get_or_init(|| PackedWeights::new(&self.weight, self.c_out, kdim));
                // SAFETY: a KernelConfig has bf16 products only where bf16::available()
                // (checked again in debug builds); bounds as documented, rows c0.. of the
                // weight exist (both asserted by bf16::gemm).
                BF16_PANEL.with_borrow_mut(|s| unsafe {
                    bf16::gemm(packed, c0, rows, lhs, lhs_stride, cols, out, out_stride, s, epi)
                });
                return;
            }
            Products::PackedF32 => {
                let packed = self.packed.get_or_init(|| sgemm::PackedWeights::new(&self.weight, self.c_out, kdim));
                // SAFETY: a KernelConfig has packed products only where sgemm::available()
                // (checked again in debug builds); c0 is a multiple of MR (plan); bounds
                // as documented.
                unsafe { sgemm::gemm(packed, c0, rows, lhs, lhs_stride, cols, out, out_stride, epi) };
                return;
            }
            Products::Gemm => {}
        }
        // SAFETY: bounds as documented; rows c0..c0 + rows <= c_out of the weight (kdim
        // each) exist.
        unsafe {
            crate::kernels::ops::gemm_ab(
                rows,
                cols,
                kdim,
                out,
                out_stride,
                self.weight.as_ptr().add(c0 * kdim),
                kdim,
                lhs,
                lhs_stride,
            )
        };
        // The `gemm` crate leaves the epilogue to this pass over the tile.
        for r in 0..rows {
            // SAFETY: row r < rows of the task's output block (rows do not overlap: the
            // stride is hw or cols, at least cols); only this task accesses it.
            let row = unsafe { std::slice::from_raw_parts_mut(out.add(r * out_stride), cols) };
            // SAFETY: the same row of the residual, laid out like the output and apart
            // from it; only read.
            let res = epi.residual.map(|(p, _)| unsafe { std::slice::from_raw_parts(p.add(r * out_stride), cols) });
            let at = epi.residual.map_or(AddAt::BeforeAct, |(_, at)| at);
            let bias = match epi.bias {
                Some(sgemm::Bias::Rows(b)) => b[r],
                _ => 0.0,
            };
            dispatch::bias_act(row, bias, res, at, epi.act);
        }
    }

    /// Gathers the receptive fields of output positions p0..p0+cols of one image into
    /// `buf` laid out as [c_in·k·k][cols] (zeros for padding).
    fn im2col(&self, x: &[f32], g: Geom, p0: usize, cols: usize, buf: &mut [f32]) {
        let layer = Im2col { c_in: self.c_in, k: self.kernel, s: self.stride, pad: self.padding };
        im2col(x, layer, g, p0, cols, buf)
    }
}

/// The geometry of a convolution that [`im2col`] needs.
#[derive(Debug, Clone, Copy)]
struct Im2col {
    c_in: usize,
    k: usize,
    s: usize,
    pad: usize,
}

#[inline(always)]
fn im2col_impl(x: &[f32], layer: Im2col, g: Geom, p0: usize, cols: usize, buf: &mut [f32]) {
    let Im2col { c_in, k, s, pad } = layer;
    let ipad = pad as isize;
    // The tile's runs of consecutive positions within one output row: (output row, first
    // output column, offset in the tile, length), the same for every buffer row.
    let mut runs = Vec::with_capacity(cols / g.ow.max(1) + 2);
    let mut t = 0;
    while t < cols {
        let (oy, ox0) = ((p0 + t) / g.ow, (p0 + t) % g.ow);
        let n = (g.ow - ox0).min(cols - t);
        runs.push((oy, ox0, t, n));
        t += n;
    }
    for ci in 0..c_in {
        let plane = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut buf[((ci * k + ky) * k + kx) * cols..][..cols];
                // Output columns ox whose input column ox·s + kx − pad is inside.
                let lo = ((ipad - kx as isize).max(0) as usize).div_ceil(s).min(g.ow);
                let hi = ((g.w as isize + ipad - kx as isize).max(0) as usize).div_ceil(s).clamp(lo, g.ow);
                for &(oy, ox0, t, n) in &runs {
                    let seg = &mut row[t..t + n];
                    let iy = (oy * s + ky) as isize - ipad;
                    if iy < 0 || iy >= g.h as isize {
                        seg.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    let (a, bnd) = (lo.clamp(ox0, ox0 + n), hi.clamp(ox0, ox0 + n));
                    seg[..a - ox0].fill(0.0);
                    seg[bnd - ox0..].fill(0.0);
                    let inner = &mut seg[a - ox0..bnd - ox0];
                    if inner.is_empty() {
                        continue;
                    }
                    // Inside the map by the choice of lo and hi.
                    let f = a * s + kx - pad;
                    let src = &src[f..f + (inner.len() - 1) * s + 1];
                    match s {
                        1 => inner.copy_from_slice(src),
                        // Pairs, so that the even elements load as two vectors and a
                        // shuffle.
                        2 => {
                            let (pairs, last) = src.as_chunks::<2>();
                            for (v, pair) in inner.iter_mut().zip(pairs) {
                                *v = pair[0];
                            }
                            if let (Some(v), [l]) = (inner.last_mut(), last) {
                                *v = *l;
                            }
                        }
                        _ => {
                            for (v, e) in inner.iter_mut().zip(src.iter().step_by(s)) {
                                *v = *e;
                            }
                        }
                    }
                }
            }
        }
    }
}

simd_dispatch! {
    /// Gathers the receptive fields of output positions p0..p0+cols of one image into
    /// `buf` laid out as [c_in·k·k][cols] (zeros for padding).
    fn im2col(x: &[f32], layer: Im2col, g: Geom, p0: usize, cols: usize, buf: &mut [f32]) => im2col_impl
}

/// Tile width (output positions) and output-channel block of each task, chosen so that a
/// tile's im2col panel stays in the L2/L3 caches and there are enough tasks to balance
/// two threads: by narrower tiles (down to 64 positions) where `narrow_first`, then by
/// output-channel blocks.
fn plan(hw: usize, kdim: usize, c_out: usize, batch: usize, narrow_first: bool) -> (usize, usize) {
    const MIN_TASKS: usize = 8;
    // About 1 MiB of im2col panel per task, in multiples of 64 positions.
    let mut tile = ((256 * 1024 / kdim.max(1)) / 64 * 64).clamp(64, 1024);
    let per_image = MIN_TASKS.div_ceil(batch.max(1));
    if narrow_first && hw.div_ceil(tile) < per_image {
        tile = hw.div_ceil(per_image).next_multiple_of(64).min(tile);
    }
    let tile = if hw <= tile { hw } else { hw.div_ceil(hw.div_ceil(tile)).next_multiple_of(16).min(hw) };
    let tasks = batch * hw.div_ceil(tile);
    // Small maps: split the output channels too so both threads get work.
    let mut cblock = c_out;
    while tasks * c_out.div_ceil(cblock) < MIN_TASKS && cblock >= 64 {
        // Whole weight panels of the packed kernel.
        cblock = (cblock / 2).next_multiple_of(sgemm::MR);
    }
    (tile, cblock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    use crate::test_rng::Rng;

    /// Reference: candle's conv2d, bias, residual, activation.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        x: &Tensor,
        w: &[f32],
        bias: &[f32],
        shape: (usize, usize, usize),
        stride: usize,
        padding: usize,
        residual: Option<(&Tensor, AddAt)>,
        act: Activation,
    ) -> Tensor {
        let (c_out, c_in, k) = shape;
        let wt = Tensor::from_vec(w.to_vec(), (c_out, c_in, k, k), &Device::Cpu).unwrap();
        let bt = Tensor::from_vec(bias.to_vec(), (1, c_out, 1, 1), &Device::Cpu).unwrap();
        let mut y = x.conv2d(&wt, padding, stride, 1, 1).unwrap().broadcast_add(&bt).unwrap();
        if let Some((r, AddAt::BeforeAct)) = residual {
            y = (y + r).unwrap();
        }
        let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        let y =
            Tensor::from_vec(v.into_iter().map(|v| dispatch::act(v, act)).collect::<Vec<_>>(), y.dims(), &Device::Cpu)
                .unwrap();
        match residual {
            Some((r, AddAt::AfterAct)) => (y + r).unwrap(),
            _ => y,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn check(
        seed: u64,
        b: usize,
        c_in: usize,
        c_out: usize,
        h: usize,
        w: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) {
        let mut rng = Rng(seed);
        let x = Tensor::from_vec(rng.vec(b * c_in * h * w), (b, c_in, h, w), &Device::Cpu).unwrap();
        let wv = rng.vec(c_out * c_in * k * k);
        let bv = rng.vec(c_out);
        let conv = Conv2d::new(wv.clone(), bv.clone(), c_in, c_out, k, stride, padding);
        let (oh, ow) = conv.out_size(h, w);
        let res = Tensor::from_vec(rng.vec(b * c_out * oh * ow), (b, c_out, oh, ow), &Device::Cpu).unwrap();
        for (residual, act) in [
            (None, Activation::Identity),
            (Some((&res, AddAt::BeforeAct)), Activation::Relu),
            (Some((&res, AddAt::AfterAct)), Activation::Silu),
            (None, Activation::Gelu),
            (Some((&res, AddAt::BeforeAct)), Activation::GeluTanh),
        ] {
            let got = conv.forward(&x, residual, act).unwrap();
            let want = reference(&x, &wv, &bv, (c_out, c_in, k), stride, padding, residual, act);
            assert_eq!(got.dims(), want.dims());
            let d = (got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            let d = d.to_scalar::<f32>().unwrap();
            let tol = 1e-5 * (c_in * k * k) as f32;
            assert!(d <= tol, "b{b} {c_in}->{c_out} {h}x{w} k{k} s{stride} p{padding} {act:?}: diff {d:e}");
        }
    }

    #[test]
    fn pointwise_matches_candle() {
        check(1, 1, 5, 7, 9, 11, 1, 1, 0);
        check(2, 2, 64, 33, 20, 20, 1, 1, 0);
        check(3, 1, 17, 130, 1, 1, 1, 1, 0);
        check(4, 3, 3, 1, 31, 7, 1, 1, 0);
        // Many tiles.
        check(5, 1, 9, 19, 97, 89, 1, 1, 0);
    }

    #[test]
    fn strided_pointwise_matches_candle() {
        check(6, 2, 16, 24, 10, 14, 1, 2, 0);
        check(7, 1, 5, 3, 9, 7, 1, 2, 0);
    }

    #[test]
    fn three_by_three_matches_candle() {
        check(8, 1, 3, 8, 33, 29, 3, 2, 1);
        check(9, 2, 13, 21, 17, 19, 3, 1, 1);
        check(10, 1, 40, 70, 1, 1, 3, 1, 1);
        check(11, 1, 6, 6, 2, 3, 3, 2, 1);
        check(12, 1, 4, 5, 80, 70, 3, 1, 1);
        // No padding, and a 5x5 kernel with stride 3.
        check(13, 1, 7, 9, 12, 10, 3, 1, 0);
        check(14, 2, 3, 4, 16, 13, 5, 3, 2);
        // Stride 2 on rows long enough for the vectorised gather's body and tails, with
        // and without padding, odd and even widths.
        check(15, 1, 2, 3, 7, 263, 3, 2, 1);
        check(16, 1, 5, 4, 40, 130, 3, 2, 0);
    }

    fn conv_tensor(conv: &Conv2d, x: &Tensor) -> Tensor {
        conv.forward(x, None, Activation::Identity).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn merged_repvgg_equals_sum_of_branches() {
        let mut rng = Rng(21);
        for (c, h, w, s) in [(8, 9, 7, 1), (5, 6, 6, 2), (3, 1, 1, 1)] {
            let x = Tensor::from_vec(rng.vec(2 * c * h * w), (2, c, h, w), &Device::Cpu).unwrap();
            let k3 = Conv2d::new(rng.vec(c * c * 9), rng.vec(c), c, c, 3, s, 1);
            let k1 = Conv2d::new(rng.vec(c * c), rng.vec(c), c, c, 1, s, 0);
            let want = (conv_tensor(&k3, &x) + conv_tensor(&k1, &x)).unwrap();
            let mut merged = k3.clone();
            merged.add_centered(&k1).unwrap();
            assert!(max_diff(&conv_tensor(&merged, &x), &want) < 1e-5);
        }
        // Mismatched geometry is refused.
        let mut k3 = Conv2d::new(vec![0.0; 9], vec![0.0], 1, 1, 3, 1, 1);
        assert!(k3.add_centered(&Conv2d::new(vec![0.0], vec![0.0], 1, 1, 1, 2, 0)).is_err());
        assert!(k3.add_centered(&Conv2d::new(vec![0.0; 2], vec![0.0; 2], 1, 2, 1, 1, 0)).is_err());
    }

    #[test]
    fn concatenated_convs_stack_outputs() {
        let mut rng = Rng(22);
        let x = Tensor::from_vec(rng.vec(3 * 6 * 5 * 4), (3, 6, 5, 4), &Device::Cpu).unwrap();
        let a = Conv2d::new(rng.vec(7 * 6 * 9), rng.vec(7), 6, 7, 3, 1, 1);
        let b = Conv2d::new(rng.vec(2 * 6 * 9), rng.vec(2), 6, 2, 3, 1, 1);
        let both = Conv2d::concat(&[&a, &b]).unwrap();
        let want = Tensor::cat(&[&conv_tensor(&a, &x), &conv_tensor(&b, &x)], 1).unwrap();
        assert!(max_diff(&conv_tensor(&both, &x), &want) < 1e-6);
        let c = Conv2d::new(rng.vec(6), rng.vec(1), 6, 1, 1, 1, 0);
        assert!(Conv2d::concat(&[&a, &c]).is_err());
    }

    #[test]
    fn affine_block_after_the_activation_then_the_residual() {
        let mut rng = Rng(23);
        // 1×1 (direct), 3×3 stride 1 (Winograd) and stride 2 (im2col) paths.
        for (c_in, c_out, h, w, k, stride, padding) in
            [(6, 5, 7, 9, 1, 1, 0), (16, 4, 9, 8, 3, 1, 1), (3, 4, 9, 9, 3, 2, 1)]
        {
            let x = Tensor::from_vec(rng.vec(2 * c_in * h * w), (2, c_in, h, w), &Device::Cpu).unwrap();
            let (wv, bv) = (rng.vec(c_out * c_in * k * k), rng.vec(c_out));
            let conv = Conv2d::new(wv.clone(), bv.clone(), c_in, c_out, k, stride, padding);
            let (oh, ow) = conv.out_size(h, w);
            let res = Tensor::from_vec(rng.vec(2 * c_out * oh * ow), (2, c_out, oh, ow), &Device::Cpu).unwrap();
            let (scale, shift) = (0.6f32, -0.25f32);
            let plain = reference(&x, &wv, &bv, (c_out, c_in, k), stride, padding, None, Activation::Relu);
            let want = ((plain * scale as f64).unwrap() + shift as f64).unwrap();
            let got = conv.forward_affine(&x, None, Activation::Relu, Some((scale, shift))).unwrap();
            let d = (got - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            let d = d.to_scalar::<f32>().unwrap();
            assert!(d <= 1e-4, "k{k} s{stride}: {d}");
            let got =
                conv.forward_affine(&x, Some((&res, AddAt::AfterAct)), Activation::Relu, Some((scale, shift))).unwrap();
            let d = (got - (want + &res).unwrap()).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            assert!(d.to_scalar::<f32>().unwrap() <= 1e-4, "k{k} s{stride} with residual");
            // A residual inside the activation cannot follow an affine block.
            assert!(conv
                .forward_affine(&x, Some((&res, AddAt::BeforeAct)), Activation::Relu, Some((1.0, 0.0)))
                .is_err());
        }
    }

    #[test]
    fn rejects_bad_shapes() {
        let conv = Conv2d::new(vec![0.0; 2 * 3 * 9], vec![0.0; 2], 3, 2, 3, 1, 0);
        let x = Tensor::zeros((1, 4, 5, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(conv.forward(&x, None, Activation::Identity).is_err());
        let x = Tensor::zeros((1, 3, 2, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(conv.forward(&x, None, Activation::Identity).is_err());
        let x = Tensor::zeros((1, 3, 5, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
        let r = Tensor::zeros((1, 2, 5, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(conv.forward(&x, Some((&r, AddAt::BeforeAct)), Activation::Identity).is_err());
    }
}
