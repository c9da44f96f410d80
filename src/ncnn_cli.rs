//! realesrgan-ncnn-vulkan's and upscayl-bin's command line (`refqsr -i IN -o OUT ...`), so a
//! GUI that spawns either can spawn refqsr instead. Part of the binary only: it parses their
//! flags into a [`refqsr::job::Job`] and reports in their words; the library does the work,
//! on the same path as `refqsr upscale`.
//!
//! What their GUIs parse on stderr: a `NN.NN%` line per step of each image (each line in one
//! write, from `0.00%` to `100.00%`), a final line containing "Successful", and "Error" in
//! every failure (Upscayl kills the process on "Error" or "failed"). Normal output never holds
//! "Error", "failed", "read " or "write ". Unlike upscayl-bin, any failed image, a missing
//! model included, makes the exit status non-zero.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use refqsr::job::{Events, Item, Job, Size};
use refqsr::{Options, Upscaler};

pub const USAGE: &str = "\
Usage: refqsr -i infile -o outfile [options]...
       refqsr upscale|bench|eval|calibrate|adapters ... (refqsr's own commands; `refqsr help`)

  -h                   show this help
  -i input-path        input image path (jpg/png/webp) or directory
  -o output-path       output image path (jpg/png/webp) or directory
  -z model-scale       scale of the model (2 or 4; default: the model's own)
  -s output-scale      output scale; resampled from the model's output when it differs (default=model)
  -r resize            resize output to WxH
  -w width             resize output to a width, keeping the aspect ratio
  -c compress          output compression, 0 (best picture, default) to 100 (smallest file)
  -t tile-size         tile size (>=32/0=auto, default=0) can be 0,0,0 for multi-gpu
  -m model-path        folder of ncnn models (default=models)
  -n model-name        model name (NAME-xS.param or NAME.param in the folder; default: refqsr's shipped SPAN)
  -g gpu-id            gpu device to use (default=auto) can be 0,1,2 for multi-gpu; -1 = a CPU (software) adapter
  -j load:proc:save    thread count for load/proc/save (default=1:2:2) can be 1:2,2,2:2 for multi-gpu
  -x                   enable tta mode (8 flips and transposes averaged)
  -f format            output image format (jpg/png/webp, default=ext/png)
  -v                   verbose output
  --mode MODE          refqsr's precision: fp32 (default), wXaY, refqsr:H-L
";

#[derive(Parser, Debug)]
#[command(
    name = "refqsr",
    disable_help_flag = true,
    disable_version_flag = true,
    no_binary_name = true
)]
struct Args {
    #[arg(short = 'i')]
    input: Option<PathBuf>,
    #[arg(short = 'o')]
    output: Option<PathBuf>,
    #[arg(short = 'z')]
    model_scale: Option<String>,
    #[arg(short = 's')]
    scale: Option<String>,
    #[arg(short = 'r')]
    resize: Option<String>,
    #[arg(short = 'w')]
    width: Option<String>,
    #[arg(short = 'c')]
    compression: Option<String>,
    #[arg(short = 't')]
    tile: Option<String>,
    #[arg(short = 'm')]
    models: Option<PathBuf>,
    #[arg(short = 'n')]
    name: Option<String>,
    #[arg(short = 'g', allow_hyphen_values = true)]
    gpu: Option<String>,
    #[arg(short = 'j')]
    threads: Option<String>,
    #[arg(short = 'x')]
    tta: bool,
    #[arg(short = 'f')]
    format: Option<String>,
    #[arg(short = 'v')]
    verbose: bool,
    #[arg(short = 'h')]
    help: bool,
    #[arg(long)]
    mode: Option<refqsr::quant::Mode>,
}

/// Write `s` to stderr in one write, as GUIs read it line by line.
fn say(s: &str) {
    let _ = std::io::stderr().lock().write_all(s.as_bytes());
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    say(&format!("Error: {message}\n"));
    ExitCode::FAILURE
}

/// Run the command line `args` (without the program name).
pub fn main(args: Vec<std::ffi::OsString>) -> ExitCode {
    let a = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let msg = e.to_string();
            let first = msg
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ");
            say(&format!("Error: {first}\n{USAGE}"));
            return ExitCode::FAILURE;
        }
    };
    if a.help {
        say(USAGE);
        return ExitCode::SUCCESS;
    }
    match run(a) {
        Ok(code) => code,
        Err(e) => fail(e),
    }
}

fn positive(flag: &str, v: &str, what: &str) -> Result<u32, String> {
    match v.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "invalid {what} `{v}` (-{flag}): a positive whole number"
        )),
    }
}

fn run(a: Args) -> Result<ExitCode, String> {
    let (Some(input), Some(output)) = (a.input.clone(), a.output.clone()) else {
        say(&format!("Error: -i and -o are required\n{USAGE}"));
        return Ok(ExitCode::FAILURE);
    };
    let scale = a
        .scale
        .as_deref()
        .map(|s| positive("s", s, "scale"))
        .transpose()?;
    if scale.is_some_and(|s| s > 16) {
        return Err(format!(
            "invalid scale `{}` (-s): 1 to 16",
            scale.unwrap_or(0)
        ));
    }
    let model_scale = a
        .model_scale
        .as_deref()
        .map(|s| positive("z", s, "model scale"))
        .transpose()?;
    let format = match a.format.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => None,
        Some("png") => Some(image::ImageFormat::Png),
        Some("jpg") | Some("jpeg") => Some(image::ImageFormat::Jpeg),
        Some("webp") => Some(image::ImageFormat::WebP),
        Some(_) => {
            return Err(format!(
                "invalid format `{}` (-f): png, jpg or webp",
                a.format.unwrap_or_default()
            ))
        }
    };
    let compression = match a.compression.as_deref() {
        None => 0,
        Some(c) => match c.trim().parse::<u8>() {
            Ok(v) if v <= 100 => v,
            _ => return Err(format!("invalid compression `{c}` (-c): 0 to 100")),
        },
    };
    let size = if let Some(r) = &a.resize {
        let (w, h) = r
            .split_once(['x', 'X'])
            .ok_or_else(|| format!("invalid resize `{r}` (-r): WxH, for example 1920x1080"))?;
        Size::Exact(positive("r", w, "width")?, positive("r", h, "height")?)
    } else if let Some(w) = &a.width {
        Size::Width(positive("w", w, "width")?)
    } else {
        scale.map_or(Size::Model, Size::Scale)
    };

    // GPUs: ids as `refqsr adapters` numbers them; -1 is the first software adapter.
    let gpus: Vec<Option<usize>> = match a.gpu.as_deref() {
        None | Some("auto") => vec![None],
        // enumerated only when ids are given: the default run opens the best adapter once
        Some(list) => {
            let adapters = refqsr::gpu::describe_adapters();
            list.split(',')
                .map(|g| {
                    let g = g.trim();
                    let id = match g.parse::<i64>() {
                        Ok(-1) => adapters
                            .iter()
                            .position(|r| r.info.device_type == wgpu::DeviceType::Cpu)
                            .ok_or_else(|| "invalid GPU device -1: no CPU adapter".to_string())?
                            as i64,
                        Ok(n) => n,
                        Err(_) => return Err(format!("invalid GPU device `{g}` (-g)")),
                    };
                    if id < 0 || id as usize >= adapters.len() {
                        let list: Vec<String> = adapters
                            .iter()
                            .map(|r| format!("{}: {}", r.index, r.info.name))
                            .collect();
                        return Err(format!(
                            "invalid GPU device {g} (available: {})",
                            if list.is_empty() {
                                "none".into()
                            } else {
                                list.join(", ")
                            }
                        ));
                    }
                    Ok(Some(id as usize))
                })
                .collect::<Result<_, _>>()?
        }
    };
    let tiles: Vec<Option<usize>> = match a.tile.as_deref() {
        None => vec![None; gpus.len()],
        Some(list) => {
            let t: Vec<Option<usize>> = list
                .split(',')
                .map(|t| match t.trim().parse::<usize>() {
                    Ok(0) => Ok(None),
                    Ok(n) if n >= 32 => Ok(Some(n)),
                    _ => Err(format!(
                        "invalid tile size `{t}` (-t): 0 (auto) or at least 32"
                    )),
                })
                .collect::<Result<_, _>>()?;
            match t.len() {
                1 => vec![t[0]; gpus.len()],
                n if n == gpus.len() => t,
                n => {
                    return Err(format!(
                        "-t gives {n} tile sizes for {} GPUs: give one, or one per GPU",
                        gpus.len()
                    ))
                }
            }
        }
    };
    let (load_threads, save_threads) = match a.threads.as_deref() {
        None => (1, 2),
        Some(j) => {
            let parts: Vec<&str> = j.split(':').collect();
            let bad =
                || format!("invalid thread count `{j}` (-j): load:proc:save, for example 1:2:2");
            let [l, p, s] = parts[..] else {
                return Err(bad());
            };
            let n = |v: &str| v.trim().parse::<usize>().ok().filter(|&n| n > 0);
            if p.split(',').any(|v| n(v).is_none()) {
                return Err(bad());
            }
            (n(l).ok_or_else(bad)?, n(s).ok_or_else(bad)?)
        }
    };

    // The model: the shipped SPAN unless -m or -n names one.
    let model = if a.models.is_some() || a.name.is_some() {
        let dir = a.models.clone().unwrap_or_else(|| PathBuf::from("models"));
        let name = a.name.as_deref().unwrap_or("realesrgan-x4plus");
        let lookup = model_scale.or(scale).unwrap_or(4);
        Some(refqsr::job::find_model(&dir, name, lookup).map_err(|e| e.to_string())?)
    } else {
        None
    };
    // The shipped models are x4 and x2: take the one -z, or else -s, asks for.
    let pick = match (&model, model_scale, scale) {
        (Some(_), z, _) => z,
        (None, Some(z), _) => Some(z),
        (None, None, Some(2)) => Some(2),
        (None, None, _) => Some(4),
    };
    let mut upscalers = Vec::new();
    for (gpu, tile) in gpus.iter().zip(&tiles) {
        let opts = Options {
            model: model.clone(),
            scale: pick,
            tile: *tile,
            adapter: gpu.map(|g| g.to_string()),
            mode: a.mode.unwrap_or_default(),
            ..Options::default()
        };
        let up = Upscaler::new(&opts).map_err(|e| match e {
            refqsr::Error::Invalid(m) if model_scale.is_some() && m.contains("upscales by") => {
                format!("{m} (-z)")
            }
            e => e.to_string(),
        })?;
        if let Some(why) = up.fallback() {
            say(&format!("refqsr: warning: {why}\n"));
        }
        say(&format!(
            "[{}] refqsr: {} x{} {} on {}\n",
            gpu.map_or("auto".to_string(), |g| g.to_string()),
            up.graph().name,
            up.scale(),
            up.mode(),
            up.context().describe()
        ));
        upscalers.push(up);
    }
    if a.verbose && a.threads.is_some() {
        say("refqsr: -j: one processing thread per GPU; load and save threads as given\n");
    }
    let job = Job {
        input,
        output,
        format,
        compression: refqsr::imageio::Compression(compression),
        size,
        tta: a.tta,
        load_threads,
        save_threads,
        skip_existing: false,
        shard: None,
    };
    let refs: Vec<&Upscaler> = upscalers.iter().collect();
    let events = Report { verbose: a.verbose };
    let summary = refqsr::job::run(&job, &refs, &events).map_err(|e| e.to_string())?;
    if !summary.failed.is_empty() {
        say(&format!(
            "Error: {} of {} images could not be upscaled\n",
            summary.failed.len(),
            summary.failed.len() + summary.written.len()
        ));
        return Ok(ExitCode::FAILURE);
    }
    if summary.written.is_empty() {
        return Err(format!(
            "no images (png, jpg, webp) in {}",
            job.input.display()
        ));
    }
    say(&format!(
        "Upscaled Successfully: {} image(s)\n",
        summary.written.len()
    ));
    Ok(ExitCode::SUCCESS)
}

/// Their stderr: progress lines, resizing notes, errors.
struct Report {
    verbose: bool,
}

impl Events for Report {
    fn progress(&self, _item: &Item, done: usize, total: usize) {
        let pct = if total == 0 {
            100.0
        } else {
            100.0 * done as f64 / total as f64
        };
        say(&format!("{pct:.2}%\n"));
    }

    fn note(&self, item: &Item, message: &str) {
        say(&format!("refqsr: {}: {message}\n", item.src.display()));
    }

    fn resizing(&self, _item: &Item, from: (u32, u32), to: (u32, u32)) {
        say(&format!(
            "Resizing image from {}x{} to {}x{}\n",
            from.0, from.1, to.0, to.1
        ));
    }

    fn finished(&self, item: &Item, result: &refqsr::Result<()>) {
        match result {
            Ok(()) if self.verbose => say(&format!(
                "{} -> {} done\n",
                item.src.display(),
                item.dst.display()
            )),
            Ok(()) => {}
            Err(e) => say(&format!("Error: {e}\n")),
        }
    }
}
