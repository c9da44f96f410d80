//! The public upscaler: model choice, tiling, batching and image conversion.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use image::{DynamicImage, Rgb32FImage};

use crate::error::{Error, Result};
use crate::exec::{GpuModel, Plan};
use crate::gpu::Context;
use crate::model::Graph;
use crate::profile::{Profiler, Stage};
use crate::quant::{Bounds, Calibration, Mode};
use crate::refqsr::{Ablation, RefQsr};
use crate::tile::Grid;

/// A model compiled into the binary: (name, scale, param, bin, calibration).
type Builtin = (
    &'static str,
    u32,
    &'static [u8],
    &'static [u8],
    &'static str,
    &'static str,
);

/// Models compiled into the binary with their calibrations, so the default upscale needs no
/// files at run time.
const BUILTIN: &[Builtin] = &[
    (
        "spanx4_ch48",
        4,
        include_bytes!("../assets/models/spanx4_ch48.param"),
        include_bytes!("../assets/models/spanx4_ch48.bin"),
        include_str!("../assets/models/spanx4_ch48.calib.json"),
        include_str!("../assets/models/spanx4_ch48.refqsr.json"),
    ),
    (
        "spanx2_ch48",
        2,
        include_bytes!("../assets/models/spanx2_ch48.param"),
        include_bytes!("../assets/models/spanx2_ch48.bin"),
        include_str!("../assets/models/spanx2_ch48.calib.json"),
        include_str!("../assets/models/spanx2_ch48.refqsr.json"),
    ),
];

/// Tile sizes tried (largest first) when none is given.
const TILE_CANDIDATES: &[usize] = &[512, 384, 256, 192, 128, 96, 64, 48, 32, 16];

/// How to build an [`Upscaler`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// An ncnn model (`.param`, with its `.bin` beside it); `None` = the shipped SPAN model.
    pub model: Option<PathBuf>,
    /// Wanted upscaling factor; picks the shipped model, or must match `model`.
    pub scale: Option<u32>,
    /// Tile core size in input pixels; `None` = the largest that fits the device.
    pub tile: Option<usize>,
    /// Adapter index or name part (see `refqsr adapters`); `None` = the best one.
    pub adapter: Option<String>,
    /// Device memory the tensors of one batch may use (bytes); `None` = 1 GiB.
    pub max_memory: Option<u64>,
    /// Pixels of mirrored image border beyond which the network zero-pads, as it was trained
    /// to; `None` = [`DEFAULT_MIRROR`].
    pub mirror: Option<usize>,
    /// Precision of the network's body (default fp32).
    pub mode: Mode,
    /// Calibration file for the integer modes; `None` = the shipped one for a shipped model,
    /// else `MODEL.calib.json` beside the model.
    pub calibration: Option<PathBuf>,
    /// Searched per channel (default, where the calibration has them), per tensor, or min/max
    /// quantization bounds.
    pub bounds: Bounds,
    /// Overlap (input pixels) each side of a tile; `None` = [`default_halo`] of the
    /// receptive-field radius (the output then does not depend on the tiling, for networks
    /// that see at most [`MAX_HALO`] pixels), or [`crate::refqsr::HALO`] in RefQSR modes.
    pub halo: Option<usize>,
    /// RefQSR's cosine threshold; `None` = [`crate::refqsr::DEFAULT_TAU`].
    pub tau: Option<f32>,
    /// RefQSR ablation (for `eval`).
    pub ablation: Ablation,
    /// RefQSR parameters (ClustBlock and RefER); `None` = the shipped ones for a shipped
    /// model, else `MODEL.refqsr.json` beside the model.
    pub refqsr_params: Option<PathBuf>,
}

/// The largest receptive-field radius used as the tile overlap. A window must reach as far as
/// the network can see for the tiled output to equal the untiled one, which SPAN (radius 21),
/// Real-ESRGAN compact models (18-34) and the like afford.
pub const MAX_HALO: usize = 48;

/// The overlap of deeper networks. Their theoretical reach is far larger (realesrgan-x4plus:
/// 351 convolutions, radius 358) than what they use: realesrgan-ncnn-vulkan pads its tiles by
/// 10 pixels. A 48-pixel halo measured 16 tiles of 160x160 for a 256x256 input on lavapipe
/// (its 128 MiB binding limit caps the windows, since x4plus keeps 64 channels at 4x), over
/// 10 minutes; with this one the output depends on the tiling only by float noise.
pub const DEEP_HALO: usize = 16;

/// The default tile overlap for a network that sees `radius` input pixels around each output.
pub fn default_halo(radius: usize) -> usize {
    if radius <= MAX_HALO {
        radius
    } else {
        DEEP_HALO
    }
}

/// Default mirrored border (see `tile.rs`): none. DESIGN.md asks for mirrored borders, but
/// the networks were trained with zero padding and score better with it: SPAN x4 PSNR-Y in
/// the outer 16 pixels of the shipped photos is 31.95/28.36/36.02 dB with zero padding against
/// 30.38/28.07/35.68 dB with a 21-pixel mirror (benches/RESULTS.md). It also costs nothing,
/// where a mirrored halo around a 256x256 image adds 35% work.
pub const DEFAULT_MIRROR: usize = 0;

/// Upscales images on one GPU with one model.
pub struct Upscaler {
    model: GpuModel,
    mode: Mode,
    fallback: Option<String>,
    halo: usize,
    tile: Option<usize>,
    max_memory: u64,
    mirror: usize,
    plans: Mutex<HashMap<(usize, usize, usize), Arc<Plan>>>,
    notes: Mutex<Vec<String>>,
    /// The RefQSR engine in RefQSR modes (`model` is then its reference model).
    refqsr: Option<Box<RefQsr>>,
    /// Each body layer's precision floor from the calibration (empty in fp32): with the
    /// mode's bits, the per-layer spec that runs and that [`Upscaler::cost`] counts.
    floors: Vec<[u32; 2]>,
}

/// Resolve a model: the shipped one for `scale`, or the files at `path`.
pub fn load_graph(path: Option<&Path>, scale: Option<u32>) -> Result<Graph> {
    let graph = match path {
        None => {
            let s = scale.unwrap_or(4);
            let (name, _, param, bin, ..) = BUILTIN.iter().find(|m| m.1 == s).ok_or_else(|| {
                Error::Invalid(format!(
                    "no shipped model upscales by {s} (shipped: x4, x2); pass a model with -m"
                ))
            })?;
            let g = crate::model::ncnn::load_bytes(
                Path::new(&format!("{name}.param")),
                param,
                Path::new(&format!("{name}.bin")),
                bin,
            )?;
            crate::model::fuse::fuse(g)
        }
        Some(p) => {
            let (param, bin) = model_files(p);
            Graph::load_ncnn(&param, &bin)?
        }
    };
    if let Some(s) = scale {
        if graph.scale() != s {
            return Err(Error::Invalid(format!(
                "model `{}` upscales by {}, not {s}: pick a x{s} model or drop -s",
                graph.name,
                graph.scale()
            )));
        }
    }
    if graph.input_channels() != 3 || graph.values[graph.output].channels != 3 {
        return Err(Error::Unsupported {
            model: graph.name.clone(),
            message: format!(
                "takes {} and gives {} channels; refqsr upscales RGB to RGB",
                graph.input_channels(),
                graph.values[graph.output].channels
            ),
        });
    }
    Ok(graph)
}

/// The calibration an integer mode of `graph` uses (see [`Options::calibration`]).
pub fn load_calibration(opts: &Options, graph: &Graph) -> Result<Calibration> {
    if let Some(p) = &opts.calibration {
        return Calibration::load(p, graph);
    }
    match &opts.model {
        None => {
            let (name, _, _, _, text, _) = BUILTIN
                .iter()
                .find(|m| m.0 == graph.name)
                .expect("a shipped graph has a shipped calibration");
            Calibration::parse(text, Path::new(&format!("{name}.calib.json")), graph)
        }
        Some(p) => {
            let path = calibration_path(p);
            if !path.exists() {
                return Err(Error::Invalid(format!(
                    "mode {} needs a calibration of model `{}`, and {} does not exist: run `refqsr calibrate -m {} --images DIR` or pass --calibration FILE",
                    opts.mode,
                    graph.name,
                    path.display(),
                    p.display()
                )));
            }
            Calibration::load(&path, graph)
        }
    }
}

/// The RefQSR parameters of `graph` (see [`Options::refqsr_params`]).
pub fn load_refqsr_params(opts: &Options, graph: &Graph) -> Result<crate::refqsr::Params> {
    use crate::refqsr::Params;
    if let Some(p) = &opts.refqsr_params {
        return Params::load(p, graph);
    }
    match &opts.model {
        None => {
            let (name, .., text) = BUILTIN
                .iter()
                .find(|m| m.0 == graph.name)
                .expect("a shipped graph has shipped RefQSR parameters");
            Params::parse(text, Path::new(&format!("{name}.refqsr.json")), graph)
        }
        Some(p) => {
            let path = model_files(p).0.with_extension("refqsr.json");
            if !path.exists() {
                return Err(Error::Invalid(format!(
                    "mode {} needs RefQSR parameters of model `{}`, and {} does not exist: run `refqsr calibrate -m {} --images DIR`",
                    opts.mode,
                    graph.name,
                    path.display(),
                    p.display()
                )));
            }
            Params::load(&path, graph)
        }
    }
}

/// Where the calibration of the model at `p` lives by default: `x.calib.json` beside `x.param`.
pub fn calibration_path(p: &Path) -> PathBuf {
    let param = model_files(p).0;
    param.with_extension("calib.json")
}

/// `x.param` / `x.bin` / `x` -> (`x.param`, `x.bin`).
fn model_files(p: &Path) -> (PathBuf, PathBuf) {
    match p.extension().and_then(|e| e.to_str()) {
        Some("param") | Some("bin") => (p.with_extension("param"), p.with_extension("bin")),
        _ => {
            let s = p.as_os_str().to_owned();
            let mut a = s.clone();
            a.push(".param");
            let mut b = s;
            b.push(".bin");
            (a.into(), b.into())
        }
    }
}

impl Upscaler {
    /// Open the adapter and load the model.
    pub fn new(opts: &Options) -> Result<Self> {
        let graph = load_graph(opts.model.as_deref(), opts.scale)?;
        let ctx = Context::new(opts.adapter.as_deref())?;
        Self::with_graph(ctx, graph, opts)
    }

    /// An upscaler for an already loaded graph on an open device.
    pub fn with_graph(ctx: Arc<Context>, graph: Graph, opts: &Options) -> Result<Self> {
        if opts.tile == Some(0) {
            return Err(Error::Invalid("tile size must be at least 1".into()));
        }
        let mut mode = opts.mode;
        let refqsr_mode = matches!(mode, Mode::RefQsr { .. });
        let halo = opts.halo.unwrap_or(if refqsr_mode {
            crate::refqsr::HALO
        } else {
            default_halo(graph.receptive_radius())
        });
        let tile = opts.tile.or(refqsr_mode.then_some(crate::refqsr::PATCH));
        let mut fallback = None;
        let mut refqsr = None;
        let mut floors = Vec::new();
        let model = if mode.is_integer() {
            let graph = crate::quant::prepare(graph);
            let calib = load_calibration(opts, &graph)?;
            floors = calib.spec(0, 0);
            match crate::kernels::int_conv::self_check(&ctx) {
                Ok(()) => {
                    // RefQSR's reference body is the uniform high-precision model
                    let uniform = match mode {
                        Mode::RefQsr { high, .. } => Mode::Uniform { w: high, a: high },
                        m => m,
                    };
                    if let Mode::RefQsr { high, low } = mode {
                        let params = load_refqsr_params(opts, &graph)?;
                        refqsr = Some(Box::new(RefQsr::new(
                            ctx.clone(),
                            &graph,
                            (high, low),
                            &calib,
                            opts.bounds,
                            &params,
                            opts.tau.unwrap_or(crate::refqsr::DEFAULT_TAU),
                            opts.ablation,
                        )?));
                    }
                    let layers = crate::quant::int_layers(&graph, uniform, &calib, opts.bounds);
                    GpuModel::quantized(ctx, graph, layers)?
                }
                Err(why) => {
                    fallback = Some(format!(
                        "{why}; the integer path is unreliable on {}, so {mode} runs as fp32",
                        ctx.info.name
                    ));
                    mode = Mode::Fp32;
                    floors.clear();
                    GpuModel::new(ctx, graph)?
                }
            }
        } else {
            GpuModel::new(ctx, graph)?
        };
        Ok(Upscaler {
            model,
            mode,
            fallback,
            halo,
            tile,
            max_memory: opts.max_memory.unwrap_or(1 << 30),
            mirror: opts.mirror.unwrap_or(DEFAULT_MIRROR),
            plans: Mutex::new(HashMap::new()),
            notes: Mutex::new(Vec::new()),
            refqsr,
            floors,
        })
    }

    /// What the last RefQSR run did (`None` in other modes).
    pub fn last_refqsr_run(&self) -> Option<crate::refqsr::RunStats> {
        self.refqsr.as_ref().and_then(|r| r.last_run())
    }

    /// The mode this upscaler runs (fp32 where an integer mode fell back, see
    /// [`Upscaler::fallback`]).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Why the asked-for integer mode fell back to fp32, if it did.
    pub fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.model.ctx
    }

    pub fn graph(&self) -> &Graph {
        &self.model.graph
    }

    /// BitOPs and FQR of a uniform mode's per-layer spec on a `width` x `height` input
    /// (`None` in RefQSR modes, whose cost depends on the references each image gets).
    pub fn cost(&self, width: usize, height: usize) -> Option<crate::quant::Cost> {
        crate::quant::accounting::cost_with(self.graph(), self.mode, &self.floors, width, height)
    }

    pub fn scale(&self) -> u32 {
        self.model.graph.scale()
    }

    /// Halo (in input pixels) read around each tile.
    pub fn halo(&self) -> usize {
        self.halo
    }

    /// Pixels of mirrored border around the image.
    pub fn mirror(&self) -> usize {
        self.mirror
    }

    /// The windows an image of `width` x `height` is cut into.
    pub fn grid(&self, width: usize, height: usize) -> Result<Grid> {
        self.grid_within(width, height, self.max_memory)
    }

    fn grid_within(&self, width: usize, height: usize, budget: u64) -> Result<Grid> {
        let tile = self.tile_size_within(width, height, budget)?;
        Ok(Grid::new(width, height, tile, self.halo, self.mirror))
    }

    fn fits(&self, batch: usize, h: usize, w: usize, budget: u64) -> bool {
        let (largest, peak) = self.model.memory(batch, h, w);
        largest <= self.model.ctx.max_binding() && peak <= budget
    }

    /// The tile core size used for a `width` x `height` image.
    pub fn tile_size(&self, width: usize, height: usize) -> Result<usize> {
        self.tile_size_within(width, height, self.max_memory)
    }

    fn tile_size_within(&self, width: usize, height: usize, budget: u64) -> Result<usize> {
        let h2 = 2 * self.halo;
        // window size for a core of t: never more than the mirrored image itself
        let win = |t: usize, len: usize| (t + h2).min(len + 2 * self.mirror);
        let binding = self.model.ctx.max_binding();
        // Which limit refuses a tile: the adapter's binding size or the memory budget.
        let refusal = |t: usize| {
            let (largest, peak) = self.model.memory(1, win(t, height), win(t, width));
            if largest > binding {
                format!(
                    "a {t}-pixel tile needs a {} MiB tensor, over this adapter's {} MiB binding limit",
                    largest.div_ceil(1 << 20),
                    binding >> 20
                )
            } else {
                format!(
                    "a {t}-pixel tile needs {} MiB of tensors, over the memory budget of {} MiB (--max-memory)",
                    peak.div_ceil(1 << 20),
                    budget >> 20
                )
            }
        };
        if let Some(t) = self.tile {
            if !self.fits(1, win(t, height), win(t, width), budget) {
                return Err(Error::Invalid(format!(
                    "tile {t} does not fit: {}; use a smaller -t",
                    refusal(t)
                )));
            }
            return Ok(t);
        }
        TILE_CANDIDATES
            .iter()
            .copied()
            .find(|&t| self.fits(1, win(t, height), win(t, width), budget))
            .ok_or_else(|| {
                let floor = *TILE_CANDIDATES.last().expect("candidates");
                Error::Invalid(format!("no tile fits: {}", refusal(floor)))
            })
    }

    /// What the last upscale had to do differently (out-of-memory retries), for the caller to
    /// report; taken once.
    pub fn take_notes(&self) -> Vec<String> {
        std::mem::take(&mut *self.notes.lock().expect("notes"))
    }

    fn plan(&self, batch: usize, h: usize, w: usize) -> Result<Arc<Plan>> {
        let mut plans = self.plans.lock().expect("plan cache");
        if let Some(p) = plans.get(&(batch, h, w)) {
            return Ok(p.clone());
        }
        // Keep the cache small: one image needs a plan for its full batches and one for the
        // rest; a new image size usually means the old plans are done.
        if plans.len() >= 2 {
            plans.clear();
        }
        let p = Arc::new(self.model.plan(batch, h, w)?);
        plans.insert((batch, h, w), p.clone());
        Ok(p)
    }

    /// Upscale an RGB image (values in [0, 1]); `progress(done, total)` is called per tile.
    pub fn upscale_rgb(
        &self,
        img: &Rgb32FImage,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Rgb32FImage> {
        self.upscale_rgb_profiled(img, progress, None)
    }

    /// [`Upscaler::upscale_rgb`], each stage measured by `prof` if given.
    pub fn upscale_rgb_profiled(
        &self,
        img: &Rgb32FImage,
        progress: &mut dyn FnMut(usize, usize),
        prof: Option<&Profiler>,
    ) -> Result<Rgb32FImage> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        if w == 0 || h == 0 {
            return Err(Error::Invalid("image has no pixels".into()));
        }
        self.retrying(w, h, &mut |budget| {
            self.upscale_within(img, progress, prof, budget)
                .map_err(|e| (e, true))
        })
    }

    /// Run `attempt` within the memory budget, and when it runs out of device memory (and
    /// says it may be retried), again within the largest smaller budget that changes the
    /// work's shape (smaller tiles, fewer per batch, smaller RefQSR groups), down to the
    /// smallest tile, noting each retry. The next image starts again from the full budget;
    /// free pooled buffers are trimmed to it afterwards.
    fn retrying<T>(
        &self,
        w: usize,
        h: usize,
        attempt: &mut dyn FnMut(u64) -> std::result::Result<T, (Error, bool)>,
    ) -> Result<T> {
        let mut budget = self.max_memory;
        let result = loop {
            match attempt(budget) {
                Ok(v) => break Ok(v),
                Err((Error::OutOfMemory(why), true)) => {
                    self.plans.lock().expect("plan cache").clear();
                    self.model.ctx.trim_pool(0);
                    match self.smaller_budget(w, h, budget) {
                        Some((smaller, note)) => {
                            self.notes
                                .lock()
                                .expect("notes")
                                .push(format!("out of device memory ({why}) {note}"));
                            budget = smaller;
                        }
                        None => {
                            break Err(Error::OutOfMemory(format!(
                                "{why}; even the smallest tiles do not fit (use a smaller -t or --max-memory)"
                            )))
                        }
                    }
                }
                Err((e, _)) => break Err(e),
            }
        };
        self.model.ctx.trim_pool(self.max_memory);
        result
    }

    /// (tile size, tiles per batch) of a `w` x `h` image within `budget`; `None` if no tile
    /// fits.
    fn shape_within(&self, w: usize, h: usize, budget: u64) -> Option<(usize, usize)> {
        let t = self.tile_size_within(w, h, budget).ok()?;
        let grid = Grid::new(w, h, t, self.halo, self.mirror);
        let (ih, iw) = grid.input_size();
        Some((t, self.batch_within(grid.tiles.len(), ih, iw, budget)))
    }

    fn batch_within(&self, tiles: usize, ih: usize, iw: usize, budget: u64) -> usize {
        let mut batch = 1;
        while batch < tiles.min(16) && self.fits(batch + 1, ih, iw, budget) {
            batch += 1;
        }
        batch
    }

    fn upscale_within(
        &self,
        img: &Rgb32FImage,
        progress: &mut dyn FnMut(usize, usize),
        prof: Option<&Profiler>,
        budget: u64,
    ) -> Result<Rgb32FImage> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let s = self.scale() as usize;
        let grid = self.grid_within(w, h, budget)?;
        if let Some(r) = &self.refqsr {
            return r.run(&self.model, img, &grid, budget, progress, prof);
        }
        let (ih, iw) = grid.input_size();
        let batch = self.batch_within(grid.tiles.len(), ih, iw, budget);
        let mut out = host_image((w * s) as u32, (h * s) as u32)?;
        let per_in = ih * iw * 4;
        let per_out = per_in * s * s;
        let total = grid.tiles.len();
        let mut done = 0;
        progress(0, total);
        for chunk in grid.tiles.chunks(batch) {
            let plan = self.plan(chunk.len(), ih, iw)?;
            let mut input = vec![0f32; per_in * chunk.len()];
            for (t, dst) in chunk.iter().zip(input.chunks_mut(per_in)) {
                grid.extract(img, *t, dst);
            }
            let result = plan.run_maybe_profiled(&input, prof, Stage::Body)?;
            for (t, src) in chunk.iter().zip(result.chunks(per_out)) {
                grid.merge(&mut out, *t, s, src);
            }
            done += chunk.len();
            progress(done, total);
        }
        Ok(out)
    }

    /// Test-time augmentation (realesrgan-ncnn-vulkan's `-x`): the eight flips and transposes
    /// of `img` are each upscaled, turned back and averaged. Eight times the work; `progress`
    /// counts the tiles of all eight passes.
    pub fn upscale_rgb_tta(
        &self,
        img: &Rgb32FImage,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Rgb32FImage> {
        use image::imageops::{flip_horizontal, flip_vertical};
        let transpose = |i: &Rgb32FImage| flip_horizontal(&image::imageops::rotate90(i));
        // (transpose, flip h, flip v): forward transposes first; the inverse flips first.
        let forward = |i: &Rgb32FImage, (t, fh, fv): (bool, bool, bool)| {
            let mut x = if t { transpose(i) } else { i.clone() };
            if fh {
                x = flip_horizontal(&x);
            }
            if fv {
                x = flip_vertical(&x);
            }
            x
        };
        let inverse = |i: &Rgb32FImage, (t, fh, fv): (bool, bool, bool)| {
            let mut x = i.clone();
            if fv {
                x = flip_vertical(&x);
            }
            if fh {
                x = flip_horizontal(&x);
            }
            if t {
                transpose(&x)
            } else {
                x
            }
        };
        let mut sum: Option<Rgb32FImage> = None;
        for k in 0..8usize {
            let tf = (k & 4 != 0, k & 2 != 0, k & 1 != 0);
            let mut pass = |done: usize, total: usize| {
                progress(k * total + done, 8 * total);
            };
            let out = inverse(&self.upscale_rgb(&forward(img, tf), &mut pass)?, tf);
            match &mut sum {
                None => sum = Some(out),
                Some(s) => s.iter_mut().zip(out.iter()).for_each(|(a, b)| *a += b),
            }
        }
        let mut avg = sum.expect("eight passes");
        avg.iter_mut().for_each(|v| *v *= 0.125);
        Ok(avg)
    }

    /// Whether [`Upscaler::upscale_rgb8_rows`] can take `img`: 8-bit RGB in a uniform mode.
    pub fn can_stream(&self, img: &DynamicImage) -> bool {
        self.refqsr.is_none() && matches!(img, DynamicImage::ImageRgb8(_))
    }

    /// Upscale 8-bit RGB band by band: `rows` gets the output's rows in order as RGB8, one
    /// row of tiles at a time, so the host holds the 8-bit input, one band of output rows and
    /// the windows of one batch, never the f32 image. The rows equal those of
    /// [`Upscaler::upscale_image`] bit for bit. Out of device memory before the first band
    /// retries smaller, as `upscale_rgb` does; after it, rows are out and the error stands.
    pub fn upscale_rgb8_rows(
        &self,
        img: &image::RgbImage,
        progress: &mut dyn FnMut(usize, usize),
        rows: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        if w == 0 || h == 0 {
            return Err(Error::Invalid("image has no pixels".into()));
        }
        if self.refqsr.is_some() {
            return Err(Error::Invalid(
                "band-by-band output needs a uniform mode".into(),
            ));
        }
        // Once rows are out, a retry cannot take them back.
        let mut emitted = false;
        self.retrying(w, h, &mut |budget| {
            self.rows_within(img, progress, rows, budget, &mut emitted)
                .map_err(|e| (e, !emitted))
        })
    }

    /// Upscale 8-bit RGB into an 8-bit image, collected from [`Upscaler::upscale_rgb8_rows`]:
    /// the pixels of [`Upscaler::upscale_image`], without an f32 copy of either image.
    pub fn upscale_rgb8(
        &self,
        img: &image::RgbImage,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<image::RgbImage> {
        let s = self.scale();
        let (w, h) = (
            img.width().saturating_mul(s),
            img.height().saturating_mul(s),
        );
        let mut out = host_rgb::<u8>(w as usize, h as usize)?;
        let mut at = 0;
        self.upscale_rgb8_rows(img, progress, &mut |rows| {
            out.get_mut(at..at + rows.len())
                .ok_or_else(|| Error::Invalid("the bands overrun the image".into()))?
                .copy_from_slice(rows);
            at += rows.len();
            Ok(())
        })?;
        Ok(image::RgbImage::from_raw(w, h, out).expect("sized buffer"))
    }

    /// The largest budget below `budget` that changes the work's shape, with a note saying
    /// how; `None` when nothing smaller fits.
    fn smaller_budget(&self, w: usize, h: usize, budget: u64) -> Option<(u64, String)> {
        let before = self.shape_within(w, h, budget);
        let mut smaller = budget / 2;
        while smaller > 0 && self.shape_within(w, h, smaller) == before {
            smaller /= 2;
        }
        match (before, self.shape_within(w, h, smaller)) {
            (Some((t0, b0)), Some((t, b))) if smaller > 0 => Some((
                smaller,
                format!("with {t0}-pixel tiles, {b0} at a time; retrying with {t}-pixel tiles, {b} at a time"),
            )),
            _ => None,
        }
    }

    fn rows_within(
        &self,
        img: &image::RgbImage,
        progress: &mut dyn FnMut(usize, usize),
        rows: &mut dyn FnMut(&[u8]) -> Result<()>,
        budget: u64,
        emitted: &mut bool,
    ) -> Result<()> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let s = self.scale() as usize;
        let grid = self.grid_within(w, h, budget)?;
        let (ih, iw) = grid.input_size();
        let batch = self.batch_within(grid.tiles.len(), ih, iw, budget);
        let per_in = ih * iw * 4;
        let per_out = per_in * s * s;
        let total = grid.tiles.len();
        let mut done = 0;
        let mut next_row = 0usize;
        progress(0, total);
        for row in grid.tile_rows() {
            let y = row[0].y;
            let mut band = host_rgb::<u8>(w * s, (y.core.1 - y.core.0) * s)?;
            for chunk in row.chunks(batch) {
                let plan = self.plan(chunk.len(), ih, iw)?;
                let mut input = vec![0f32; per_in * chunk.len()];
                for (t, dst) in chunk.iter().zip(input.chunks_mut(per_in)) {
                    grid.extract_rgb8(img, *t, dst);
                }
                let result = plan.run(&input)?;
                for (t, src) in chunk.iter().zip(result.chunks(per_out)) {
                    grid.merge_rgb8_band(&mut band, w * s, *t, s, src);
                }
                done += chunk.len();
                progress(done, total);
            }
            // The last row of tiles is shifted back to end at the border, so its core may
            // start above rows already out: those are the same pixels, computed twice.
            let start = y.core.0 * s;
            let skip = next_row.saturating_sub(start) * w * s * 3;
            rows(&band[skip.min(band.len())..])?;
            next_row = next_row.max(y.core.1 * s);
            *emitted = true;
        }
        Ok(())
    }

    /// Per-step host timings (ms) of the first batch of windows of `img` (see
    /// [`Plan::profile`]).
    pub fn profile_rgb(&self, img: &Rgb32FImage) -> Result<Vec<(String, f64)>> {
        let grid = self.grid(img.width() as usize, img.height() as usize)?;
        let (ih, iw) = grid.input_size();
        let plan = self.plan(1, ih, iw)?;
        let mut input = vec![0f32; ih * iw * 4];
        grid.extract(img, grid.tiles[0], &mut input);
        plan.profile(&input)
    }

    /// Upscale any decoded image. Colour goes through the network; alpha is upscaled bicubic;
    /// grayscale stays grayscale; 16-bit stays 16-bit.
    pub fn upscale_image(
        &self,
        img: &DynamicImage,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<DynamicImage> {
        self.upscale_image_with(img, false, progress)
    }

    /// [`Upscaler::upscale_image`], with test-time augmentation when `tta` is set (see
    /// [`Upscaler::upscale_rgb_tta`]).
    pub fn upscale_image_with(
        &self,
        img: &DynamicImage,
        tta: bool,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<DynamicImage> {
        // The networks were trained on sRGB-encoded values in [0, 1], so that is what they get
        // (DESIGN.md's "linear RGB" would shift every colour they see).
        let rgb = img.to_rgb32f();
        let rgb = if tta {
            self.upscale_rgb_tta(&rgb, progress)?
        } else {
            self.upscale_rgb(&rgb, progress)?
        };
        Ok(crate::imageio::restore_format(img, rgb))
    }

    /// Read, upscale and write one file. The output appears complete or not at all.
    pub fn upscale_file(&self, input: &Path, output: &Path) -> Result<()> {
        self.upscale_file_with_progress(input, output, &mut |_, _| {})
    }

    /// [`Upscaler::upscale_file`] with a per-tile progress callback.
    pub fn upscale_file_with_progress(
        &self,
        input: &Path,
        output: &Path,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<()> {
        let format = crate::imageio::output_format(output)?;
        let img = crate::imageio::read(input)?;
        let out = self.upscale_image(&img, progress).map_err(|e| match e {
            Error::Invalid(m) => Error::image(input, m),
            other => other,
        })?;
        crate::imageio::write(&out, output, format)
    }
}

/// A zeroed `w` x `h` RGB f32 image, or [`Error::OutOfMemory`] when the host cannot hold it
/// (instead of aborting the process).
fn host_image(w: u32, h: u32) -> Result<Rgb32FImage> {
    let v = host_rgb::<f32>(w as usize, h as usize)?;
    Ok(Rgb32FImage::from_raw(w, h, v).expect("sized buffer"))
}

/// A zeroed buffer of `w` x `h` RGB values, or [`Error::OutOfMemory`] when the host cannot
/// hold it (instead of aborting the process).
fn host_rgb<T: Clone + Default>(w: usize, h: usize) -> Result<Vec<T>> {
    let n = w
        .checked_mul(h)
        .and_then(|p| p.checked_mul(3))
        .ok_or_else(|| {
            Error::OutOfMemory(format!("a {w}x{h} image overflows the address space"))
        })?;
    let mut v: Vec<T> = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        Error::OutOfMemory(format!(
            "host memory: {w}x{h} pixels need {} MiB",
            (n * std::mem::size_of::<T>()) >> 20
        ))
    })?;
    v.resize(n, T::default());
    Ok(v)
}
