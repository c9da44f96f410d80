//! `refqsr bench`: whole-upscale latency per adapter, mode and size, with a per-stage split,
//! effective throughput against the adapter's measured peak, and peak device memory; the
//! results file format (`refqsr-bench-1`, see BENCHMARKS.md), `--compare` and `--plot`.
//!
//! Each (adapter, mode, size) gets a fresh [`Upscaler`] (so its memory is its own), `warmup`
//! untimed runs, `runs` timed ones (host image in, host image out: upload, every kernel,
//! download, tiling and merging), then one profiled run for the stage split.

pub mod peak;
pub mod plot;
pub mod record;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use image::Rgb32FImage;

use crate::error::{Error, Result};
use crate::gpu::{Context, IntDot};
use crate::model::Graph;
use crate::profile::{Profiler, Stage};
use crate::quant::Mode;
use crate::upscaler::{load_graph, Options, Upscaler};
pub use peak::Peak;
pub use record::{AdapterRecord, BenchFile, Record, StageSplit, SCHEMA};

/// Sizes measured on hardware adapters when none are given.
pub const DEFAULT_SIZES: [(u32, u32); 3] = [(256, 256), (960, 540), (1920, 1080)];
/// Sizes measured on software adapters (lavapipe, WARP, SwiftShader) when none are given: the
/// larger ones take minutes per run there.
pub const SOFTWARE_SIZES: [(u32, u32); 1] = [(256, 256)];
/// The image the inputs are cut from when none is given.
pub const DEFAULT_IMAGE: &str = "assets/images/astronaut.png";

/// What to measure.
#[derive(Debug, Clone)]
pub struct Config {
    /// `None`: the best adapter; `all`; or an index or name part.
    pub adapter: Option<String>,
    pub modes: Vec<Mode>,
    /// `None`: [`DEFAULT_SIZES`], or [`SOFTWARE_SIZES`] on software adapters.
    pub sizes: Option<Vec<(u32, u32)>>,
    pub runs: usize,
    pub warmup: usize,
    pub model: Option<PathBuf>,
    pub scale: Option<u32>,
    /// Inputs are centre crops of this image, or bicubic resizes where it is smaller.
    pub image: PathBuf,
    /// Where the adapter's peak is cached; `None` measures it afresh.
    pub peak_cache: Option<PathBuf>,
    /// Time the stages with host clocks even where GPU timestamps exist.
    pub host_clock: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            adapter: None,
            modes: vec![Mode::Fp32],
            sizes: None,
            runs: 5,
            warmup: 1,
            model: None,
            scale: None,
            image: PathBuf::from(DEFAULT_IMAGE),
            peak_cache: Some(peak::cache_dir()),
            host_clock: false,
        }
    }
}

/// What the bench reports while it runs.
pub enum Event<'a> {
    /// Work units (runs) in all, once the adapters are open.
    Total(u64),
    /// Starting on an adapter.
    Adapter {
        ctx: &'a Context,
        peak: Option<Peak>,
        peak_cached: bool,
        sizes_note: Option<String>,
    },
    /// Starting a (mode, size).
    Begin(String),
    /// One run done.
    Tick,
    /// A measurement that is complete (or cut short by a stop).
    Done(&'a Record),
    /// Something that could not be measured, and why; the bench goes on.
    Skipped(String),
    /// Measured, but not as asked (an integer mode that fell back to fp32).
    Warning(String),
}

/// Parse `WxH[,WxH...]`; a zero side is an error.
pub fn parse_sizes(text: &str) -> Result<Vec<(u32, u32)>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let bad = || {
                Error::Invalid(format!(
                    "size `{s}`: expected WIDTHxHEIGHT in pixels, e.g. 256x256"
                ))
            };
            let (w, h) = s
                .to_lowercase()
                .split_once('x')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(bad)?;
            let (w, h): (u32, u32) = (w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?);
            if w == 0 || h == 0 {
                return Err(Error::Invalid(format!(
                    "size `{s}`: an image needs at least one pixel each way"
                )));
            }
            Ok((w, h))
        })
        .collect::<Result<Vec<_>>>()
        .and_then(|v| {
            if v.is_empty() {
                Err(Error::Invalid("no sizes given".into()))
            } else {
                Ok(v)
            }
        })
}

/// Multiply-accumulates of the network on a `width` x `height` image (the image itself, not
/// the tiles' overlap): the work "effective" throughput counts.
pub fn macs(g: &Graph, width: u32, height: u32) -> f64 {
    g.nodes
        .iter()
        .filter_map(|n| crate::quant::accounting::conv_macs(g, n, width as f64, height as f64))
        .sum()
}

/// The bench input of `w` x `h`: the centre crop of `img`, or a bicubic resize where `img` is
/// smaller (the policy of `benches/ncnn_peer.py`, so both tools see the same pixels).
pub fn input_image(img: &Rgb32FImage, w: u32, h: u32) -> Rgb32FImage {
    if img.width() >= w && img.height() >= h {
        let (x, y) = ((img.width() - w) / 2, (img.height() - h) / 2);
        image::imageops::crop_imm(img, x, y, w, h).to_image()
    } else {
        image::imageops::resize(img, w, h, image::imageops::FilterType::CatmullRom)
    }
}

/// The current time, RFC 3339 in UTC.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// What a record says about the adapter.
pub fn adapter_record(ctx: &Context) -> AdapterRecord {
    let i = &ctx.info;
    AdapterRecord {
        name: i.name.clone(),
        backend: format!("{:?}", i.backend),
        vendor: Some(format!("{:#x}", i.vendor)),
        device_type: Some(format!("{:?}", i.device_type)),
        driver: Some(i.driver.clone()),
        driver_info: Some(i.driver_info.clone()),
        int_dot: Some(
            match ctx.int_dot {
                IntDot::Native => "native",
                IntDot::Emulated => "emulated",
                IntDot::Unknown => "unknown",
            }
            .into(),
        ),
        threads: None,
    }
}

/// Check a size against the adapter: the output must fit in one image (texture) of the
/// adapter, which is what a viewer or a GPU encoder would put it in.
fn check_size(ctx: &Context, (w, h): (u32, u32), scale: u32) -> Result<()> {
    let max = ctx.limits.max_texture_dimension_2d;
    let (ow, oh) = (w as u64 * scale as u64, h as u64 * scale as u64);
    if ow > max as u64 || oh > max as u64 {
        return Err(Error::Invalid(format!(
            "size {w}x{h}: the x{scale} output, {ow}x{oh}, is beyond {}'s largest image side of {max} pixels",
            ctx.info.name
        )));
    }
    Ok(())
}

/// Run the bench. `stop` (set by Ctrl-C) ends it after the run in progress; what was measured
/// so far comes back with `partial` set.
pub fn run(cfg: &Config, events: &mut dyn FnMut(Event), stop: &AtomicBool) -> Result<BenchFile> {
    if cfg.runs == 0 {
        return Err(Error::Invalid("--runs must be at least 1".into()));
    }
    if cfg.modes.is_empty() {
        return Err(Error::Invalid("no modes given".into()));
    }
    let graph = load_graph(cfg.model.as_deref(), cfg.scale)?;
    let scale = graph.scale();
    let source = crate::imageio::read(&cfg.image)?.to_rgb32f();
    let mut contexts = Vec::new();
    for c in Context::open_all(cfg.adapter.as_deref())? {
        match c {
            Ok(ctx) => contexts.push(ctx),
            Err(e) => events(Event::Skipped(format!("adapter: {e}"))),
        }
    }
    let sizes_for = |ctx: &Context| -> (Vec<(u32, u32)>, Option<String>) {
        match &cfg.sizes {
            Some(s) => (s.clone(), None),
            None if ctx.info.device_type == wgpu::DeviceType::Cpu => (
                SOFTWARE_SIZES.to_vec(),
                Some(format!(
                    "{} is a software adapter: measuring 256x256 only (pass --sizes for more)",
                    ctx.info.name
                )),
            ),
            None => (DEFAULT_SIZES.to_vec(), None),
        }
    };
    // Every size is checked on every adapter before anything is measured.
    for ctx in &contexts {
        for size in sizes_for(ctx).0 {
            check_size(ctx, size, scale)?;
        }
    }
    let per = (cfg.warmup + cfg.runs + 1) as u64;
    let total: u64 = contexts
        .iter()
        .map(|c| sizes_for(c).0.len() as u64 * cfg.modes.len() as u64 * per)
        .sum();
    events(Event::Total(total));
    let mut file = BenchFile {
        schema: SCHEMA.into(),
        tool: "refqsr".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        date: now(),
        partial: false,
        results: Vec::new(),
    };
    'adapters: for ctx in &contexts {
        let (sizes, sizes_note) = sizes_for(ctx);
        let (peak, peak_cached) = match &cfg.peak_cache {
            Some(dir) => match peak::cached(ctx, dir) {
                Ok((p, c)) => (Some(p), c),
                Err(e) => {
                    events(Event::Skipped(format!("{}: peak test: {e}", ctx.info.name)));
                    (None, false)
                }
            },
            None => match peak::measure(ctx) {
                Ok(p) => (Some(p), false),
                Err(e) => {
                    events(Event::Skipped(format!("{}: peak test: {e}", ctx.info.name)));
                    (None, false)
                }
            },
        };
        events(Event::Adapter {
            ctx,
            peak,
            peak_cached,
            sizes_note,
        });
        for &mode in &cfg.modes {
            for &(w, h) in &sizes {
                if stop.load(Ordering::Relaxed) {
                    file.partial = true;
                    break 'adapters;
                }
                events(Event::Begin(format!("{} {mode} {w}x{h}", ctx.info.name)));
                match measure(cfg, ctx, &graph, mode, (w, h), &source, peak, events, stop) {
                    Ok(Some(r)) => {
                        events(Event::Done(&r));
                        file.results.push(r);
                    }
                    Ok(None) => {}
                    Err(e) => events(Event::Skipped(format!(
                        "{} {mode} {w}x{h}: {e}",
                        ctx.info.name
                    ))),
                }
                if stop.load(Ordering::Relaxed) {
                    file.partial = true;
                    break 'adapters;
                }
            }
        }
    }
    Ok(file)
}

/// One (adapter, mode, size): `None` when stopped before the first timed run.
#[allow(clippy::too_many_arguments)]
fn measure(
    cfg: &Config,
    ctx: &Arc<Context>,
    graph: &Graph,
    mode: Mode,
    (w, h): (u32, u32),
    source: &Rgb32FImage,
    peak: Option<Peak>,
    events: &mut dyn FnMut(Event),
    stop: &AtomicBool,
) -> Result<Option<Record>> {
    let img = input_image(source, w, h);
    let weights_before = ctx.uploaded();
    let up = Upscaler::with_graph(
        ctx.clone(),
        graph.clone(),
        &Options {
            model: cfg.model.clone(),
            scale: cfg.scale,
            mode,
            ..Options::default()
        },
    )?;
    if let Some(why) = up.fallback() {
        events(Event::Warning(format!("{}: {why}", ctx.info.name)));
    }
    let weights = ctx.uploaded() - weights_before;
    ctx.reset_peak_memory();
    let tensors_before = ctx.peak_tensor_memory();
    let mut nothing = |_: usize, _: usize| {};
    for _ in 0..cfg.warmup {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        up.upscale_rgb(&img, &mut nothing)?;
        events(Event::Tick);
    }
    let mut times = Vec::with_capacity(cfg.runs);
    for _ in 0..cfg.runs {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let t = Instant::now();
        up.upscale_rgb(&img, &mut nothing)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        events(Event::Tick);
    }
    if times.is_empty() {
        return Ok(None);
    }
    let memory = weights + (ctx.peak_tensor_memory() - tensors_before);
    let stages = if stop.load(Ordering::Relaxed) {
        None
    } else {
        let prof = Profiler::new(ctx, cfg.host_clock);
        let t = Instant::now();
        up.upscale_rgb_profiled(&img, &mut nothing, Some(&prof))?;
        let wall = t.elapsed().as_secs_f64() * 1e3;
        prof.add(Stage::Host, (wall - prof.total()).max(0.0));
        events(Event::Tick);
        Some(StageSplit {
            clock: prof.clock().key().into(),
            ms: prof
                .stages()
                .into_iter()
                .filter(|&(s, ms)| ms > 0.0 || s == Stage::Host)
                .map(|(s, ms)| (s.key().to_string(), ms))
                .collect(),
        })
    };
    let (median_ms, min_ms, max_ms) = record::summarize(&times);
    let gops = 2.0 * macs(graph, w, h) / 1e9 / (median_ms / 1e3);
    let mode = up.mode();
    let peak_share = peak.map(|p| {
        gops / if mode.is_integer() {
            p.int8_gops
        } else {
            p.fp32_gflops
        }
    });
    Ok(Some(Record {
        tool: "refqsr".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        date: now(),
        adapter: adapter_record(ctx),
        model: graph.name.clone(),
        mode: mode.to_string(),
        width: w,
        height: h,
        scale: graph.scale(),
        warmup: Some(cfg.warmup as u32),
        runs: times.len() as u32,
        times_ms: times,
        median_ms,
        min_ms,
        max_ms,
        gops: Some(gops),
        peak_share,
        peak,
        memory_bytes: Some(memory),
        stages,
    }))
}

/// Read bench files for `--compare`: the good ones' results pooled ([`record::merge`]), and a
/// message for each file that was skipped.
pub fn compare(paths: &[PathBuf]) -> (Vec<Record>, Vec<String>) {
    let mut all = Vec::new();
    let mut skipped = Vec::new();
    for p in paths {
        match record::load(p) {
            Ok(f) => all.extend(f.results),
            Err(e) => skipped.push(e),
        }
    }
    (record::merge(&all), skipped)
}

/// Write `file` as JSON to `path` atomically ([`crate::imageio::atomic_write`]), so a reader
/// never sees half a file.
pub fn save(file: &BenchFile, path: &std::path::Path) -> Result<()> {
    let text = serde_json::to_string_pretty(file)
        .map_err(|e| Error::Invalid(format!("serializing the results: {e}")))?;
    crate::imageio::atomic_write(path, |w| {
        std::io::Write::write_all(w, (text + "\n").as_bytes()).map_err(|e| Error::io(path, e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_reject_zero() {
        assert_eq!(
            parse_sizes("256x256, 960X540").unwrap(),
            vec![(256, 256), (960, 540)]
        );
        for bad in ["0x256", "256x0", "256", "axb", ""] {
            assert!(parse_sizes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn input_is_a_centre_crop_or_a_resize() {
        let img = Rgb32FImage::from_fn(8, 6, |x, y| image::Rgb([x as f32, y as f32, 0.0]));
        let c = input_image(&img, 4, 2);
        assert_eq!(c.get_pixel(0, 0).0, [2.0, 2.0, 0.0]);
        let r = input_image(&img, 16, 4);
        assert_eq!(r.dimensions(), (16, 4));
    }
}
