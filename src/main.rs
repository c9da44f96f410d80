//! The `refqsr` command line: parses, calls the library, reports.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use refqsr::{Options, Upscaler};

#[derive(Parser)]
#[command(
    name = "refqsr",
    version,
    about = "GPU super-resolution on any wgpu adapter"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Precision options shared by the commands that upscale.
#[derive(clap::Args)]
struct QuantArgs {
    /// Precision: fp32, wXaY (X-bit weights, Y-bit activations in the body, 2..=8), or
    /// refqsr:H-L (references at H bits, the other patches at L with RefER: 8-5, 8-4, 8-3, 4-3, 4-2).
    #[arg(long, default_value = "fp32")]
    mode: refqsr::quant::Mode,
    /// RefQSR: cosine similarity below which a patch is its own reference.
    #[arg(long)]
    tau: Option<f32>,
    /// Calibration file (default: the shipped one, or MODEL.calib.json beside -m).
    #[arg(long)]
    calibration: Option<PathBuf>,
    /// Use min/max quantization bounds instead of the searched ones.
    #[arg(long)]
    minmax: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Upscale an image, or every image in a folder (recursively).
    Upscale {
        /// An image (png, jpg, webp) or a folder of them.
        input: PathBuf,
        /// Output image, or output folder when INPUT is a folder.
        #[arg(short, long)]
        output: PathBuf,
        /// Upscaling factor (picks the shipped x4 or x2 model; must match -m).
        #[arg(short, long)]
        scale: Option<u32>,
        /// ncnn model: path to its .param (the .bin beside it). Default: shipped SPAN.
        #[arg(short, long)]
        model: Option<PathBuf>,
        /// Tile size in input pixels (default: the largest that fits the adapter; RefQSR's
        /// patch size in refqsr modes, default 48).
        #[arg(short, long)]
        tile: Option<usize>,
        /// Device memory the tensors may use, in MiB (default 1024); RefQSR's groups and its
        /// store of reference features stay within it.
        #[arg(long, value_name = "MIB")]
        max_memory: Option<u64>,
        /// Adapter index or name part, as listed by `refqsr adapters`.
        #[arg(long)]
        adapter: Option<String>,
        /// Mirror the image borders by this many pixels before the network's zero padding
        /// (default 0: the networks were trained with zero padding and score better with it).
        #[arg(long, value_name = "PIXELS")]
        mirror: Option<usize>,
        #[command(flatten)]
        quant: QuantArgs,
    },
    /// Find the quantization bounds of a model on a folder of images; writes MODEL.calib.json.
    Calibrate {
        /// ncnn model (.param with its .bin beside it). Default: shipped SPAN.
        #[arg(short, long)]
        model: Option<PathBuf>,
        /// Upscaling factor (picks the shipped model; must match -m).
        #[arg(short, long)]
        scale: Option<u32>,
        /// Folder of calibration images (searched recursively).
        #[arg(long)]
        images: PathBuf,
        /// Output file (default: MODEL.calib.json beside the model).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Adapter index or name part.
        #[arg(long)]
        adapter: Option<String>,
        /// Keep the existing calibration (the output file) and fit only RefQSR's parameters.
        #[arg(long)]
        refqsr_only: bool,
    },
    /// List the GPU adapters wgpu can see.
    Adapters,
    /// The paper's metrics on a folder of HR images: PSNR-Y, SSIM-Y, BitOPs and FQR per mode.
    Eval {
        /// Folder of high-resolution images (searched recursively).
        #[arg(long)]
        hr: PathBuf,
        /// Upscaling factor (picks the shipped model; must match -m).
        #[arg(short, long)]
        scale: Option<u32>,
        /// Comma-separated modes: fp32, wXaY, refqsr:H-L (each RefQSR mode also runs the
        /// paper's ablations: without RefER, self-reference, random references).
        #[arg(long, default_value = "fp32,w8a8,w4a4")]
        modes: String,
        /// Comma-separated quantization bounds to compare: searched, minmax.
        #[arg(long, default_value = "searched")]
        bounds: String,
        /// Calibration file (default: the shipped one, or MODEL.calib.json beside -m).
        #[arg(long)]
        calibration: Option<PathBuf>,
        /// ncnn model (.param with its .bin beside it). Default: shipped SPAN.
        #[arg(short, long)]
        model: Option<PathBuf>,
        /// Also write the rows as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Adapter index or name part.
        #[arg(long)]
        adapter: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Upscale {
            input,
            output,
            scale,
            model,
            tile,
            max_memory,
            adapter,
            mirror,
            quant,
        } => upscale(
            &input,
            &output,
            Options {
                model,
                scale,
                tile,
                max_memory: max_memory.map(|m| m << 20),
                adapter,
                mirror,
                mode: quant.mode,
                tau: quant.tau,
                calibration: quant.calibration,
                bounds: if quant.minmax {
                    refqsr::quant::Bounds::MinMax
                } else {
                    refqsr::quant::Bounds::Searched
                },
                ..Options::default()
            },
        ),
        Command::Calibrate {
            model,
            scale,
            images,
            output,
            adapter,
            refqsr_only,
        } => calibrate(
            &images,
            output,
            refqsr_only,
            Options {
                model,
                scale,
                adapter,
                ..Options::default()
            },
        ),
        Command::Adapters => adapters(),
        Command::Eval {
            hr,
            scale,
            modes,
            bounds,
            calibration,
            model,
            json,
            adapter,
        } => eval(
            &hr,
            &modes,
            &bounds,
            json.as_deref(),
            Options {
                model,
                scale,
                adapter,
                calibration,
                ..Options::default()
            },
        ),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("refqsr: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bar(len: u64, template: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    b
}

fn upscale(input: &Path, output: &Path, opts: Options) -> refqsr::Result<ExitCode> {
    if !input.exists() {
        return Err(refqsr::Error::io(
            input,
            std::io::ErrorKind::NotFound.into(),
        ));
    }
    let up = Upscaler::new(&opts)?;
    if let Some(why) = up.fallback() {
        eprintln!("refqsr: warning: {why}");
    }
    eprintln!(
        "refqsr: {} x{} {} on {}",
        up.graph().name,
        up.scale(),
        up.mode(),
        up.context().describe()
    );
    if input.is_file() {
        let b = bar(0, "{spinner} {msg} [{bar:30}] {pos}/{len} tiles {elapsed}");
        b.set_message(input.display().to_string());
        up.upscale_file_with_progress(input, output, &mut |done, total| {
            b.set_length(total as u64);
            b.set_position(done as u64);
        })?;
        b.finish_and_clear();
        if let Some(r) = up.last_refqsr_run() {
            eprintln!(
                "refqsr: {} patches, {} references ({:.0}%); clustering {:.0} ms, references {:.0} ms, queries with RefER {:.0} ms; {} wave(s) of groups of {}, {} MiB",
                r.patches,
                r.references,
                100.0 * r.references as f64 / r.patches as f64,
                r.stage_ms[0],
                r.stage_ms[1],
                r.stage_ms[2],
                r.waves,
                r.group,
                r.peak_bytes >> 20
            );
        }
        eprintln!("refqsr: wrote {}", output.display());
        return Ok(ExitCode::SUCCESS);
    }
    let jobs = refqsr::batch::collect(input, output)?;
    let b = bar(
        jobs.len() as u64,
        "{spinner} [{bar:30}] {pos}/{len} images {elapsed} {msg}",
    );
    let mut failed = 0;
    for (src, dst) in &jobs {
        b.set_message(src.display().to_string());
        if let Err(e) = refqsr::batch::prepare(dst).and_then(|_| up.upscale_file(src, dst)) {
            b.suspend(|| eprintln!("refqsr: error: {e}"));
            failed += 1;
        }
        b.inc(1);
    }
    b.finish_and_clear();
    eprintln!(
        "refqsr: {} of {} images upscaled into {}",
        jobs.len() - failed,
        jobs.len(),
        output.display()
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn eval(
    hr: &Path,
    modes: &str,
    bounds: &str,
    json: Option<&Path>,
    opts: Options,
) -> refqsr::Result<ExitCode> {
    let modes = refqsr::quant::Mode::parse_list(modes)?;
    let bounds = bounds
        .split(',')
        .map(|b| b.trim().parse())
        .collect::<refqsr::Result<Vec<refqsr::quant::Bounds>>>()?;
    if !hr.is_dir() {
        return Err(refqsr::Error::Invalid(format!(
            "{}: not a folder of HR images",
            hr.display()
        )));
    }
    let b = bar(0, "{spinner} [{bar:30}] {pos}/{len} images {elapsed}");
    let report = refqsr::eval::evaluate(&opts, hr, &modes, &bounds, &mut |done, total| {
        b.set_length(total as u64);
        b.set_position(done as u64);
    })?;
    b.finish_and_clear();
    eprintln!(
        "refqsr: {} x{} on {}",
        report.model, report.scale, report.adapter
    );
    for w in &report.warnings {
        eprintln!("refqsr: warning: {w}");
    }
    for (path, e) in &report.skipped {
        eprintln!("refqsr: skipped {}: {e}", path.display());
    }
    print!("{}", refqsr::eval::markdown(&report.rows, report.scale));
    if let Some(path) = json {
        let rows: Vec<serde_json::Value> = report
            .rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "mode": r.mode.to_string(),
                    "bounds": r.bounds.map(|b| b.to_string()),
                    "psnr_y": r.psnr_y,
                    "ssim_y": r.ssim_y,
                    "bitops_g": r.bitops_g,
                    "bitops_body_g": r.bitops_body_g,
                    "fqr": r.fqr,
                    "images": r.images,
                    "ablation": r.ablation.map(|a| a.name()),
                    "reference_share": r.ref_share,
                    "clustering_bitops_g": r.clust_bitops_g,
                })
            })
            .collect();
        let text = serde_json::to_string_pretty(&serde_json::json!({ "rows": rows }))
            .expect("JSON of plain values");
        std::fs::write(path, text).map_err(|e| refqsr::Error::io(path, e))?;
    }
    Ok(if report.skipped.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn calibrate(
    images: &Path,
    output: Option<PathBuf>,
    refqsr_only: bool,
    opts: Options,
) -> refqsr::Result<ExitCode> {
    if !images.is_dir() {
        return Err(refqsr::Error::Invalid(format!(
            "{}: not a folder of calibration images",
            images.display()
        )));
    }
    let graph = refqsr::upscaler::load_graph(opts.model.as_deref(), opts.scale)?;
    let output = match (output, &opts.model) {
        (Some(o), _) => o,
        (None, Some(m)) => refqsr::upscaler::calibration_path(m),
        (None, None) => PathBuf::from(format!("{}.calib.json", graph.name)),
    };
    let ctx = refqsr::gpu::Context::new(opts.adapter.as_deref())?;
    eprintln!("refqsr: calibrating {} on {}", graph.name, ctx.describe());
    let mut skipped = 0;
    let calibration = if refqsr_only {
        let prepared = refqsr::quant::prepare(graph.clone());
        refqsr::quant::Calibration::load(&output, &prepared)?
    } else {
        let b = bar(0, "{spinner} [{bar:30}] {pos}/{len} patch runs {elapsed}");
        let out = refqsr::calibrate::calibrate(ctx.clone(), &graph, images, &mut |done, total| {
            b.set_length(total as u64);
            b.set_position(done as u64);
        })?;
        b.finish_and_clear();
        for (path, e) in &out.skipped {
            eprintln!("refqsr: skipped {}: {e}", path.display());
        }
        skipped = out.skipped.len();
        out.calibration.save(&output)?;
        eprintln!(
            "refqsr: {} layers calibrated on {} patches of {} images; wrote {}",
            out.calibration.layers.len(),
            out.calibration.patches,
            out.calibration.images.len(),
            output.display()
        );
        out.calibration
    };
    let b = bar(0, "{spinner} [{bar:30}] {pos}/{len} RefQSR modes {elapsed}");
    let (params, fits) = refqsr::calibrate::calibrate_refqsr(
        ctx,
        &graph,
        &calibration,
        images,
        &mut |done, total| {
            b.set_length(total as u64);
            b.set_position(done as u64);
        },
    )?;
    b.finish_and_clear();
    for f in &fits {
        eprintln!(
            "refqsr: {} RefER on {} query patches: tap MSE vs fp32 {:.3e} -> {:.3e} ({:+.2} dB)",
            f.params.mode,
            f.pairs,
            f.mse[0],
            f.mse[1],
            10.0 * (f.mse[0] / f.mse[1].max(1e-30)).log10()
        );
    }
    let path = output
        .to_string_lossy()
        .strip_suffix(".calib.json")
        .map(|s| PathBuf::from(format!("{s}.refqsr.json")))
        .unwrap_or_else(|| output.with_extension("refqsr.json"));
    params.save(&path)?;
    eprintln!(
        "refqsr: ClustBlock ({} classes) and RefER for {} modes; wrote {}",
        params.clust.prototypes.len(),
        params.refer.len(),
        path.display()
    );
    Ok(if skipped == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn adapters() -> refqsr::Result<ExitCode> {
    let list = refqsr::gpu::describe_adapters();
    if list.is_empty() {
        return Err(refqsr::Error::NoAdapter);
    }
    for a in list {
        let i = &a.info;
        println!("{}: {}", a.index, i.name);
        println!(
            "   backend {:?}, type {:?}, vendor {:#06x}, device {:#06x}",
            i.backend, i.device_type, i.vendor, i.device
        );
        println!("   driver {} {}", i.driver, i.driver_info);
        println!(
            "   timestamps {}, shader-f16 {}, subgroups {}, max storage binding {} MiB, max buffer {} MiB",
            yes(a.timestamps),
            yes(a.shader_f16),
            yes(a.subgroups),
            a.max_storage_binding >> 20,
            a.max_buffer >> 20
        );
        println!("   packed int8 dot product: {}", a.int_dot);
    }
    Ok(ExitCode::SUCCESS)
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
