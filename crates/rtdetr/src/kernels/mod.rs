//! CPU kernels: instruction-set dispatch, convolutions (direct, im2col, Winograd), the f32
//! and bf16 micro-kernels, dense ops (linear, layer norm, softmax, attention, pools) and the
//! deformable-attention sampling. They know nothing of the model; the model knows nothing
//! of instruction sets. Which kernels a layer uses is fixed when it is built, from a
//! [`KernelConfig`]: nothing here reads global state or the environment.

pub mod bf16;
pub mod conv;
pub mod deform_sample;
pub mod depthwise;
pub mod dispatch;
pub mod flops;
pub mod ops;
pub mod sgemm;
#[cfg(target_arch = "x86_64")]
mod sgemm_avx2;
pub mod tensor_ops;
pub mod winograd;

/// Arithmetic of the matrix products of convolutions and linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// IEEE f32 throughout (the reference's numerics).
    #[default]
    F32,
    /// bf16 operands with f32 accumulation where the CPU has bf16 dot products
    /// (AVX512-BF16); everything else (and CPUs without it) stays f32.
    Bf16,
}

impl Precision {
    /// The precision this CPU runs when `self` is asked for: `Bf16` on a CPU without bf16
    /// dot products gives `F32`.
    pub fn effective(self) -> Self {
        if self == Precision::Bf16 && bf16::available() {
            Precision::Bf16
        } else {
            Precision::F32
        }
    }
}

/// The Winograd tile of stride-1 3×3 convolutions, or none (multiply directly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WinogradChoice {
    /// F(4×4, 3×3): the fastest.
    #[default]
    F4,
    /// F(2×2, 3×3): fewer transform operations, more products.
    F2,
    /// No Winograd: im2col and direct products (the most accurate).
    Off,
}

impl WinogradChoice {
    fn tile(self) -> Option<winograd::Tile> {
        match self {
            WinogradChoice::F4 => Some(winograd::Tile::F4),
            WinogradChoice::F2 => Some(winograd::Tile::F2),
            WinogradChoice::Off => None,
        }
    }
}

/// The matrix-product kernel of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Products {
    /// bf16 operands, f32 sums (`vdpbf16ps`).
    Bf16,
    /// The packed-weight AVX-512 f32 kernel ([`sgemm`]).
    PackedF32,
    /// The `gemm` crate (f32, any CPU).
    Gemm,
}

/// The kernels the layers of one model use, chosen at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelConfig {
    pub products: Products,
    /// The Winograd tile of stride-1 3×3 layers, for this configuration's products.
    pub winograd: Option<winograd::Tile>,
}

impl KernelConfig {
    /// `precision` as this CPU runs it; `packed_f32: false` uses the `gemm` crate for f32
    /// products even where the packed kernel runs (for measurements).
    pub fn new(
        precision: Precision,
        packed_f32: bool,
        winograd_f32: WinogradChoice,
        winograd_bf16: WinogradChoice,
    ) -> Self {
        match precision.effective() {
            Precision::Bf16 => KernelConfig { products: Products::Bf16, winograd: winograd_bf16.tile() },
            Precision::F32 => KernelConfig {
                products: if packed_f32 && sgemm::available() { Products::PackedF32 } else { Products::Gemm },
                winograd: winograd_f32.tile(),
            },
        }
    }

    pub fn precision(&self) -> Precision {
        if self.products == Products::Bf16 {
            Precision::Bf16
        } else {
            Precision::F32
        }
    }
}

impl Default for KernelConfig {
    fn default() -> Self {
        Self::new(Precision::F32, true, WinogradChoice::default(), WinogradChoice::default())
    }
}
