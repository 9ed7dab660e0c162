//! `rtdetr`: detect objects, benchmark, evaluate and serve RT-DETR checkpoints.

mod bench;
mod detect;
mod eval;
mod serve;
mod track;
#[cfg(feature = "video")]
mod video;

use clap::{Parser, Subcommand};

/// RT-DETR real-time object detection, native Rust.
#[derive(Parser)]
#[command(name = "rtdetr", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options shared by every command that loads a model.
#[derive(clap::Args, Clone)]
pub struct ModelArgs {
    /// Local checkpoint directory (config.json, model.safetensors, preprocessor_config.json)
    /// or a Hugging Face Hub id.
    #[arg(long, short, default_value = rtdetr::DEFAULT_MODEL)]
    pub model: String,
    /// Input size: one multiple of 32 (square) or HxW, e.g. 640 or 480x800.
    /// Default: the checkpoint's preprocessor_config.json.
    #[arg(long)]
    pub size: Option<String>,
    /// Run only the first N decoder layers (faster, slightly less accurate).
    #[arg(long)]
    pub decoder_layers: Option<usize>,
    /// Arithmetic of the convolutions: f32 (the reference's numerics) or bf16 (bf16
    /// operands, f32 sums; needs AVX512-BF16, otherwise f32 is used and a warning printed).
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    pub precision: PrecisionArg,
}

#[derive(clap::ValueEnum, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PrecisionArg {
    F32,
    Bf16,
}

impl ModelArgs {
    /// The engine's load options for these flags. The kernel-choice variables
    /// `RTDETR_WINOGRAD`, `RTDETR_WINOGRAD_BF16` (`off`, `2`, `4`) and `RTDETR_SGEMM=off`
    /// are read here, for measurements and accuracy checks; the engine reads no
    /// environment.
    pub fn load_options(&self) -> anyhow::Result<rtdetr::LoadOptions> {
        let winograd = |var: &str| match std::env::var(var).as_deref() {
            Ok("off") | Ok("0") => rtdetr::WinogradChoice::Off,
            Ok("2") => rtdetr::WinogradChoice::F2,
            _ => rtdetr::WinogradChoice::F4,
        };
        Ok(rtdetr::LoadOptions {
            precision: match self.precision {
                PrecisionArg::F32 => rtdetr::Precision::F32,
                PrecisionArg::Bf16 => rtdetr::Precision::Bf16,
            },
            size: self.size.as_deref().map(parse_size).transpose()?,
            decoder_layers: self.decoder_layers,
            winograd_f32: winograd("RTDETR_WINOGRAD"),
            winograd_bf16: winograd("RTDETR_WINOGRAD_BF16"),
            packed_f32: std::env::var("RTDETR_SGEMM").as_deref() != Ok("off"),
        })
    }

    pub fn load(&self) -> anyhow::Result<rtdetr::Detector> {
        let opts = self.load_options()?;
        let det = rtdetr::Detector::load(&self.model, &opts).map_err(|e| match (e, self.decoder_layers) {
            (rtdetr::Error::InvalidArgument(m), Some(n)) if m.starts_with("decoder layers") => {
                anyhow::anyhow!("--decoder-layers {n}: {m}")
            }
            (e, _) => e.into(),
        })?;
        if det.precision() != opts.precision {
            eprintln!("warning: this CPU has no bf16 dot products (AVX512-BF16): running f32");
        }
        Ok(det)
    }
}

pub fn parse_size(s: &str) -> anyhow::Result<(usize, usize)> {
    let parse = |v: &str| -> anyhow::Result<usize> {
        v.trim().parse::<usize>().map_err(|_| anyhow::anyhow!("invalid --size {s:?}: expected e.g. 640 or 480x800"))
    };
    let (h, w) = match s.split_once(['x', 'X']) {
        Some((h, w)) => (parse(h)?, parse(w)?),
        None => {
            let v = parse(s)?;
            (v, v)
        }
    };
    if h == 0 || w == 0 || h % 32 != 0 || w % 32 != 0 {
        anyhow::bail!("invalid --size {s:?}: both sides must be positive multiples of 32");
    }
    Ok((h, w))
}

#[derive(Subcommand)]
enum Command {
    /// Detect objects in images.
    Detect(detect::DetectArgs),
    /// Measure latency per stage and GFLOP/s.
    Bench(bench::BenchArgs),
    /// COCO mAP of a checkpoint (or of a detections file) on a COCO-format dataset.
    Eval(eval::EvalArgs),
    /// Serve the OpenAI-compatible HTTP API (chat completions, detections, models, health, metrics).
    Serve(serve::ServeArgs),
}

/// Keeps freed memory in the process instead of returning it to the kernel: every forward
/// pass allocates activation buffers of tens of MB, and glibc's defaults (mmap for large
/// blocks, trimming the heap top) make each pass fault in and zero them again, which cost
/// ~3% at batch 1 and 15% at batch 4 (r50vd). Not for `serve`: batches of varying size
/// fragment the retained heap (r50vd serving peak RSS 1.25 GiB instead of 894 MiB).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any other thread
    // (argument parsing has allocated, which mallopt allows).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

fn main() {
    // A bug must still give one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        let loc = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        // Escaped: a panic message may quote client input, which must not forge log lines.
        eprintln!("error: internal error: {}{loc} (please report this)", msg.escape_debug());
    }));
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        keep_freed_memory();
    }
    let default_log = if matches!(cli.command, Command::Serve(_)) { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RTDETR_LOG").unwrap_or_else(|_| default_log.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Detect(a) => detect::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Serve(a) => serve::run(a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("640").unwrap(), (640, 640));
        assert_eq!(parse_size("480x800").unwrap(), (480, 800));
        assert!(parse_size("500").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("abc").is_err());
        assert!(parse_size("64x").is_err());
    }
}
