//! Single-thread GFLOP/s of the matrix-product kernels on the convolution shapes of
//! RT-DETR: the `gemm` crate (the fallback without AVX-512), the packed f32 kernel and,
//! where the CPU has it, the bf16 kernel.
//! `cargo run --release -p rtdetr --example kernel_bench`
use std::time::Instant;

use rtdetr::bench_internals::bf16::{self, PackedWeights, Scratch};
use rtdetr::bench_internals::{ops, sgemm};

/// GFLOP/s of `run` (one product of `flop` operations): the median of 5 timings of `reps`
/// calls each.
fn gflops(flop: f64, reps: usize, mut run: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                run();
            }
            t.elapsed().as_secs_f64() / reps as f64
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    flop / times[times.len() / 2] / 1e9
}

fn main() {
    // (rows = c_out, kdim = c_in·k², cols = positions per tile)
    let shapes = [
        (64, 576, 1024),
        (128, 1152, 256),
        (256, 2304, 128),
        (512, 4608, 64),
        (256, 256, 1024),
        (1024, 256, 400),
        (256, 1024, 400),
        (256, 256, 64),
        (128, 512, 60),
        (64, 64, 64),
        (256, 2304, 1024),
    ];
    let mut seed = 1u32;
    let mut rnd = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        (seed as f32 / u32::MAX as f32) - 0.5
    };
    for &(rows, kdim, cols) in &shapes {
        let w: Vec<f32> = (0..rows * kdim).map(|_| rnd()).collect();
        let b: Vec<f32> = (0..kdim * cols).map(|_| rnd()).collect();
        let mut dst = vec![0f32; rows * cols];
        let out = dst.as_mut_ptr();
        let flop = 2.0 * (rows * kdim * cols) as f64;
        let reps = ((4e9 / flop) as usize).max(3);
        // SAFETY (all three): w is rows × kdim, b kdim × cols, dst rows × cols.
        let base = gflops(flop, reps, || unsafe {
            ops::gemm_ab(rows, cols, kdim, out, cols, w.as_ptr(), kdim, b.as_ptr(), cols)
        });
        let mut line = format!("rows {rows:5} kdim {kdim:5} cols {cols:5}  gemm crate {base:6.1} GFLOP/s");
        if sgemm::available() {
            let packed = sgemm::PackedWeights::new(&w, rows, kdim);
            let gf = gflops(flop, reps, || unsafe {
                sgemm::gemm(&packed, 0, rows, b.as_ptr(), cols, cols, out, cols, sgemm::Epilogue::NONE)
            });
            line += &format!("  packed f32 {gf:6.1} GFLOP/s ({:.2}x)", gf / base);
        }
        if bf16::available() {
            let packed = PackedWeights::new(&w, rows, kdim);
            let mut scratch = Scratch::default();
            let gf = gflops(flop, reps, || unsafe {
                bf16::gemm(&packed, 0, rows, b.as_ptr(), cols, cols, out, cols, &mut scratch, sgemm::Epilogue::NONE)
            });
            line += &format!("  bf16 {gf:6.1} GFLOP/s ({:.2}x)", gf / base);
        }
        println!("{line}");
    }
}
