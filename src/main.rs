//! The `refqsr` command line: parses, calls the library, reports.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod ncnn_cli;

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
        /// Folder jobs: leave images whose output already exists (outputs appear only when
        /// complete), so a stopped job resumes.
        #[arg(long)]
        skip_existing: bool,
        /// Folder jobs: only shard I of N (0 <= I < N), by a hash of each image's path, so N
        /// machines (a Slurm array, a Kubernetes indexed Job) split a folder disjointly.
        #[arg(long, value_name = "I/N", value_parser = refqsr::job::parse_shard)]
        shard: Option<(usize, usize)>,
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
        /// Keep the existing calibration (the output file; for the shipped model without one,
        /// the shipped calibration) and fit only RefQSR's parameters.
        #[arg(long, conflicts_with = "bounds_only")]
        refqsr_only: bool,
        /// Fit the bounds and the precision floors but not RefQSR's parameters: what the
        /// uniform modes (w8a8, w4a4, ...) need, in about a third of the time.
        #[arg(long)]
        bounds_only: bool,
        /// Also write a sensitivity report (JSON; a table on stderr): for every quantized
        /// layer, the output's PSNR against fp32 with only its input, or only its weights,
        /// quantized at 8, 6 and 4 bits, and its input's range statistics. Without it,
        /// a fresh calibration measures only what the precision floors (the per-layer spec,
        /// written into the calibration file) need: about two thirds of the runs.
        #[arg(long, value_name = "FILE.json")]
        report: Option<PathBuf>,
        /// With --report: keep the existing calibration and fit nothing, only report.
        #[arg(long, requires = "report", conflicts_with = "bounds_only")]
        report_only: bool,
        /// Patches the report and the floors run on, spread over the images.
        #[arg(long, default_value_t = refqsr::calibrate::REPORT_PATCHES)]
        report_patches: usize,
        /// Optimizer steps of the reconstruction calibration, per mode of --recon-modes: the
        /// activation steps and weight clips learned against the fp32 model's output (0: no
        /// reconstruction).
        #[arg(long, default_value_t = refqsr::quant::recon::Options::default().steps)]
        recon_steps: usize,
        /// The modes whose activation steps (and weight clips) are learned, widest first:
        /// wXaY, or refqsr:H-L for its query path.
        #[arg(long, default_value = refqsr::calibrate::RECON_MODES)]
        recon_modes: String,
        /// Seed of the reconstruction's crop sampler.
        #[arg(long, default_value_t = refqsr::quant::recon::Options::default().seed)]
        seed: u64,
        /// Learn only the activation steps by reconstruction, not the weights' clipping.
        #[arg(long)]
        recon_no_clip: bool,
        /// Keep the existing calibration and only learn its activation steps by reconstruction.
        #[arg(long, conflicts_with_all = ["bounds_only", "refqsr_only", "report"])]
        recon_only: bool,
        /// The modes whose weight codes are chosen against each layer's input statistics
        /// (GPTQ), after the reconstruction; "none" to round every weight to nearest.
        #[arg(long, default_value = refqsr::calibrate::ROUND_MODES)]
        round_modes: String,
        /// Keep the existing calibration and only choose its weight codes.
        #[arg(long, conflicts_with_all = ["bounds_only", "refqsr_only", "report", "recon_only"])]
        round_only: bool,
        /// The modes whose weight codes are learned end to end against the fp32 model's
        /// output, after GPTQ (replacing GPTQ's codes where they measure better; codes an
        /// earlier mode learned end to end are kept); "none" to skip.
        #[arg(long, default_value = refqsr::calibrate::CODE_MODES)]
        code_modes: String,
        /// Optimizer steps of the learning of weight codes, per mode of --code-modes.
        #[arg(long, default_value_t = refqsr::quant::rounding::Options::default().steps)]
        code_steps: usize,
        /// Learning rate of the weight codes (code units per step).
        #[arg(long, default_value_t = refqsr::quant::rounding::Options::default().lr)]
        code_lr: f64,
        /// Keep the existing calibration and only learn its weight codes.
        #[arg(long, conflicts_with_all = ["bounds_only", "refqsr_only", "report", "recon_only", "round_only"])]
        codes_only: bool,
        /// Optimizer steps of RefER's training, per RefQSR mode (its two 3x3 convs learned
        /// against the fp32 model's output on the query patches).
        #[arg(long, default_value_t = refqsr::quant::refer::Options::default().steps)]
        refer_steps: usize,
        /// Channels between RefER's two convs (its cost grows with them).
        #[arg(long, default_value_t = refqsr::quant::refer::Options::default().hidden)]
        refer_hidden: usize,
    },
    /// List the GPU adapters wgpu can see.
    Adapters,
    /// Latency of whole upscales per adapter, mode and size, with a per-stage split,
    /// throughput against the adapter's measured peak and peak device memory; or, with
    /// --compare, one table across bench files (refqsr's and benches/ncnn_peer.py's).
    Bench {
        /// `all`, or an adapter index or name part as listed by `refqsr adapters` (default:
        /// the best one).
        #[arg(long)]
        adapter: Option<String>,
        /// Comma-separated modes: fp32, wXaY, refqsr:H-L; `all` for every shipped one.
        #[arg(long, default_value = "fp32,w8a8,w4a4,refqsr:8-4")]
        modes: String,
        /// Comma-separated input sizes, WxH (default: 256x256,960x540,1920x1080; 256x256 on
        /// software adapters).
        #[arg(long)]
        sizes: Option<String>,
        /// Timed runs per mode and size.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Untimed runs before them.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Write the results (format: BENCHMARKS.md).
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Draw the modes side by side per adapter (SVG).
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
        /// Measure nothing: read these bench files and print one table across them.
        #[arg(long, value_name = "FILE", num_args = 1..)]
        compare: Vec<PathBuf>,
        /// The image the inputs are cut from (centre crops, or resizes when smaller).
        #[arg(long, default_value = refqsr::bench::DEFAULT_IMAGE)]
        image: PathBuf,
        /// ncnn model: path to its .param (the .bin beside it). Default: shipped SPAN.
        #[arg(short, long)]
        model: Option<PathBuf>,
        /// Upscaling factor (picks the shipped model; must match -m).
        #[arg(short, long)]
        scale: Option<u32>,
        /// Time the stages with host clocks even where the adapter has GPU timestamps.
        #[arg(long)]
        host_clock: bool,
        /// Measure the adapter's peak again instead of reading the cached figure.
        #[arg(long)]
        fresh_peak: bool,
    },
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
        /// Comma-separated quantization bounds to compare: channel (searched per input
        /// channel where the calibration has them), searched (per tensor), minmax.
        #[arg(long, default_value = "channel")]
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
        /// RefQSR: cosine similarity below which a patch is its own reference (2 makes every
        /// patch a reference: what the patch cutting alone costs).
        #[arg(long)]
        tau: Option<f32>,
    },
}

fn main() -> ExitCode {
    // A first argument that is a flag means realesrgan-ncnn-vulkan's command line.
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| {
        let a = a.to_string_lossy();
        a.starts_with('-') && !matches!(a.as_ref(), "--help" | "--version" | "-V")
    }) {
        return ncnn_cli::main(args);
    }
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
            skip_existing,
            shard,
            quant,
        } => upscale(
            &input,
            &output,
            skip_existing,
            shard,
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
                    refqsr::quant::Bounds::default()
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
            bounds_only,
            report,
            report_only,
            report_patches,
            recon_steps,
            recon_modes,
            seed,
            recon_only,
            recon_no_clip,
            round_modes,
            round_only,
            code_modes,
            code_steps,
            code_lr,
            codes_only,
            refer_steps,
            refer_hidden,
        } => calibrate(
            &images,
            output,
            refqsr_only || report_only || recon_only || round_only || codes_only,
            bounds_only || recon_only || round_only || codes_only,
            report.map(|r| (r, report_only, report_patches)),
            Learning {
                recon: (!refqsr_only
                    && !report_only
                    && !round_only
                    && !codes_only
                    && recon_steps > 0)
                    .then(|| Recon {
                        modes: recon_modes,
                        opts: refqsr::quant::recon::Options {
                            steps: recon_steps,
                            seed,
                            weights: !recon_no_clip,
                            ..Default::default()
                        },
                    }),
                round: (!refqsr_only && !report_only && !codes_only && round_modes != "none")
                    .then_some(round_modes),
                codes: (!refqsr_only
                    && !report_only
                    && !recon_only
                    && !round_only
                    && code_modes != "none"
                    && code_steps > 0)
                    .then(|| Codes {
                        modes: code_modes,
                        opts: refqsr::quant::rounding::Options {
                            steps: code_steps,
                            lr: code_lr,
                            ..Default::default()
                        },
                    }),
                refer: refqsr::quant::refer::Options {
                    steps: refer_steps.max(1),
                    hidden: refer_hidden.max(1),
                    seed,
                    ..Default::default()
                },
            },
            Options {
                model,
                scale,
                adapter,
                ..Options::default()
            },
        ),
        Command::Adapters => adapters(),
        Command::Bench {
            adapter,
            modes,
            sizes,
            runs,
            warmup,
            json,
            plot,
            compare,
            image,
            model,
            scale,
            host_clock,
            fresh_peak,
        } => {
            if compare.is_empty() {
                bench(
                    &modes,
                    sizes.as_deref(),
                    json.as_deref(),
                    plot.as_deref(),
                    refqsr::bench::Config {
                        adapter,
                        runs,
                        warmup,
                        model,
                        scale,
                        image,
                        host_clock,
                        peak_cache: (!fresh_peak).then(refqsr::bench::peak::cache_dir),
                        ..Default::default()
                    },
                )
            } else {
                bench_compare(&compare, plot.as_deref())
            }
        }
        Command::Eval {
            hr,
            scale,
            modes,
            bounds,
            calibration,
            model,
            json,
            adapter,
            tau,
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
                tau,
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

/// A `progress(done, total)` callback that drives `b`.
fn track(b: &ProgressBar) -> impl FnMut(usize, usize) + '_ {
    |done, total| {
        b.set_length(total as u64);
        b.set_position(done as u64);
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

fn upscale(
    input: &Path,
    output: &Path,
    skip_existing: bool,
    shard: Option<(usize, usize)>,
    opts: Options,
) -> refqsr::Result<ExitCode> {
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
    let job = refqsr::job::Job {
        skip_existing,
        shard,
        ..refqsr::job::Job::new(input, output)
    };
    let folder = input.is_dir();
    let b = if folder {
        let n = refqsr::job::items(&job)?.len() as u64;
        bar(n, "{spinner} [{bar:30}] {pos}/{len} images {elapsed} {msg}")
    } else {
        let b = bar(0, "{spinner} {msg} [{bar:30}] {pos}/{len} tiles {elapsed}");
        b.set_message(input.display().to_string());
        b
    };
    let summary = refqsr::job::run(&job, &[&up], &Bar { bar: &b, folder })?;
    b.finish_and_clear();
    if let (false, Some(r)) = (folder, up.last_refqsr_run()) {
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
    if !folder {
        return match summary.failed.into_iter().next() {
            Some((_, e)) => Err(e),
            None => {
                eprintln!("refqsr: wrote {}", output.display());
                Ok(ExitCode::SUCCESS)
            }
        };
    }
    eprintln!("refqsr: {} into {}", summary.report(), output.display());
    Ok(if summary.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `refqsr upscale`'s progress: tiles of one image, or images of a folder.
struct Bar<'a> {
    bar: &'a ProgressBar,
    folder: bool,
}

impl refqsr::job::Events for Bar<'_> {
    fn progress(&self, item: &refqsr::job::Item, done: usize, total: usize) {
        if self.folder {
            if done == 0 {
                self.bar.set_message(item.src.display().to_string());
            }
        } else {
            self.bar.set_length(total as u64);
            self.bar.set_position(done as u64);
        }
    }

    fn note(&self, item: &refqsr::job::Item, message: &str) {
        self.bar
            .suspend(|| eprintln!("refqsr: note: {}: {message}", item.src.display()));
    }

    fn finished(&self, _item: &refqsr::job::Item, result: &refqsr::Result<()>) {
        if self.folder {
            if let Err(e) = result {
                self.bar.suspend(|| eprintln!("refqsr: error: {e}"));
            }
            self.bar.inc(1);
        }
    }
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
    let report = refqsr::eval::evaluate(&opts, hr, &modes, &bounds, &mut track(&b))?;
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
                    "seam_db": r.seam_db,
                    "worst_vs_fp32_db": r.worst_vs_fp32.as_ref().map(|w| -w.0),
                    "worst_image": r.worst_vs_fp32.as_ref().map(|w| &w.1),
                    "per_image_psnr_y": r.per_image,
                    "psnr_y_vs_fp32_output": r.vs_fp32_y,
                })
            })
            .collect();
        let text = serde_json::to_string_pretty(&serde_json::json!({
            "model": report.model,
            "scale": report.scale,
            "adapter": report.adapter,
            "images": report.images,
            "rows": rows,
        }))
        .expect("JSON of plain values");
        std::fs::write(path, text).map_err(|e| refqsr::Error::io(path, e))?;
    }
    Ok(if report.skipped.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Progress of a stage that runs mode after mode: the mode, then its steps done.
fn per_mode(b: &ProgressBar) -> impl FnMut(refqsr::quant::Mode, usize, usize) + '_ {
    move |m, d, t| {
        b.set_message(m.to_string());
        b.set_length(t as u64);
        b.set_position(d as u64);
    }
}

/// What `calibrate` learns after the bounds: the reconstruction's steps and clips, then the
/// weight codes of these modes.
struct Learning {
    recon: Option<Recon>,
    round: Option<String>,
    codes: Option<Codes>,
    /// How RefER is trained for each RefQSR mode.
    refer: refqsr::quant::refer::Options,
}

/// Which modes' weight codes `calibrate` learns end to end, and how.
struct Codes {
    modes: String,
    opts: refqsr::quant::rounding::Options,
}

/// What `calibrate` learns by reconstruction.
struct Recon {
    modes: String,
    opts: refqsr::quant::recon::Options,
}

fn calibrate(
    images: &Path,
    output: Option<PathBuf>,
    refqsr_only: bool,
    bounds_only: bool,
    report: Option<(PathBuf, bool, usize)>,
    learning: Learning,
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
    let mut calibration = if refqsr_only {
        let prepared = refqsr::quant::prepare(graph.clone());
        if output.exists() || opts.model.is_some() {
            refqsr::quant::Calibration::load(&output, &prepared)?
        } else {
            // the shipped model's calibration, compiled in, is what there is to refit from
            refqsr::upscaler::load_calibration(&opts, &prepared)?
        }
    } else {
        let b = bar(0, "{spinner} [{bar:30}] {pos}/{len} patch runs {elapsed}");
        let out = refqsr::calibrate::calibrate(ctx.clone(), &graph, images, &mut track(&b))?;
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
    // The floors come with every fresh calibration; --report also measures every other width
    // and the whole modes, and writes them all.
    let floors = match report {
        Some((path, only, patches)) => Some((Some(path), only, patches)),
        None if !refqsr_only => Some((None, false, refqsr::calibrate::REPORT_PATCHES)),
        None => None,
    };
    let measured_floors = floors.is_some();
    if let Some((path, only, patches)) = floors {
        let b = bar(
            0,
            "{spinner} [{bar:30}] {pos}/{len} sensitivity runs {elapsed}",
        );
        let r = refqsr::calibrate::sensitivity(
            ctx.clone(),
            &graph,
            &calibration,
            images,
            patches,
            path.is_some(),
            &mut track(&b),
        )?;
        b.finish_and_clear();
        r.apply(&mut calibration);
        calibration.save(&output)?;
        match path {
            Some(path) => {
                r.save(&path)?;
                eprintln!(
                    "refqsr: sensitivity of {} layers on {} patches of {} images (PSNR against the fp32 output); wrote {}, and the floors to {}\n{}",
                    r.layers.len(),
                    r.patches,
                    r.images,
                    path.display(),
                    output.display(),
                    r.markdown()
                );
            }
            None => eprintln!(
                "refqsr: precision floors of {} layers on {} patches of {} images: {} kept wider than a mode may ask ({} in f32); wrote {} (`--report FILE.json` measures every width)",
                r.layers.len(),
                r.patches,
                r.images,
                calibration.layers.iter().filter(|l| l.floor.is_some()).count(),
                calibration
                    .layers
                    .iter()
                    .filter(|l| l.floor.is_some_and(|f| f[0] == refqsr::quant::calib::FLOAT))
                    .count(),
                output.display()
            ),
        }
        if only {
            return Ok(ExitCode::SUCCESS);
        }
    }
    if !measured_floors && calibration.layers.iter().all(|l| l.floor.is_none()) {
        // without floors the low-bit modes lose far more: on SPAN x4, w4a4's reconstruction
        // crops measured 31.4 dB against 41.8 with the report's floors
        eprintln!(
            "refqsr: {} has no precision floors, so every layer runs at the bits a mode asks for; `--report FILE.json` measures each layer alone and keeps those that cannot take few bits wider (on SPAN x4 worth 10 dB at w4a4)",
            output.display()
        );
    }
    if let Some(r) = learning.recon {
        let modes = refqsr::quant::Mode::parse_list(&r.modes)?;
        let b = bar(
            0,
            "{spinner} [{bar:30}] {pos}/{len} reconstruction steps, {msg} {elapsed}",
        );
        let outcomes = refqsr::calibrate::reconstruct(
            &graph,
            &mut calibration,
            images,
            &modes,
            &r.opts,
            &mut per_mode(&b),
        )?;
        b.finish_and_clear();
        for o in &outcomes {
            if o.layers == 0 {
                eprintln!(
                    "refqsr: {}: nothing left to learn (every integer layer runs at widths an earlier mode of this run learned)",
                    o.mode
                );
                continue;
            }
            eprintln!(
                "refqsr: {} reconstruction of {} layers: held-out PSNR vs fp32 {:.2} -> {:.2} dB, {}",
                o.mode,
                o.layers,
                o.psnr[0],
                o.psnr[1],
                if o.kept { "kept" } else { "previous steps kept" }
            );
        }
        calibration.save(&output)?;
        eprintln!("refqsr: wrote {}", output.display());
    }
    if let Some(modes) = learning.round {
        let modes = refqsr::quant::Mode::parse_list(&modes)?;
        let b = bar(
            0,
            "{spinner} [{bar:30}] {pos}/{len} layers rounded, {msg} {elapsed}",
        );
        let outcomes = refqsr::calibrate::round_weights(
            &graph,
            &mut calibration,
            images,
            &modes,
            &Default::default(),
            &mut per_mode(&b),
        )?;
        b.finish_and_clear();
        for o in &outcomes {
            eprintln!(
                "refqsr: {} weight codes of {} layers: held-out PSNR vs fp32 {:.2} -> {:.2} dB, {}",
                o.mode,
                o.layers,
                o.psnr[0],
                o.psnr[1],
                if o.kept {
                    "kept"
                } else {
                    "rounding to nearest kept"
                }
            );
        }
        calibration.save(&output)?;
        eprintln!("refqsr: wrote {}", output.display());
    }
    if let Some(c) = learning.codes {
        let modes = refqsr::quant::Mode::parse_list(&c.modes)?;
        let b = bar(
            0,
            "{spinner} [{bar:30}] {pos}/{len} weight-code steps, {msg} {elapsed}",
        );
        let outcomes = refqsr::calibrate::learn_codes(
            &graph,
            &mut calibration,
            images,
            &modes,
            &c.opts,
            &mut per_mode(&b),
        )?;
        b.finish_and_clear();
        for o in &outcomes {
            if o.layers == 0 {
                eprintln!("refqsr: {}: every layer already has weight codes", o.mode);
                continue;
            }
            eprintln!(
                "refqsr: {} learned weight codes of {} layers ({:.1}% moved): held-out PSNR vs fp32 {:.2} -> {:.2} dB, {}",
                o.mode,
                o.layers,
                100.0 * o.moved,
                o.psnr[0],
                o.psnr[1],
                if o.kept { "kept" } else { "previous codes kept" }
            );
        }
        calibration.save(&output)?;
        eprintln!("refqsr: wrote {}", output.display());
    }
    let done = if skipped == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    if bounds_only {
        return Ok(done);
    }
    let b = bar(
        0,
        "{spinner} [{bar:30}] {pos}/{len} RefER training and judging steps {elapsed}",
    );
    let (params, fits) = refqsr::calibrate::calibrate_refqsr(
        ctx,
        &graph,
        &calibration,
        images,
        &learning.refer,
        &mut track(&b),
    )?;
    b.finish_and_clear();
    for f in &fits {
        eprintln!(
            "refqsr: {} RefER trained on {} query patches: output error vs fp32, relative to each image's own without RefER, {:.3} -> {:.3} ({:+.2} dB)",
            f.params.mode,
            f.pairs,
            f.mse[0],
            f.mse[1],
            10.0 * (f.mse[0] / f.mse[1].max(1e-30)).log10()
        );
        let tried: Vec<String> = refqsr::refqsr::GAINS
            .iter()
            .zip(&f.judged)
            .map(|(g, db)| format!("{g} {db:.3}"))
            .collect();
        eprintln!(
            "refqsr: {} RefER gain {} (output PSNR-Y vs fp32 on {} images, dB, by gain, 0.25 and 0.75 read off each image's parabola: {})",
            f.params.mode,
            f.params.gain,
            if f.held_out {
                "held-out"
            } else {
                "the fit's own"
            },
            tried.join(", ")
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
    Ok(done)
}

fn bench(
    modes: &str,
    sizes: Option<&str>,
    json: Option<&Path>,
    plot: Option<&Path>,
    mut cfg: refqsr::bench::Config,
) -> refqsr::Result<ExitCode> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    cfg.modes = if modes.trim() == "all" {
        refqsr::quant::Mode::parse_list(
            "fp32,w8a8,w6a4,w4a4,w4a3,refqsr:8-5,refqsr:8-4,refqsr:8-3,refqsr:4-3,refqsr:4-2",
        )?
    } else {
        refqsr::quant::Mode::parse_list(modes)?
    };
    cfg.sizes = sizes.map(refqsr::bench::parse_sizes).transpose()?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // The first Ctrl-C ends the bench after the run in progress; a second one quits.
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\nrefqsr: stopping after the run in progress (Ctrl-C again to quit now)");
        });
    }
    let b = bar(0, "{spinner} [{bar:30}] {pos}/{len} runs {elapsed} {msg}");
    let mut skipped = 0;
    let mut began = std::time::Instant::now();
    let (mut measuring, mut runs_done, mut last_line) = (String::new(), 0u64, began);
    let file = refqsr::bench::run(
        &cfg,
        &mut |e| {
            match e {
            refqsr::bench::Event::Total(n) => b.set_length(n),
            refqsr::bench::Event::Adapter {
                ctx,
                peak,
                peak_cached,
                sizes_note,
            } => b.suspend(|| {
                eprintln!("refqsr: bench on {}", ctx.describe());
                eprintln!("refqsr: packed int8 dot product: {}", ctx.int_dot);
                if let Some(p) = peak {
                    eprintln!(
                        "refqsr: measured peak: fp32 FMA {:.1} GFLOPS, packed int8 dot {:.1} GOPS{}",
                        p.fp32_gflops,
                        p.int8_gops,
                        if peak_cached { " (cached)" } else { "" }
                    );
                }
                if let Some(n) = sizes_note {
                    eprintln!("refqsr: {n}");
                }
            }),
            refqsr::bench::Event::Begin(what) => {
                began = std::time::Instant::now();
                (measuring, runs_done, last_line) = (what.clone(), 0, began);
                b.set_message(what)
            }
            refqsr::bench::Event::Tick => {
                b.inc(1);
                runs_done += 1;
                // Without a terminal the bar is hidden: a plain line at most every second
                // tells logs (and a test waiting to interrupt) that runs are being measured.
                if b.is_hidden() && last_line.elapsed().as_secs_f64() >= 1.0 {
                    last_line = std::time::Instant::now();
                    eprintln!("refqsr: {measuring}: {runs_done} run(s) done");
                }
            }
            refqsr::bench::Event::Done(r) => b.suspend(|| {
                eprintln!(
                    "refqsr: {} {}x{}: median {:.1} ms (min {:.1}, max {:.1}, {} runs); {:.1} s with set-up, warm-up and profile",
                    r.mode,
                    r.width,
                    r.height,
                    r.median_ms,
                    r.min_ms,
                    r.max_ms,
                    r.runs,
                    began.elapsed().as_secs_f64()
                )
            }),
            refqsr::bench::Event::Skipped(why) => {
                skipped += 1;
                b.suspend(|| eprintln!("refqsr: skipped: {why}"))
            }
            refqsr::bench::Event::Warning(why) => b.suspend(|| eprintln!("refqsr: warning: {why}")),
        }
        },
        &stop,
    )?;
    b.finish_and_clear();
    report(&file.results, plot)?;
    if file.partial {
        eprintln!("refqsr: interrupted: the results above are what was measured so far");
    }
    if let Some(path) = json {
        refqsr::bench::save(&file, path)?;
        eprintln!("refqsr: wrote {}", path.display());
    }
    Ok(if file.partial {
        // the shell's code for "ended by Ctrl-C"
        ExitCode::from(130)
    } else if skipped > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Print the latency and stage tables, and draw the plot.
fn report(records: &[refqsr::bench::Record], plot: Option<&Path>) -> refqsr::Result<()> {
    if records.is_empty() {
        eprintln!("refqsr: nothing was measured");
        return Ok(());
    }
    print!("{}", refqsr::bench::record::latency_table(records));
    let stages = refqsr::bench::record::stage_table(records);
    if !stages.is_empty() {
        println!("\nStages of one profiled run, ms:\n\n{stages}");
    }
    if let Some(path) = plot {
        refqsr::bench::plot::plot(records, path)?;
        eprintln!("refqsr: wrote {}", path.display());
    }
    Ok(())
}

fn bench_compare(files: &[PathBuf], plot: Option<&Path>) -> refqsr::Result<ExitCode> {
    let (records, skipped) = refqsr::bench::compare(files);
    for why in &skipped {
        eprintln!("refqsr: skipped {why}");
    }
    if records.is_empty() {
        return Err(refqsr::Error::Invalid("no bench file could be read".into()));
    }
    report(&records, plot)?;
    Ok(if skipped.is_empty() {
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
