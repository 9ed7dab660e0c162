//! Single-thread GFLOP/s of the matrix-product kernels on the convolution shapes of
//! RT-DETR: the f32 `gemm` crate and, where the CPU has it, the bf16 kernel.
//! `cargo run --release -p rtdetr --example kernel_bench`
use std::time::Instant;

use rtdetr::bf16::{self, PackedWeights, Scratch};
use rtdetr::sgemm;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
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
        let flop = 2.0 * (rows * kdim * cols) as f64;
        let reps = ((4e9 / flop) as usize).max(3);
        let mut f32_times = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..reps {
                unsafe {
                    gemm::gemm(
                        cols,
                        rows,
                        kdim,
                        dst.as_mut_ptr(),
                        cols as isize,
                        1,
                        false,
                        b.as_ptr(),
                        cols as isize,
                        1,
                        w.as_ptr(),
                        kdim as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
            f32_times.push(t.elapsed().as_secs_f64() / reps as f64);
        }
        let f32_gf = flop / median(f32_times) / 1e9;
        let mut line = format!("rows {rows:5} kdim {kdim:5} cols {cols:5}  gemm crate {f32_gf:6.1} GFLOP/s");
        if sgemm::available() {
            let packed = sgemm::PackedWeights::new(&w, rows, kdim);
            let mut times = Vec::new();
            for _ in 0..5 {
                let t = Instant::now();
                for _ in 0..reps {
                    unsafe {
                        sgemm::gemm(
                            &packed,
                            0,
                            rows,
                            b.as_ptr(),
                            cols,
                            cols,
                            dst.as_mut_ptr(),
                            cols,
                            sgemm::Epilogue::NONE,
                        )
                    };
                }
                times.push(t.elapsed().as_secs_f64() / reps as f64);
            }
            let gf = flop / median(times) / 1e9;
            line += &format!("  packed f32 {gf:6.1} GFLOP/s ({:.2}x)", gf / f32_gf);
        }
        if bf16::available() {
            let packed = PackedWeights::new(&w, rows, kdim);
            let mut scratch = Scratch::default();
            let mut times = Vec::new();
            for _ in 0..5 {
                let t = Instant::now();
                for _ in 0..reps {
                    unsafe {
                        bf16::gemm(
                            &packed,
                            0,
                            rows,
                            b.as_ptr(),
                            cols,
                            cols,
                            dst.as_mut_ptr(),
                            cols,
                            &mut scratch,
                            sgemm::Epilogue::NONE,
                        )
                    };
                }
                times.push(t.elapsed().as_secs_f64() / reps as f64);
            }
            let gf = flop / median(times) / 1e9;
            line += &format!("  bf16 {gf:6.1} GFLOP/s ({:.2}x)", gf / f32_gf);
        }
        println!("{line}");
    }
}
