//! `refqsr calibrate`: run the float model on patches of calibration images, record the input
//! distribution of every quantized convolution, and search its bounds at every bit-width
//! (see [`crate::quant::calib`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::Rgb32FImage;

use crate::error::{Error, Result};
use crate::exec::{GpuModel, Plan};
use crate::gpu::Context;
use crate::model::{Graph, Op, ValueId};
use crate::quant::calib::{self, Calibration, Histogram, LayerBounds, BITS, FORMAT};

/// Side of the square calibration patches (input pixels); smaller images give one patch of
/// their own size.
pub const PATCH: usize = 96;
/// Patches per image, on a regular grid.
pub const PATCHES_PER_IMAGE: usize = 9;

/// What `calibrate` found, and the images it could not use.
pub struct Outcome {
    pub calibration: Calibration,
    pub skipped: Vec<(PathBuf, Error)>,
}

/// One patch: which image, and its top-left corner and size.
struct Patch {
    image: usize,
    x: usize,
    y: usize,
    size: (usize, usize),
}

/// Calibrate `graph` on every image under `dir`; `progress(done, total)` is called per patch
/// and pass.
pub fn calibrate(
    ctx: Arc<Context>,
    graph: &Graph,
    dir: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Outcome> {
    let (images, skipped) = load_images(dir)?;
    let patches = patches_of(&images);

    let graph = &crate::quant::prepare(graph.clone());
    let body = calib::body_convs(graph);
    let inputs: Vec<ValueId> = body.iter().map(|&j| graph.nodes[j].inputs[0]).collect();
    let weights: Vec<Vec<f64>> = body
        .iter()
        .map(|&j| match &graph.nodes[j].op {
            Op::Conv(c) => calib::channel_weights(c),
            _ => unreachable!("body_convs lists convolutions"),
        })
        .collect();
    let model = GpuModel::new(ctx, graph.clone())?;
    let mut plans: Vec<((usize, usize), Plan)> = Vec::new();
    let total = 2 * patches.len();
    let mut done = 0;
    progress(0, total);

    // Runs the float model on every patch and hands each body layer's input to `visit`. It
    // runs twice: once for each layer's range, which the histograms need before their first
    // value, then to fill them; keeping every feature map instead would take hundreds of MB.
    let mut each = |visit: &mut dyn FnMut(usize, usize, &[f32])| -> Result<()> {
        for p in &patches {
            let (w, h) = p.size;
            let plan = plan_for(&mut plans, &model, p.size, &inputs)?;
            plan.run(&p.input(&images[p.image].1))?;
            for (l, &v) in inputs.iter().enumerate() {
                let data = plan.read_value(v)?;
                visit(l, h * w, &data);
            }
            done += 1;
            progress(done, total);
        }
        Ok(())
    };
    let channels: Vec<usize> = inputs.iter().map(|&v| graph.values[v].channels).collect();
    // C4HW element i: group (i / 4 / plane), lane i % 4.
    let channel_of = |i: usize, plane: usize| (i / 4 / plane) * 4 + i % 4;

    // per layer, per channel: smallest and largest value
    let mut range: Vec<Vec<(f32, f32)>> = channels.iter().map(|&c| vec![(0.0, 0.0); c]).collect();
    each(&mut |l, plane, data| {
        for (i, &x) in data.iter().enumerate() {
            let c = channel_of(i, plane);
            if c < channels[l] {
                let r = &mut range[l][c];
                *r = (r.0.min(x), r.1.max(x));
            }
        }
    })?;
    let span = |r: &[(f32, f32)]| {
        r.iter()
            .fold((0f32, 0f32), |(a, b), &(x, y)| (a.min(x), b.max(y)))
    };
    let mut hists: Vec<Histogram> = range
        .iter()
        .map(|r| {
            let (a, b) = span(r);
            Histogram::new(a, b)
        })
        .collect();
    let per_channel = |l: usize| channels[l] <= crate::quant::MAX_ACT_CHANNELS;
    let mut chists: Vec<Vec<Histogram>> = (0..body.len())
        .map(|l| {
            if !per_channel(l) {
                return Vec::new();
            }
            (range[l].iter())
                .map(|&(a, b)| Histogram::with_bins(a, b, calib::CHANNEL_BINS))
                .collect()
        })
        .collect();
    let mut sums: Vec<Vec<(f64, f64)>> = channels.iter().map(|&c| vec![(0.0, 0.0); c]).collect();
    each(&mut |l, plane, data| {
        for (i, &x) in data.iter().enumerate() {
            let c = channel_of(i, plane);
            if c < channels[l] {
                hists[l].add(x, weights[l][c]);
                if let Some(h) = chists[l].get_mut(c) {
                    h.add(x, weights[l][c]);
                }
                sums[l][c].0 += x as f64;
                sums[l][c].1 += 1.0;
            }
        }
    })?;

    // the searches are independent per layer: spread them over the cores
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut steps: Vec<BTreeMap<u32, calib::ChannelSteps>> = vec![BTreeMap::new(); body.len()];
    let per = body.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for (t, chunk) in steps.chunks_mut(per).enumerate() {
            let chists = &chists;
            scope.spawn(move || {
                for (i, out) in chunk.iter_mut().enumerate() {
                    let h = &chists[t * per + i];
                    if !h.is_empty() {
                        *out = BITS.map(|b| (b, calib::channel_steps(h, b))).collect();
                    }
                }
            });
        }
    });

    let layers = body
        .iter()
        .enumerate()
        .zip(steps)
        .map(|((l, &j), channel_steps)| {
            let (min, max) = span(&range[l]);
            LayerBounds {
                name: graph.nodes[j].name.clone(),
                in_ch: channels[l],
                min,
                max: max.max(min + f32::MIN_POSITIVE),
                bounds: BITS
                    .map(|b| (b, calib::search_bounds(&hists[l], b)))
                    .collect(),
                mean: sums[l].iter().map(|&(s, n)| (s / n) as f32).collect(),
                floor: None,
                channels: channel_steps,
                weight_clip: BTreeMap::new(),
                query_channels: BTreeMap::new(),
                query_weight_clip: BTreeMap::new(),
                weight_codes: Vec::new(),
            }
        })
        .collect();
    Ok(Outcome {
        calibration: Calibration {
            format: FORMAT.into(),
            model: graph.name.clone(),
            images: images
                .iter()
                .map(|(p, _)| {
                    p.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                })
                .collect(),
            patches: patches.len(),
            layers,
        },
        skipped,
    })
}

/// Files that could not be used, with why.
type Skipped = Vec<(PathBuf, Error)>;

/// The readable images under `dir` (sorted), without their paths or the files skipped.
fn image_data(dir: &Path) -> Result<Vec<Rgb32FImage>> {
    Ok(load_images(dir)?.0.into_iter().map(|(_, i)| i).collect())
}

/// The readable images under `dir` (sorted), and the files that are not, with why; an error
/// if none is readable.
fn load_images(dir: &Path) -> Result<(Vec<(PathBuf, Rgb32FImage)>, Skipped)> {
    let mut images = Vec::new();
    let mut skipped = Vec::new();
    for f in crate::batch::images(dir)? {
        match crate::imageio::read(&f) {
            Ok(img) => images.push((f, img.to_rgb32f())),
            Err(e) => skipped.push((f, e)),
        }
    }
    if images.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no readable png, jpg or webp images to calibrate on",
            dir.display()
        )));
    }
    Ok((images, skipped))
}

/// Every image's calibration patches ([`grid`]), in image order.
fn patches_of(images: &[(PathBuf, Rgb32FImage)]) -> Vec<Patch> {
    images
        .iter()
        .enumerate()
        .flat_map(|(i, (_, img))| grid(i, img.width() as usize, img.height() as usize))
        .collect()
}

/// The plan of `model` for one (width, height) patch keeping `keep`, made once per size.
fn plan_for<'a>(
    plans: &'a mut Vec<((usize, usize), Plan)>,
    model: &GpuModel,
    (w, h): (usize, usize),
    keep: &[ValueId],
) -> Result<&'a Plan> {
    let i = match plans.iter().position(|(s, _)| *s == (w, h)) {
        Some(i) => i,
        None => {
            plans.push(((w, h), model.plan_keeping(1, h, w, keep)?));
            plans.len() - 1
        }
    };
    Ok(&plans[i].1)
}

impl Patch {
    /// The patch of `img` as a network input: C4HW with one channel group, pixel i's lanes at
    /// 4 i..4 i + 4.
    fn input(&self, img: &Rgb32FImage) -> Vec<f32> {
        let (w, h) = self.size;
        let mut c4 = vec![0f32; h * w * 4];
        for (i, px) in c4.chunks_mut(4).enumerate() {
            let v = img.get_pixel((self.x + i % w) as u32, (self.y + i / w) as u32);
            px[..3].copy_from_slice(&v.0);
        }
        c4
    }
}

/// Up to [`PATCHES_PER_IMAGE`] patches of [`PATCH`] pixels spread evenly over an image.
fn grid(image: usize, width: usize, height: usize) -> Vec<Patch> {
    let (pw, ph) = (PATCH.min(width), PATCH.min(height));
    let n = (PATCHES_PER_IMAGE as f64).sqrt() as usize;
    let at = |len: usize, p: usize, i: usize| {
        if n == 1 {
            0
        } else {
            (len - p) * i / (n - 1)
        }
    };
    let mut out: Vec<Patch> = Vec::new();
    for iy in 0..n {
        for ix in 0..n {
            let (x, y) = (at(width, pw, ix), at(height, ph, iy));
            if !out.iter().any(|p| p.x == x && p.y == y) {
                out.push(Patch {
                    image,
                    x,
                    y,
                    size: (pw, ph),
                });
            }
        }
    }
    out
}

/// The modes whose activation steps (and weight clips) `calibrate` learns by reconstruction:
/// uniform ones, and RefQSR's 8-4 for its query path, whose 4-bit inputs meet 6-bit weights
/// rather than w4a4's 4-bit ones and so get steps of their own. A list runs in order, widest
/// first, so a narrower mode's layers held at a wider floor run with steps already learned.
/// Only 4 bits and below pay: learned 8- and 6-bit steps won 0.4 dB on held-out crops of the
/// calibration photos but lost 0.20 and 0.04 dB on SPAN x4's held-out photos, one of which
/// (a city at night) lost 4 dB at w8a8. The learning tightens steps where the calibration
/// photos seldom reach, which photos beyond them do reach; at 8 and 6 bits the searched steps
/// are already near the rounding floor, so there is little to win and that to lose. At 4
/// and 3 bits the same photos gain (w4a4 35.85 -> 36.69 dB with the weights' clips, w4a3
/// 34.96 -> 36.18), and the RefQSR modes' queries run on those steps.
pub const RECON_MODES: &str = "w4a4,w4a3,refqsr:8-4";

/// Reconstruction calibration ([`crate::quant::recon`]) of `calib` for each of `modes` (in
/// order), on the images under `dir`; `progress(mode, done, total)` per optimizer step.
pub fn reconstruct(
    graph: &Graph,
    calib: &mut Calibration,
    dir: &Path,
    modes: &[crate::quant::Mode],
    opts: &crate::quant::recon::Options,
    progress: &mut dyn FnMut(crate::quant::Mode, usize, usize),
) -> Result<Vec<crate::quant::recon::Outcome>> {
    let images = image_data(dir)?;
    let prepared = crate::quant::prepare(graph.clone());
    // a layer's steps (and clips) at some width belong to the first mode of the run that
    // learns them: w4a3 after w4a4 keeps the 4-bit clips and the 6-bit steps of layers held
    // at 6 bits rather than refitting them to itself; RefQSR's queries keep their own
    let mut opts = opts.clone();
    modes
        .iter()
        .map(|&m| {
            let out = crate::quant::recon::reconstruct(
                &prepared,
                calib,
                m,
                &images,
                &opts,
                &mut |d, t| progress(m, d, t),
            )?;
            if matches!(m, crate::quant::Mode::Uniform { .. }) {
                for &(l, a, w) in &out.learned {
                    opts.fixed_steps.insert((l, a));
                    opts.fixed_clips.extend(w.map(|w| (l, w)));
                }
            }
            Ok(out)
        })
        .collect()
}

/// The modes whose weight codes `calibrate` chooses ([`crate::quant::gptq`]), in order: a
/// layer folded the same way in a later mode keeps the codes of the first.
pub const ROUND_MODES: &str = "w4a4,w6a6";

/// Choose the weight codes ([`crate::quant::gptq`]) of `calib` for each of `modes` (in order)
/// on the images under `dir`, replacing any it has; `progress(mode, done, total)` per layer.
pub fn round_weights(
    graph: &Graph,
    calib: &mut Calibration,
    dir: &Path,
    modes: &[crate::quant::Mode],
    opts: &crate::quant::gptq::Options,
    progress: &mut dyn FnMut(crate::quant::Mode, usize, usize),
) -> Result<Vec<crate::quant::gptq::Outcome>> {
    let images = image_data(dir)?;
    let prepared = crate::quant::prepare(graph.clone());
    for l in &mut calib.layers {
        l.weight_codes.clear();
    }
    (modes.iter())
        .map(|&m| {
            crate::quant::gptq::round_weights(&prepared, calib, m, &images, opts, &mut |d, t| {
                progress(m, d, t)
            })
        })
        .collect()
}

/// The modes whose weight codes `calibrate` learns end to end ([`crate::quant::rounding`]),
/// after GPTQ, in order: those whose steps the reconstruction learned, where GPTQ's codes do
/// not pay.
pub const CODE_MODES: &str = "w4a4,w4a3,refqsr:8-4";

/// Learn the weight codes ([`crate::quant::rounding`]) of `calib` for each of `modes` (in
/// order) on the images under `dir`; `progress(mode, done, total)` per optimizer step.
pub fn learn_codes(
    graph: &Graph,
    calib: &mut Calibration,
    dir: &Path,
    modes: &[crate::quant::Mode],
    opts: &crate::quant::rounding::Options,
    progress: &mut dyn FnMut(crate::quant::Mode, usize, usize),
) -> Result<Vec<crate::quant::rounding::Outcome>> {
    let images = image_data(dir)?;
    let prepared = crate::quant::prepare(graph.clone());
    (modes.iter())
        .map(|&m| {
            crate::quant::rounding::learn_codes(&prepared, calib, m, &images, opts, &mut |d, t| {
                progress(m, d, t)
            })
        })
        .collect()
}

/// The RefQSR modes `calibrate` fits RefER for.
pub const REFQSR_MODES: &str = "refqsr:8-5,refqsr:8-4,refqsr:8-3,refqsr:4-3,refqsr:4-2";

/// Fit RefQSR (ClustBlock and RefER for every mode of [`REFQSR_MODES`]) for `graph`, whose
/// integer modes are calibrated by `calib`, on the images under `dir`.
pub fn calibrate_refqsr(
    ctx: Arc<Context>,
    graph: &Graph,
    calib: &Calibration,
    dir: &Path,
    opts: &crate::quant::refer::Options,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(crate::refqsr::Params, Vec<crate::refqsr::fit::ReferFit>)> {
    let mut images = Vec::new();
    for f in crate::batch::images(dir)? {
        // unreadable files were reported by the calibration itself
        if let Ok(img) = crate::imageio::read(&f) {
            images.push(img.to_rgb32f());
        }
    }
    if images.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no readable png, jpg or webp images to calibrate on",
            dir.display()
        )));
    }
    let modes = crate::quant::Mode::parse_list(REFQSR_MODES)?;
    let prepared = crate::quant::prepare(graph.clone());
    crate::refqsr::fit::fit(&ctx, &prepared, calib, &images, &modes, opts, progress)
}

/// The `format` tag of sensitivity reports.
pub const REPORT_FORMAT: &str = "refqsr-sensitivity-1";

/// Patches the sensitivity runs (the report and the floors) take, spread over the images.
pub const REPORT_PATCHES: usize = 24;

/// Bit-widths the sensitivity report runs each layer at (weights and activations alike).
pub const REPORT_BITS: [u32; 3] = [8, 6, 4];

/// The least PSNR against the fp32 output a layer may cost alone: a layer below it at some
/// bit-width is kept at the next one that passes. 45 dB is about the float model's own
/// error on smooth photos (PSNR-Y 40-45 dB on the held-out set), so one layer alone never
/// costs more than the model's own error. On SPAN x4 it keeps block_1's second conv (whose
/// input reaches 77 and whose 6-bit weights alone leave 7 dB) at 8-bit weights, and a few
/// 4-bit layers at 6 bits.
pub const FLOOR_DB: f64 = 45.0;

/// What a layer in f32 costs against 8x8 bits: BitOPs count bits times bits. A layer whose
/// share of the 8-bit output noise is at least this many times its share of the body's
/// multiply-accumulates is kept in f32 ([`calib::FLOAT`]): its float BitOPs buy back more
/// noise than the same BitOPs spread evenly. On SPAN x4 that is the concatenation's first
/// part alone (the first conv's output, +-52, straight to the upsampler): 23% of the 8-bit
/// noise from 0.6% of the multiply-accumulates (ratio 61; the next layer's is 6.7). Kept in
/// f32 it raised the held-out set at w8a8 by 0.5 dB for 8.6% more body BitOPs.
pub const FLOAT_COST: f64 = 16.0;

/// Each layer's share of the summed output noise over its share of the summed
/// multiply-accumulates (noise as 10^(-PSNR/10), which adds across layers to within 0.25 dB
/// on SPAN x4: 47.50 dB summed against 47.75 measured with all layers at 8 bits).
fn noise_per_mac(noise: &[f64], macs: &[f64]) -> Vec<f64> {
    let (tn, tm) = (noise.iter().sum::<f64>(), macs.iter().sum::<f64>());
    noise
        .iter()
        .zip(macs)
        .map(|(n, m)| {
            if tn > 0.0 && *m > 0.0 {
                (n / tn) / (m / tm)
            } else {
                0.0
            }
        })
        .collect()
}

/// The layers to keep in f32: the one with the highest [`noise_per_mac`] while it reaches
/// [`FLOAT_COST`], then the same among the others, the float ones left out of both sums (so
/// one catastrophic layer does not hide the next: SPAN x2's block_1/c2_r alone leaves 1.3 dB
/// at 8 bits and takes all the noise, and without it conv_cat#0 decides).
fn float_layers(noise: &[f64], macs: &[f64]) -> Vec<usize> {
    let mut float = Vec::new();
    loop {
        let (n, m): (Vec<f64>, Vec<f64>) = (0..noise.len())
            .map(|i| {
                if float.contains(&i) {
                    (0.0, 0.0)
                } else {
                    (noise[i], macs[i])
                }
            })
            .unzip();
        let worst = noise_per_mac(&n, &m)
            .into_iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1));
        match worst {
            Some((i, r)) if r >= FLOAT_COST => float.push(i),
            _ => return float,
        }
    }
}

/// The fewest of [`REPORT_BITS`] at which `psnr` (per bit-width) stays at [`FLOOR_DB`] or
/// more, and at every wider one: 8 when none does.
fn floor_of(psnr: &BTreeMap<u32, f64>) -> u32 {
    let mut floor = 8;
    let mut bits: Vec<u32> = REPORT_BITS.to_vec();
    bits.sort_unstable_by(|a, b| b.cmp(a));
    for b in bits {
        match psnr.get(&b) {
            Some(&p) if p >= FLOOR_DB => floor = b,
            _ => break,
        }
    }
    floor
}

/// What a sensitivity run quantizes.
#[derive(Clone, Copy)]
enum Quantized {
    /// Every layer, as the mode runs.
    All,
    /// Only this body layer's input (the integer layer with 8-bit weights).
    Input(usize),
    /// Only this body layer's weights (the float layer with the integer layer's weights and
    /// bias).
    Weights(usize),
}

/// The floor [`floor_of`] gives, measuring narrowest first and stopping at the first width
/// that reaches [`FLOOR_DB`]: the wider ones are taken to pass too (quantization noise only
/// shrinks with more bits; on every layer of the SPAN x4 and x2 reports, each wider width
/// measured higher). The widest is never measured where a narrower one passes, nor where
/// none does (the floor is then the widest either way). `measured` holds what is known and
/// gets what `measure` runs.
fn search_floor(
    measured: &mut BTreeMap<u32, f64>,
    measure: &mut dyn FnMut(u32) -> Result<f64>,
) -> Result<u32> {
    let mut bits: Vec<u32> = REPORT_BITS.to_vec();
    bits.sort_unstable();
    let widest = bits.pop().unwrap_or(8);
    for b in bits {
        let p = match measured.get(&b) {
            Some(&p) => p,
            None => {
                let p = measure(b)?;
                measured.insert(b, p);
                p
            }
        };
        if p >= FLOOR_DB {
            return Ok(b);
        }
    }
    Ok(widest)
}

/// How much each quantized layer costs the output: what to keep at higher precision, where
/// per-channel bounds pay, and what the mode-wide figures of `eval` are made of.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sensitivity {
    pub format: String,
    pub model: String,
    pub images: usize,
    pub patches: usize,
    /// PSNR (dB) of the output against the fp32 model's in mode wXaX as it runs: every body
    /// layer at X bits, raised to the floors the calibration already holds.
    pub all: BTreeMap<u32, f64>,
    pub layers: Vec<LayerSensitivity>,
}

/// One body convolution in a [`Sensitivity`] report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerSensitivity {
    pub name: String,
    pub in_ch: usize,
    /// PSNR (dB) against the fp32 output with only this layer's input quantized to X bits
    /// (in integers, its weights at 8 bits).
    pub activations: BTreeMap<u32, f64>,
    /// The same with only its weights quantized to X bits (fake-quantized, float input).
    pub weights_only: BTreeMap<u32, f64>,
    /// The fewest bits (weights, input) that keep this layer alone at [`FLOOR_DB`] or more,
    /// or f32 ([`calib::FLOAT`], see [`FLOAT_COST`]): what the calibration's per-layer spec
    /// records.
    pub floor: [u32; 2],
    /// Its share of the 8-bit output noise over its share of the body's
    /// multiply-accumulates, all layers counted (see [`FLOAT_COST`] and [`float_layers`]).
    pub noise_per_mac: f64,
    /// The input's range on the calibration images, and its calibrated bounds per bit-width.
    pub min: f32,
    pub max: f32,
    pub bounds: BTreeMap<u32, [f32; 2]>,
    /// The widest input channel's largest magnitude over the median channel's: where it is
    /// large, one per-tensor step is coarse for most channels and per-channel bounds pay.
    pub channel_spread: f32,
    /// Share of the input values outside the 8-bit bounds (clipped at w8a8).
    pub clipped_8: f64,
}

/// The sensitivity of every body layer of `graph` (calibrated by `calib`) on at most
/// `max_patches` patches of the images under `dir`; `progress(done, total)` per model run.
/// With `full`, every layer at every width of [`REPORT_BITS`] and the whole mode at each (the
/// report); without, only what the floors need ([`search_floor`]: on SPAN x4 about two
/// thirds of the runs), the other entries left out.
pub fn sensitivity(
    ctx: Arc<Context>,
    graph: &Graph,
    calib: &Calibration,
    dir: &Path,
    max_patches: usize,
    full: bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Sensitivity> {
    use crate::quant::{effective_weights, int_layer, int_layers, Bounds, Mode};
    let (images, _) = load_images(dir)?;
    let all = patches_of(&images);
    // evenly spread over the images
    let step = all.len().div_ceil(max_patches.max(1));
    let patches: Vec<&Patch> = all.iter().step_by(step.max(1)).collect();
    let inputs: Vec<Vec<f32>> = patches
        .iter()
        .map(|p| p.input(&images[p.image].1))
        .collect();
    let graph = crate::quant::prepare(graph.clone());
    let body = calib::body_convs(&graph);
    // the floors alone measure at most the input at every width and the weights at all but
    // the widest ([`search_floor`])
    let runs = match full {
        true => 1 + (1 + 2 * body.len()) * REPORT_BITS.len(),
        false => 1 + body.len() * (2 * REPORT_BITS.len() - 1),
    };
    let mut done = 0;
    progress(0, runs);

    // Every patch through `model`; `visit` sees the plan after each run.
    let mut outputs = |model: &GpuModel,
                       keep: &[ValueId],
                       visit: &mut dyn FnMut(&Plan, &Patch) -> Result<()>|
     -> Result<Vec<Vec<f32>>> {
        let mut plans: Vec<((usize, usize), Plan)> = Vec::new();
        let mut out = Vec::new();
        for (p, x) in patches.iter().zip(&inputs) {
            let plan = plan_for(&mut plans, model, p.size, keep)?;
            out.push(plan.run(x)?);
            visit(plan, p)?;
        }
        done += 1;
        progress(done, runs);
        Ok(out)
    };

    // fp32 reference, with each body layer's input statistics
    let keep: Vec<ValueId> = body.iter().map(|&j| graph.nodes[j].inputs[0]).collect();
    let channels: Vec<usize> = keep.iter().map(|&v| graph.values[v].channels).collect();
    let mut absmax: Vec<Vec<f32>> = channels.iter().map(|&c| vec![0f32; c]).collect();
    let mut clipped = vec![(0u64, 0u64); body.len()];
    let model = GpuModel::new(ctx.clone(), graph.clone())?;
    let reference = outputs(&model, &keep, &mut |plan, p| {
        let plane = p.size.0 * p.size.1;
        for (l, &v) in keep.iter().enumerate() {
            let [a, b] = calib.layers[l].bounds[&8];
            for (i, &x) in plan.read_value(v)?.iter().enumerate() {
                let c = (i / 4 / plane) * 4 + i % 4;
                if c < channels[l] {
                    absmax[l][c] = absmax[l][c].max(x.abs());
                    clipped[l].0 += u64::from(x < a || x > b);
                    clipped[l].1 += 1;
                }
            }
        }
        Ok(())
    })?;
    drop(model);
    let psnr = |got: &[Vec<f32>]| -> f64 {
        let (mut se, mut n) = (0f64, 0usize);
        for (g, r) in got.iter().zip(&reference) {
            // C4HW with 3 channels: lane 3 of each pixel is padding
            for (i, (a, b)) in g.iter().zip(r).enumerate() {
                if i % 4 < 3 {
                    se += ((a - b) as f64).powi(2);
                    n += 1;
                }
            }
        }
        let mse = se / n.max(1) as f64;
        if mse == 0.0 {
            f64::INFINITY
        } else {
            10.0 * (1.0 / mse).log10()
        }
    };
    let mut none = |_: &Plan, _: &Patch| Ok(());

    let mut report_all = BTreeMap::new();
    let mut layers: Vec<LayerSensitivity> = body
        .iter()
        .enumerate()
        .map(|(l, &j)| {
            let mut sorted = absmax[l].clone();
            sorted.sort_by(f32::total_cmp);
            let median = sorted[sorted.len() / 2].max(f32::MIN_POSITIVE);
            let lb = &calib.layers[l];
            LayerSensitivity {
                name: graph.nodes[j].name.clone(),
                in_ch: channels[l],
                activations: BTreeMap::new(),
                weights_only: BTreeMap::new(),
                floor: [8, 8],
                noise_per_mac: 0.0,
                min: lb.min,
                max: lb.max,
                bounds: REPORT_BITS.iter().map(|b| (*b, lb.bounds[b])).collect(),
                channel_spread: sorted.last().copied().unwrap_or(0.0) / median,
                clipped_8: clipped[l].0 as f64 / clipped[l].1.max(1) as f64,
            }
        })
        .collect();
    // one model run over every patch, with what `q` says quantized to `bits`
    let mut measure = |q: Quantized, bits: u32| -> Result<f64> {
        let model = match q {
            Quantized::All => {
                let int = int_layers(
                    &graph,
                    Mode::Uniform { w: bits, a: bits },
                    calib,
                    Bounds::Channel,
                );
                GpuModel::quantized(ctx.clone(), graph.clone(), int)?
            }
            Quantized::Input(l) | Quantized::Weights(l) => {
                let j = body[l];
                let Op::Conv(c) = &graph.nodes[j].op else {
                    unreachable!("body_convs lists convolutions")
                };
                let (act, mean) = (
                    calib.quantizer(l, bits, Bounds::Channel),
                    &calib.layers[l].mean,
                );
                if let Quantized::Input(_) = q {
                    let one = [(
                        j,
                        int_layer(c, 8, act.clone(), mean, Bounds::Channel, None, &[]),
                    )];
                    GpuModel::quantized(ctx.clone(), graph.clone(), one.into())?
                } else {
                    let mut g = graph.clone();
                    g.nodes[j].op = Op::Conv(effective_weights(
                        c,
                        bits,
                        &act,
                        mean,
                        Bounds::Channel,
                        None,
                        &[],
                    ));
                    GpuModel::new(ctx.clone(), g)?
                }
            }
        };
        Ok(psnr(&outputs(&model, &[], &mut none)?))
    };
    if full {
        for bits in REPORT_BITS {
            report_all.insert(bits, measure(Quantized::All, bits)?);
            for (l, layer) in layers.iter_mut().enumerate() {
                layer
                    .activations
                    .insert(bits, measure(Quantized::Input(l), bits)?);
                layer
                    .weights_only
                    .insert(bits, measure(Quantized::Weights(l), bits)?);
            }
        }
    } else {
        for (l, layer) in layers.iter_mut().enumerate() {
            // every layer's 8-bit input noise decides which layers stay in f32
            layer
                .activations
                .insert(8, measure(Quantized::Input(l), 8)?);
            let a = search_floor(&mut layer.activations, &mut |b| {
                measure(Quantized::Input(l), b)
            })?;
            let w = search_floor(&mut layer.weights_only, &mut |b| {
                measure(Quantized::Weights(l), b)
            })?;
            layer.floor = [w, a];
        }
    }
    progress(runs, runs);
    if full {
        for l in &mut layers {
            l.floor = [floor_of(&l.weights_only), floor_of(&l.activations)];
        }
    }
    let macs: Vec<f64> = body
        .iter()
        .map(|&j| {
            crate::quant::accounting::conv_macs(&graph, &graph.nodes[j], 1.0, 1.0)
                .expect("body layers are convolutions")
        })
        .collect();
    let noise: Vec<f64> = layers
        .iter()
        .map(|l| l.activations.get(&8).map_or(0.0, |p| 10f64.powf(-p / 10.0)))
        .collect();
    let float = float_layers(&noise, &macs);
    for (i, share) in noise_per_mac(&noise, &macs).into_iter().enumerate() {
        layers[i].noise_per_mac = share;
        if float.contains(&i) {
            layers[i].floor = [calib::FLOAT; 2];
        }
    }
    Ok(Sensitivity {
        format: REPORT_FORMAT.into(),
        model: graph.name.clone(),
        images: images.len(),
        patches: patches.len(),
        all: report_all,
        layers,
    })
}

impl Sensitivity {
    /// A markdown table: one row per layer, the PSNR against fp32 at each bit-width.
    pub fn markdown(&self) -> String {
        let bits = |f: &dyn Fn(u32) -> String| {
            REPORT_BITS
                .iter()
                .map(|&b| f(b))
                .collect::<Vec<_>>()
                .join(" | ")
        };
        let n = REPORT_BITS.len();
        let mut t = format!(
            "| layer | in | {} | {} | floor (w, a) | noise / MACs | range | channel spread | clipped at 8 bits |\n|---|---|{}---|---|---|---|---|\n",
            bits(&|b| format!("a{b} dB")),
            bits(&|b| format!("w{b} dB")),
            "---|".repeat(2 * n),
        );
        let db = |x: Option<&f64>| x.map_or("-".into(), |v| format!("{v:.2}"));
        t += &format!(
            "| all (wXaX) | - | {} | {} | - | - | - | - | - |\n",
            bits(&|b| db(self.all.get(&b))),
            bits(&|_| "-".into())
        );
        for l in &self.layers {
            t += &format!(
                "| {} | {} | {} | {} | {} | {:.2} | [{:.3}, {:.3}] | {:.1} | {:.4}% |\n",
                l.name,
                l.in_ch,
                bits(&|b| db(l.activations.get(&b))),
                bits(&|b| db(l.weights_only.get(&b))),
                match l.floor {
                    [calib::FLOAT, _] => "f32".to_string(),
                    [w, a] => format!("{w}, {a}"),
                },
                l.noise_per_mac,
                l.min,
                l.max,
                l.channel_spread,
                100.0 * l.clipped_8
            );
        }
        t
    }

    /// Record each layer's floor in `calib` (the per-layer spec). A part that passed at the
    /// narrowest bits measured constrains nothing (floor 2); a layer with no constraint gets
    /// no floor.
    pub fn apply(&self, calib: &mut Calibration) {
        let narrowest = REPORT_BITS.iter().copied().min().unwrap_or(8);
        let lowest = *calib::BITS.start();
        for (c, l) in calib.layers.iter_mut().zip(&self.layers) {
            let f = l.floor.map(|b| if b == narrowest { lowest } else { b });
            c.floor = (f != [lowest; 2]).then_some(f);
        }
    }

    /// Write as pretty JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("report serializes");
        crate::imageio::atomic_write(path, |w| {
            std::io::Write::write_all(w, text.as_bytes()).map_err(|e| Error::io(path, e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_goes_float_where_its_noise_share_far_outweighs_its_macs() {
        // four layers of equal noise; the last has 1/100 of the others' MACs: its share of
        // the noise (1/4) is 75x its share of the MACs (1/301), the others' under 1
        let noise = [1e-6, 1e-6, 1e-6, 1e-6];
        let macs = [100.0, 100.0, 100.0, 1.0];
        let r = noise_per_mac(&noise, &macs);
        let want_last = 0.25 / (1.0 / 301.0);
        assert!((r[3] - want_last).abs() < 1e-9, "{r:?}");
        assert!(
            r[3] >= FLOAT_COST && r[..3].iter().all(|&x| x < 1.0),
            "{r:?}"
        );
        // no noise at all: nothing to buy back
        assert!(noise_per_mac(&[0.0; 3], &[1.0; 3])
            .iter()
            .all(|&x| x == 0.0));
        assert_eq!(float_layers(&noise, &macs), [3]);
        // a catastrophic layer takes all the noise; the next small noisy one still goes
        // float once the first is out of the sums, the even ones do not
        let noise = [1.0, 1e-6, 1e-6, 1e-6, 1e-6];
        let macs = [10.0, 1.0, 100.0, 100.0, 100.0];
        assert!(noise_per_mac(&noise, &macs)[1] < 1e-3);
        assert_eq!(float_layers(&noise, &macs), [0, 1]);
        assert!(float_layers(&[1e-6; 4], &[1.0; 4]).is_empty());
    }

    #[test]
    fn a_floor_is_the_fewest_bits_from_which_every_wider_width_passes() {
        let m = |v: [f64; 3]| -> BTreeMap<u32, f64> { [8, 6, 4].into_iter().zip(v).collect() };
        assert_eq!(floor_of(&m([60.0, 50.0, 46.0])), 4);
        assert_eq!(floor_of(&m([60.0, 50.0, 30.0])), 6);
        assert_eq!(floor_of(&m([56.0, 7.0, 0.5])), 8);
        // a narrow width that passes does not count past a wider one that fails
        assert_eq!(floor_of(&m([60.0, 40.0, 50.0])), 8);
        assert_eq!(floor_of(&m([40.0, 60.0, 60.0])), 8);
    }

    #[test]
    fn the_floor_search_agrees_with_the_whole_table_where_more_bits_never_cost_more() {
        // every monotone curve over the widths, on a grid of PSNRs around FLOOR_DB
        let levels = [0.5, 30.0, FLOOR_DB - 0.01, FLOOR_DB, 50.0, 70.0];
        let mut saved = 0;
        for &p4 in &levels {
            for &p6 in levels.iter().filter(|&&p| p >= p4) {
                for &p8 in levels.iter().filter(|&&p| p >= p6) {
                    let table: BTreeMap<u32, f64> = [(8, p8), (6, p6), (4, p4)].into();
                    let mut measured = BTreeMap::new();
                    let mut runs = Vec::new();
                    let floor = search_floor(&mut measured, &mut |b| {
                        runs.push(b);
                        Ok(table[&b])
                    })
                    .unwrap();
                    assert_eq!(floor, floor_of(&table), "{table:?}");
                    // the widest is never run, nothing twice, and what ran is recorded
                    assert!(!runs.contains(&8) && runs.len() <= 2, "{runs:?}");
                    assert!(runs.iter().all(|b| measured[b] == table[b]));
                    saved += 3 - runs.len();
                }
            }
        }
        assert!(saved > 0);
        // what is already known is not run again
        let mut measured: BTreeMap<u32, f64> = [(4, 50.0)].into();
        let floor = search_floor(&mut measured, &mut |b| panic!("ran {b}")).unwrap();
        assert_eq!(floor, 4);
    }
}
