//! What `refqsr calibrate` fits for RefQSR: ClustBlock's activation ranges and prototypes,
//! and for each mode RefER's convs, trained.
//!
//! RefER should turn the aligned difference `D = Fq - warp(Fr)` into the query's quantization
//! error `F_fp32 - Fq`. On calibration images downscaled as `eval` does, the references are
//! chosen as at inference, every model's tap features are computed on the GPU, the alignment
//! by the CPU twins of the RefER kernels, and RefER's two 3x3 convs are trained on those
//! pairs against the fp32 output ([`crate::quant::refer`]). Each fit is then judged where it
//! matters: the mode runs as at inference on images the fit never saw, and the share of the
//! correction it applies (its gain, 0 to switch it off) is the one that brings the output
//! closest to fp32's.

use std::collections::BTreeMap;
use std::sync::Arc;

use image::imageops::{self, FilterType};
use image::Rgb32FImage;

use super::clust::{self, ClustBlock, ClustParams};
use super::{select, tap, Params, ReferParams, FORMAT, GAINS, HALO, PATCH};
use crate::error::Result;
use crate::exec::GpuModel;
use crate::gpu::Context;
use crate::kernels::cpu;
use crate::model::Graph;
use crate::quant::refer::{Options as LearnOptions, Sample};
use crate::quant::{Bounds, Calibration, Mode};
use crate::tile::Grid;

/// ClustBlock classes.
pub const CLASSES: usize = 32;
/// Clip of RefER's pooled unit features at `bits`, in units of their RMS (1/sqrt(C)): the
/// MSE-optimal clip of a uniform quantizer on a bell-shaped distribution grows with the bits.
pub fn clip(bits: u32, channels: usize) -> f32 {
    let sigmas = [1.0, 1.0, 1.0, 1.7, 2.4, 2.9, 3.3, 3.6, 4.0][bits.min(8) as usize];
    sigmas / (channels as f32).sqrt()
}

/// Windows of every image, cut as RefQSR cuts them: (grid, windows).
fn windows(images: &[Rgb32FImage]) -> Vec<(Grid, Vec<f32>)> {
    images
        .iter()
        .map(|img| {
            let grid = Grid::new(img.width() as usize, img.height() as usize, PATCH, HALO, 0);
            let win = grid.extract_all(img);
            (grid, win)
        })
        .collect()
}

/// Fit ClustBlock on `images` (windows at native size and downscaled by `scale`).
pub fn fit_clust(ctx: &Arc<Context>, images: &[Rgb32FImage], scale: u32) -> Result<ClustParams> {
    let mut all = images.to_vec();
    all.extend(images.iter().map(|i| downscale(i, scale)));
    let float = GpuModel::new(ctx.clone(), clust::graph())?;
    let mut ranges = [0f32; 2];
    let mut sets = Vec::new();
    for (grid, win) in windows(&all) {
        let (h, w) = grid.input_size();
        let (bh, bw) = clust::blocks(h, w);
        let per = h * w * 4;
        for chunk in win.chunks(per * clust::GROUP) {
            let m = chunk.len() / per;
            let plan = float.plan_keeping(m, bh, bw, &[1, 2])?;
            plan.run(&clust::blocks_input(chunk, h, w))?;
            for (r, v) in ranges.iter_mut().zip([1, 2]) {
                *r = plan.read_value(v)?.iter().copied().fold(*r, f32::max);
            }
        }
        sets.push((grid, win));
    }
    let mut params = ClustParams {
        ranges,
        prototypes: vec![vec![0.0; clust::FEATURES]],
    };
    let cb = ClustBlock::new(ctx.clone(), params.clone())?;
    let mut descriptors = Vec::new();
    for (grid, win) in &sets {
        let (h, w) = grid.input_size();
        let d = cb.descriptors(win, grid.tiles.len(), h, w, None)?;
        descriptors.extend(d.chunks(clust::FEATURES).map(clust::normalise));
    }
    params.prototypes = clust::kmeans(&descriptors, CLASSES, 20);
    Ok(params)
}

/// `img` downscaled by `s` as `eval` makes its inputs.
pub fn downscale(img: &Rgb32FImage, s: u32) -> Rgb32FImage {
    let (w, h) = ((img.width() / s).max(1), (img.height() / s).max(1));
    imageops::resize(img, w, h, FilterType::CatmullRom)
}

/// Tap features (one Vec per window) of `model` on the windows `ids` of `win`.
fn taps(
    model: &GpuModel,
    tap: usize,
    win: &[f32],
    ids: &[usize],
    h: usize,
    w: usize,
) -> Result<Vec<Vec<f32>>> {
    let per = h * w * 4;
    let mut out = Vec::new();
    for chunk in ids.chunks(8) {
        let plan = model.plan_keeping(chunk.len(), h, w, &[tap])?;
        let input: Vec<f32> = chunk
            .iter()
            .flat_map(|&i| win[i * per..(i + 1) * per].iter().copied())
            .collect();
        plan.run(&input)?;
        let f = plan.read_value(tap)?;
        out.extend(f.chunks(f.len() / chunk.len()).map(<[f32]>::to_vec));
    }
    Ok(out)
}

/// How well one mode's RefER fit does on its own data.
pub struct ReferFit {
    pub params: ReferParams,
    /// Mean squared error of the query taps against fp32, before and after RefER.
    pub mse: [f64; 2],
    pub pairs: usize,
    /// PSNR-Y (dB) of the mode's output against the fp32 model's on the held-out images, for
    /// each of [`GAINS`] (measured at 0, 0.5 and 1, the others read off each image's
    /// parabola), and the gain chosen from them.
    pub judged: Vec<f64>,
    /// Whether [`ReferFit::judged`] comes from images the fit never saw.
    pub held_out: bool,
}

/// Fit RefER for each RefQSR mode of `modes` on `images` (downscaled by the model's scale and
/// cropped, [`lr_crop`]).
#[allow(clippy::too_many_arguments)]
pub fn fit_refer(
    ctx: &Arc<Context>,
    graph: &Graph,
    calib: &Calibration,
    clust_params: &ClustParams,
    images: &[Rgb32FImage],
    modes: &[Mode],
    opts: &LearnOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<ReferFit>> {
    let graph = crate::quant::prepare(graph.clone());
    let t = tap(&graph)?;
    let c = graph.values[t].channels;
    let tail = graph
        .nodes
        .iter()
        .rev()
        .find_map(|n| match &n.op {
            crate::model::Op::Conv(cv) => Some(cv.clone()),
            _ => None,
        })
        .expect("a graph with a tap has a last convolution");
    let total = modes.len() * opts.steps;
    let mut progress_of = |k: usize, d: usize| progress(k * opts.steps + d, total);
    let lr: Vec<Rgb32FImage> = images.iter().map(|i| lr_crop(i, graph.scale())).collect();
    let sets = windows(&lr);
    let cb = ClustBlock::new(ctx.clone(), clust_params.clone())?;
    let sels = sets
        .iter()
        .map(|(grid, win)| {
            let (h, w) = grid.input_size();
            let v = cb.logits(win, grid.tiles.len(), h, w, None)?;
            Ok(select::select(
                &v,
                grid.tiles.len(),
                clust_params.prototypes.len(),
                super::DEFAULT_TAU,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    // the fp32 taps of the queries do not depend on the mode: computed once
    let fp32 = GpuModel::new(ctx.clone(), graph.clone())?;
    let queries: Vec<Vec<usize>> = sels
        .iter()
        .map(|sel| {
            (0..sel.reference.len())
                .filter(|&i| !sel.is_reference(i))
                .collect()
        })
        .collect();
    // the tap features of `model` on the windows `ids[i]` of every image `i`
    let taps_of = |model: &GpuModel, ids: &[Vec<usize>]| {
        sets.iter()
            .zip(ids)
            .map(|((grid, win), ids)| {
                let (h, w) = grid.input_size();
                taps(model, t, win, ids, h, w)
            })
            .collect::<Result<Vec<_>>>()
    };
    let exact = taps_of(&fp32, &queries)?;
    let model = |w: u32, a: u32| {
        let layers =
            crate::quant::int_layers(&graph, Mode::Uniform { w, a }, calib, Bounds::Channel);
        GpuModel::quantized(ctx.clone(), graph.clone(), layers)
    };
    // each window's distinct references: their taps depend only on b_high, so they are
    // computed once per b_high for every query and mode that uses them (on SPAN x4, 5 modes
    // of 2 b_high, with about ten queries per reference, this halves the fit's model runs)
    let distinct: Vec<Vec<usize>> = sels
        .iter()
        .zip(&queries)
        .map(|(sel, q)| {
            let mut r: Vec<usize> = q.iter().map(|&q| sel.reference[q]).collect();
            r.sort_unstable();
            r.dedup();
            r
        })
        .collect();
    let mut reference_taps: BTreeMap<u32, Vec<Vec<Vec<f32>>>> = BTreeMap::new();
    let mut fits = Vec::new();
    progress_of(0, 0);
    for (k, &mode) in modes.iter().enumerate() {
        let Mode::RefQsr { high, low } = mode else {
            continue;
        };
        let reference_taps = match reference_taps.entry(high) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(taps_of(&model(high, high)?, &distinct)?)
            }
        };
        let query = GpuModel::quantized(
            ctx.clone(),
            graph.clone(),
            super::query_layers(&graph, calib, (high, low), Bounds::Channel),
        )?;
        let bits = low;
        let clip = clip(bits, c);
        let mut samples = Vec::new();
        for (image, ((((grid, win), sel), (queries, ff)), (refs, fr))) in (sets.iter().zip(&sels))
            .zip(queries.iter().zip(&exact))
            .zip(distinct.iter().zip(&*reference_taps))
            .enumerate()
        {
            let (h, w) = grid.input_size();
            if queries.is_empty() {
                continue;
            }
            let fq = taps(&query, t, win, queries, h, w)?;
            let fr = queries.iter().map(|&q| {
                let i = refs.binary_search(&sel.reference[q]);
                &fr[i.expect("every query's reference is among the distinct ones")]
            });
            for ((q, r), f) in fq.iter().zip(fr).zip(ff) {
                let cells = crate::exec::refer_cells(h, w);
                let cq = cpu::refer_prep(q, 1, c, h, w, bits, clip);
                let cr = cpu::refer_prep(r, 1, c, h, w, bits, clip);
                let e = cpu::cost_volume(&cq, &cr, 1, cells, c.div_ceil(4));
                let idx = cpu::argmax(&e, 1, cells);
                let d = cpu::warp(q, r, &idx, 1, c, h, w);
                // C4HW to planar
                let plane = h * w;
                let planar = |x: &dyn Fn(usize) -> f32| -> Vec<f32> {
                    (0..c * plane)
                        .map(|i| x(((i / plane / 4) * plane + i % plane) * 4 + (i / plane) % 4))
                        .collect()
                };
                samples.push(Sample {
                    d: planar(&|i| d[i]),
                    e: planar(&|i| f[i] - q[i]),
                    h,
                    w,
                    image,
                });
            }
        }
        let pairs = samples.len();
        let mut step = |d, _| progress_of(k, d);
        let trained = crate::quant::refer::train(&samples, c, &tail, high, opts, &mut step)?;
        fits.push(ReferFit {
            params: ReferParams {
                mode: mode.to_string(),
                clip,
                convs: trained.convs,
                gain: 1.0,
            },
            mse: trained.mse,
            pairs,
            judged: Vec::new(),
            held_out: false,
        });
    }
    Ok(fits)
}

/// Side of the centre crop of each low-resolution calibration image RefER is fitted and
/// judged on (input pixels): 16 patches. Calibration photos are about 768 pixels wide, so
/// at x4 this is the whole image; at x2 it keeps the fit's cost (its CPU cost volumes grow
/// with the queries) that of x4 instead of four times it.
pub const LR_CROP: usize = 4 * PATCH;

/// The centre crop of `img` downscaled by `s`, at most [`LR_CROP`] square.
pub fn lr_crop(img: &Rgb32FImage, s: u32) -> Rgb32FImage {
    let lr = downscale(img, s);
    let (w, h) = (
        lr.width().min(LR_CROP as u32),
        lr.height().min(LR_CROP as u32),
    );
    imageops::crop_imm(&lr, (lr.width() - w) / 2, (lr.height() - h) / 2, w, h).to_image()
}

/// The least gain over no RefER (dB, mean PSNR-Y against fp32 on the held-out images) for
/// which RefER is kept: below it the correction's BitOPs and time buy nothing measurable.
pub const MIN_GAIN_DB: f64 = 0.01;

/// The fp32 model's output on the patches of `img`, cut and merged as RefQSR cuts and merges
/// them (the target a RefQSR mode is judged against: the patches' own cost is then the same
/// for all).
fn fp32_patches(model: &GpuModel, img: &Rgb32FImage, grid: &Grid) -> Result<Rgb32FImage> {
    let (h, w) = grid.input_size();
    let s = model.graph.scale() as usize;
    let (per_in, per_out) = (h * w * 4, h * w * 4 * s * s);
    let win = grid.extract_all(img);
    let mut out = crate::tile::Feathered::new(grid, s);
    let ids: Vec<usize> = (0..grid.tiles.len()).collect();
    for chunk in ids.chunks(super::MAX_GROUP) {
        let plan = model.plan(chunk.len(), h, w)?;
        let y = plan.run(&win[chunk[0] * per_in..(chunk[chunk.len() - 1] + 1) * per_in])?;
        for (&i, src) in chunk.iter().zip(y.chunks(per_out)) {
            out.add(grid.tiles[i], src);
        }
    }
    Ok(out.finish())
}

/// Choose each RefER's gain (see [`ReferParams::gain`]) from [`GAINS`] by running its mode,
/// as it runs at inference (integer kernels, RefER's convs at b_high), on the low-resolution
/// `images` and comparing with the fp32 model's output: the training saw other images (with a
/// plain MSE loss, SPAN x4's refqsr:8-4 RefER gained 0.63 dB on its own photos and lost 0.02
/// on others at the whole gain), and a correction that does not pay there is switched off.
/// Each mode runs at
/// [`MEASURED_GAINS`]; the rest of [`GAINS`] are read off each image's parabola
/// ([`scores_by_gain`]). Returns the mean PSNR-Y of each mode at each gain, in the order of
/// `params.refer`.
pub fn judge_refer(
    ctx: &Arc<Context>,
    graph: &Graph,
    calib: &Calibration,
    params: &mut Params,
    images: &[Rgb32FImage],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Vec<f64>>> {
    let grids: Vec<Grid> = images
        .iter()
        .map(|img| Grid::new(img.width() as usize, img.height() as usize, PATCH, HALO, 0))
        .collect();
    let fp32 = GpuModel::new(ctx.clone(), graph.clone())?;
    let targets = images
        .iter()
        .zip(&grids)
        .map(|(img, grid)| Ok(crate::metrics::luma(&fp32_patches(&fp32, img, grid)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut references: BTreeMap<u32, GpuModel> = BTreeMap::new();
    let mut judged = Vec::new();
    let n = params.refer.len();
    progress(0, n);
    for k in 0..n {
        let mode: Mode = params.refer[k].mode.parse()?;
        let Mode::RefQsr { high, low } = mode else {
            return Err(crate::error::Error::Invalid(format!(
                "refer[{k}]: {mode} is not a RefQSR mode"
            )));
        };
        if let std::collections::btree_map::Entry::Vacant(e) = references.entry(high) {
            let layers = crate::quant::int_layers(
                graph,
                Mode::Uniform { w: high, a: high },
                calib,
                Bounds::Channel,
            );
            e.insert(GpuModel::quantized(ctx.clone(), graph.clone(), layers)?);
        }
        let reference = &references[&high];
        // each image's output MSE (relative to 255^2) at each measured gain
        let mut measured: Vec<Vec<f64>> = Vec::new();
        for gain in MEASURED_GAINS {
            let mut trial = params.clone();
            trial.refer[k].gain = gain;
            let engine = super::RefQsr::new(
                ctx.clone(),
                graph,
                (high, low),
                calib,
                Bounds::Channel,
                &trial,
                super::DEFAULT_TAU,
                super::Ablation::None,
            )?;
            let mut mse = Vec::new();
            for ((img, grid), target) in images.iter().zip(&grids).zip(&targets) {
                let out = engine.run(reference, img, grid, 1 << 30, &mut |_, _| {}, None)?;
                let db = crate::metrics::psnr(&crate::metrics::luma(&out), target);
                mse.push(10f64.powf(-db / 10.0));
            }
            measured.push(mse);
        }
        let scores = scores_by_gain(&measured);
        params.refer[k].gain = choose_gain(&scores);
        judged.push(scores);
        progress(k + 1, n);
    }
    Ok(judged)
}

/// The gains [`judge_refer`] runs each mode at: the ends and the middle of [`GAINS`].
const MEASURED_GAINS: [f32; 3] = [0.0, 0.5, 1.0];

/// The mean PSNR-Y (dB, each image capped at [`crate::eval::MAX_FIDELITY_DB`]) at each of
/// [`GAINS`] from each image's output MSE at [`MEASURED_GAINS`] (`measured[gain][image]`):
/// measured where [`judge_refer`] ran the gain, else read off the parabola through the
/// image's three MSEs. RefER adds the gain times its correction to the tap; if the tail
/// responded linearly, the output's error would be exactly quadratic in the gain. It does
/// not quite (the tail requantizes, and its gates are nonlinear), but on SPAN x4 (five modes,
/// four judging photos) the parabola put the mean at 0.25 and 0.75 within 0.002 dB of the
/// runs it saves (two of every five) in 9 of 10 cases and 0.014 dB in the last (refqsr:4-2
/// at 0.75), and every mode kept the gain the five runs chose.
fn scores_by_gain(measured: &[Vec<f64>]) -> Vec<f64> {
    let [m0, m1, m2] = [&measured[0], &measured[1], &measured[2]];
    let n = m0.len().max(1) as f64;
    let db = |mse: f64| (-10.0 * mse.max(0.0).log10()).min(crate::eval::MAX_FIDELITY_DB);
    GAINS
        .iter()
        .map(|&g| {
            let sum: f64 = (0..m0.len())
                .map(|i| match MEASURED_GAINS.iter().position(|&m| m == g) {
                    Some(j) => db(measured[j][i]),
                    None => {
                        let (a, b, c) = (
                            m0[i],
                            -3.0 * m0[i] + 4.0 * m1[i] - m2[i],
                            2.0 * (m0[i] - 2.0 * m1[i] + m2[i]),
                        );
                        let g = g as f64;
                        db(a + b * g + c * g * g)
                    }
                })
                .sum();
            sum / n
        })
        .collect()
}

/// The gain of [`GAINS`] whose score (dB) is highest, unless it beats no RefER (the first)
/// by less than [`MIN_GAIN_DB`]; ties go to the smaller gain.
fn choose_gain(scores: &[f64]) -> f32 {
    let best = (1..scores.len()).fold(0, |b, i| if scores[i] > scores[b] { i } else { b });
    if scores[best] - scores[0] < MIN_GAIN_DB {
        0.0
    } else {
        GAINS[best]
    }
}

/// ClustBlock and RefER for `modes`, as one parameters file for `graph`. Three of every four
/// images (all of them when there are fewer than four) fit ClustBlock and RefER; the fourth
/// judges each RefER's gain ([`judge_refer`]).
pub fn fit(
    ctx: &Arc<Context>,
    graph: &Graph,
    calib: &Calibration,
    images: &[Rgb32FImage],
    modes: &[Mode],
    opts: &LearnOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Params, Vec<ReferFit>)> {
    let held_out = images.len() >= 4;
    let (fit_on, judge_on): (Vec<_>, Vec<_>) = if !held_out {
        (images.to_vec(), images.to_vec())
    } else {
        let (a, b): (Vec<_>, Vec<_>) = images.iter().enumerate().partition(|(i, _)| i % 4 != 3);
        (
            a.into_iter().map(|(_, i)| i.clone()).collect(),
            b.into_iter().map(|(_, i)| i.clone()).collect(),
        )
    };
    let clust = fit_clust(ctx, &fit_on, graph.scale())?;
    // training and judging a mode count alike
    let total = 2 * modes.len() * opts.steps.max(1);
    let mut fits = fit_refer(
        ctx,
        graph,
        calib,
        &clust,
        &fit_on,
        modes,
        opts,
        &mut |d, _| progress(d, total),
    )?;
    let mut params = Params {
        format: FORMAT.into(),
        model: graph.name.clone(),
        clust,
        refer: fits.iter().map(|f| f.params.clone()).collect(),
    };
    let lr: Vec<Rgb32FImage> = judge_on.iter().map(|i| lr_crop(i, graph.scale())).collect();
    let judged = judge_refer(ctx, graph, calib, &mut params, &lr, &mut |d, n| {
        progress(total / 2 + d * (total / 2) / n.max(1), total)
    })?;
    for ((f, p), j) in fits.iter_mut().zip(&params.refer).zip(judged) {
        f.params.gain = p.gain;
        f.judged = j;
        f.held_out = held_out;
    }
    Ok((params, fits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gains_between_the_measured_ones_are_read_off_each_images_parabola() {
        // two images whose MSE is exactly quadratic in the gain, and one whose MSE does not
        // change: the scores are the means of the true PSNRs at every gain
        let curves: [fn(f64) -> f64; 3] = [
            |g| 1e-4 * (1.0 - 0.8 * g + 0.5 * g * g),
            |g| 3e-5 * (1.0 + 0.3 * g * g),
            |_| 2e-5,
        ];
        let measured: Vec<Vec<f64>> = (MEASURED_GAINS.iter())
            .map(|&g| curves.iter().map(|f| f(g as f64)).collect())
            .collect();
        let scores = scores_by_gain(&measured);
        for (&g, got) in GAINS.iter().zip(&scores) {
            let want = curves
                .iter()
                .map(|f| -10.0 * f(g as f64).log10())
                .sum::<f64>()
                / 3.0;
            assert!((got - want).abs() < 1e-9, "gain {g}: {got} against {want}");
        }
        // an image the mode computes exactly is capped, not infinite
        let exact = vec![vec![0.0]; 3];
        assert!(scores_by_gain(&exact)
            .iter()
            .all(|&s| s == crate::eval::MAX_FIDELITY_DB));
    }

    #[test]
    fn a_gain_is_kept_only_where_it_beats_no_refer_measurably() {
        assert_eq!(GAINS[0], 0.0);
        // the best gain wins
        assert_eq!(choose_gain(&[30.0, 30.2, 30.3, 30.1, 29.0]), 0.5);
        assert_eq!(choose_gain(&[30.0, 30.1, 30.2, 30.3, 30.4]), 1.0);
        // no RefER is best, or the best gains less than MIN_GAIN_DB
        assert_eq!(choose_gain(&[30.0, 29.9, 29.5, 29.0, 28.0]), 0.0);
        let small = 30.0 + MIN_GAIN_DB / 2.0;
        assert_eq!(choose_gain(&[30.0, small, 29.5, 29.0, 28.0]), 0.0);
        // ties go to the smaller gain
        assert_eq!(choose_gain(&[30.0, 30.5, 30.5, 30.5, 30.0]), 0.25);
    }
}
