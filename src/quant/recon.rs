//! Reconstruction calibration (issue 12): learn the per-channel input steps and the
//! per-output-channel weight clips of every integer layer against the float model's own
//! output, on calibration crops, with no HR images (distillation, as 2DQuant's DQC and PTQ4SR
//! do after their bound initialisation).
//!
//! The searched steps of [`super::calib::channel_steps`] minimise each layer's own input error;
//! what a user sees is the output, where the errors of all layers meet, pass through the gates
//! and the upsampler, and partly cancel. Here the whole network runs on the CPU in candle, in
//! float, with every integer layer's input fake-quantized as Eq. 1 does it (per-channel step,
//! code ranges, codes clamped to `lo..lo + 2^b`) and its weights quantized as
//! [`super::fold_layer`] does (folded with the steps, per output channel over `[-r m, r m]`,
//! `m` the largest magnitude and `r` the learned clip, bias-corrected), with the same float
//! operations, so that the codes agree to the last bit (a unit test holds them to
//! [`super::effective_weights`]). The rounding passes the gradient straight through and the
//! clamps stop it outside the codes, so the gradients of the log-steps and log-clips are
//! LSQ's. Adam minimises the mean squared error against the float output, its rate decayed
//! linearly to zero. Layers whose steps are held fixed run with [`super::effective_weights`],
//! rebuilt every [`Options::refresh`] steps.
//!
//! Why candle: its tape autodiff and multi-threaded GEMM cover
//! every op the graph uses but the convolutions: candle's own (a strided im2col) took about
//! 40% of a step, and its backward transposes with a per-pixel dot product and always
//! computes the weight gradient. So the convolutions are custom ops on [`super::cpu_conv`]
//! whose backward is a forward convolution for the input gradient, by the flipped kernel
//! ([`FixedConv`], constant weights), plus the weight gradient where the weights learn
//! ([`LearnedConv`]).
//!
//! What is learned is kept only where it lowers the error on held-out crops
//! ([`Outcome::kept`]); the previous steps stay otherwise.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Device, Layout, Shape, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use image::Rgb32FImage;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::calib::{self, body_convs, Bounds, Calibration, ChannelSteps};
use super::{cpu_conv, effective_weights, ActQuant, Mode};
use crate::error::{Error, Result};
use crate::model::{Activation, BinaryKind, Conv, Epilogue, Graph, Op, Rhs};

/// The knobs of one reconstruction.
#[derive(Debug, Clone)]
pub struct Options {
    /// Optimizer steps.
    pub steps: usize,
    /// Crops per step.
    pub batch: usize,
    /// Side of the square crops (input pixels); smaller images are not used.
    pub crop: usize,
    /// Adam's initial learning rate on the log-steps (a step moves by about this fraction per
    /// optimizer step), decayed linearly to zero.
    pub lr: f64,
    /// Seed of the crop sampler.
    pub seed: u64,
    /// Steps between rebuilds of the quantized weights from the current steps.
    pub refresh: usize,
    /// Held-out crops the result is judged on.
    pub holdout: usize,
    /// Also learn the weights' clipping per output channel.
    pub weights: bool,
    /// (body layer, bits) whose input steps stay as they are: learned by an earlier mode of
    /// the same run.
    pub fixed_steps: BTreeSet<(usize, u32)>,
    /// (body layer, weight bits) whose clips stay as they are.
    pub fixed_clips: BTreeSet<(usize, u32)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            steps: 150,
            batch: 4,
            crop: 40,
            lr: 0.02,
            seed: 12,
            refresh: 10,
            holdout: 16,
            weights: true,
            fixed_steps: BTreeSet::new(),
            fixed_clips: BTreeSet::new(),
        }
    }
}

/// The smallest crop worth learning from: a 3x3 convolution's padding touches most of a
/// smaller one.
pub const MIN_CROP: usize = 8;

/// What one reconstruction did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub mode: Mode,
    /// Layers whose steps were learned.
    pub layers: usize,
    /// PSNR (RGB, against the float output) on the held-out crops with the previous steps and
    /// with the learned ones.
    pub psnr: [f64; 2],
    /// Whether the learned steps were written (they beat the previous ones).
    pub kept: bool,
    /// What was written: (body layer, input bits, weight bits where the clip was learned).
    pub learned: Vec<(usize, u32, Option<u32>)>,
}

fn cerr(e: candle_core::Error) -> Error {
    candle_error("reconstruction calibration", e)
}

/// A candle error as ours, under `what` failed.
pub(crate) fn candle_error(what: &str, e: candle_core::Error) -> Error {
    // candle's messages may carry a backtrace after the first line
    let e = e.to_string();
    Error::Invalid(format!("{what}: {}", e.lines().next().unwrap_or_default()))
}

/// Learn the activation steps that `mode` runs at: for a uniform `wXaY`, every body layer with
/// per-channel steps gets the steps of the width it runs at in that mode's spec (and its
/// weights' clip at theirs) trained against the float output of `graph` (prepared,
/// [`super::prepare`]) on crops of `images`, except the (layer, width) pairs `opts` holds
/// fixed, which run quantized with their stored steps. For a RefQSR mode the same runs on its
/// query path (weights at b_medium, inputs at b_low, the first block at b_high), into the
/// queries' own steps and clips. `calib` is updated in place where the learned steps measure
/// better on held-out crops. `progress(done, total)` is called per optimizer step.
pub fn reconstruct(
    graph: &Graph,
    calib: &mut Calibration,
    mode: Mode,
    images: &[Rgb32FImage],
    opts: &Options,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Outcome> {
    let query = matches!(mode, Mode::RefQsr { .. });
    let (spec, run, opts) = match mode {
        Mode::Uniform { w, a } => ((w, a), None, opts.clone()),
        // the query path: its own copy of the steps and clips, learned on the query spec;
        // what uniform modes learned is theirs, not the queries'
        Mode::RefQsr { high, low } => (
            (crate::refqsr::medium(high, low), low),
            Some(crate::refqsr::query_calibration(graph, calib, high)),
            Options {
                fixed_steps: BTreeSet::new(),
                fixed_clips: BTreeSet::new(),
                ..opts.clone()
            },
        ),
        Mode::Fp32 => {
            return Err(Error::Invalid(
                "reconstruction calibration learns wXaY or refqsr:H-L modes, not fp32".into(),
            ))
        }
    };
    let (out, learned) = learn(
        graph,
        run.as_ref().unwrap_or(calib),
        spec,
        images,
        &opts,
        progress,
    )?;
    for n in learned {
        let l = &mut calib.layers[n.layer];
        let (steps, clips) = if query {
            (&mut l.query_channels, &mut l.query_weight_clip)
        } else {
            (&mut l.channels, &mut l.weight_clip)
        };
        steps.insert(n.bits, n.steps);
        if let Some((b, clip)) = n.clip {
            clips.insert(b, clip);
        }
    }
    // weight codes chosen for the steps and clips just replaced are never used again
    calib.drop_stale_codes(graph);
    Ok(Outcome { mode, ..out })
}

/// What one layer learned.
struct Learned {
    /// Index among the body convolutions.
    layer: usize,
    /// Its input's bits and steps.
    bits: u32,
    steps: ChannelSteps,
    /// Its weights' bits and clip, where learned.
    clip: Option<(u32, Vec<f32>)>,
}

/// [`reconstruct`] of the uniform mode `w`/`a` on `calib`; the learned steps and clips where
/// they beat the initial ones on held-out crops (else none).
fn learn(
    graph: &Graph,
    calib: &Calibration,
    (w, a): (u32, u32),
    images: &[Rgb32FImage],
    opts: &Options,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Outcome, Vec<Learned>)> {
    let mode = Mode::Uniform { w, a };
    let mut crops = Crops::new(images, opts.crop, opts.seed)?;
    let mut crop = |n: usize| crops.take(n);
    let holdout = crop(opts.holdout.max(1))?;

    let mut net = Net::new(graph)?;
    let vars = net.quantize(calib, (w, a), Some(opts))?;
    let layers = net
        .int
        .values()
        .filter(|l| matches!(l.log, Steps::Learned(_)))
        .count();
    net.refresh(calib)?;
    let target = net.forward(&holdout, false)?;
    let before = net.mse(&holdout, &target)?;
    if layers == 0 {
        // every layer sits at other widths (floors): nothing to learn in this mode
        let out = Outcome {
            mode,
            layers,
            psnr: [psnr(before); 2],
            kept: false,
            learned: Vec::new(),
        };
        return Ok((out, Vec::new()));
    }
    let mut opt = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: opts.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .map_err(cerr)?;
    progress(0, opts.steps);
    for step in 0..opts.steps {
        if step > 0 && step % opts.refresh.max(1) == 0 {
            net.refresh(calib)?;
        }
        // decayed linearly to zero, so the last steps settle rather than jitter
        opt.set_learning_rate(opts.lr * (1.0 - step as f64 / opts.steps as f64));
        let x = crop(opts.batch.max(1))?;
        let y = net.forward(&x, false)?;
        let out = net.forward(&x, true)?;
        opt.backward_step(&loss(&out, &y)?).map_err(cerr)?;
        net.clamp_clips()?;
        progress(step + 1, opts.steps);
    }
    net.refresh(calib)?;
    let after = net.mse(&holdout, &target)?;
    let kept = after < before;
    let learned = if kept { net.learned()? } else { Vec::new() };
    let out = Outcome {
        mode,
        layers,
        psnr: [psnr(before), psnr(after)],
        kept,
        learned: (learned.iter())
            .map(|n| (n.layer, n.bits, n.clip.as_ref().map(|c| c.0)))
            .collect(),
    };
    Ok((out, learned))
}

/// Random square crops of the calibration images, as `[n, 3, side, side]` tensors.
pub(super) struct Crops<'a> {
    usable: Vec<&'a Rgb32FImage>,
    side: usize,
    rng: rand::rngs::StdRng,
}

impl<'a> Crops<'a> {
    /// Crops as large as `crop` where some image allows it, else as large as the largest
    /// image allows; smaller images are left out.
    pub(super) fn new(images: &'a [Rgb32FImage], crop: usize, seed: u64) -> Result<Self> {
        let side = |i: &Rgb32FImage| i.width().min(i.height()) as usize;
        let side = images.iter().map(side).max().unwrap_or(0).min(crop);
        if side < MIN_CROP {
            return Err(Error::Invalid(format!(
                "reconstruction calibration: no image is at least {MIN_CROP}x{MIN_CROP} pixels"
            )));
        }
        Ok(Crops {
            usable: (images.iter())
                .filter(|i| i.width().min(i.height()) as usize >= side)
                .collect(),
            side,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        })
    }

    pub(super) fn take(&mut self, n: usize) -> Result<Tensor> {
        let side = self.side;
        let mut data = Vec::with_capacity(n * 3 * side * side);
        for _ in 0..n {
            let img = self.usable[self.rng.random_range(0..self.usable.len())];
            let x0 = self.rng.random_range(0..=img.width() as usize - side);
            let y0 = self.rng.random_range(0..=img.height() as usize - side);
            for c in 0..3 {
                for y in y0..y0 + side {
                    for x in x0..x0 + side {
                        data.push(img.get_pixel(x as u32, y as u32).0[c]);
                    }
                }
            }
        }
        Tensor::from_vec(data, (n, 3, side, side), &Device::Cpu).map_err(cerr)
    }
}

/// The PSNR of a mean squared error on [0, 1] images: how the calibration stages report their
/// held-out crops.
pub(super) fn psnr(mse: f64) -> f64 {
    10.0 * (1.0 / mse.max(1e-20)).log10()
}

/// The mean squared error against the float output. (The mean over crops of the log of each
/// crop's error, which is what the mean PSNR of `eval` weighs, measured worse on SPAN x4's
/// held-out photos at w4a4: 36.04 against 36.29 dB after 100 steps.)
fn loss(out: &Tensor, target: &Tensor) -> Result<Tensor> {
    (out - target)
        .and_then(|d| d.sqr())
        .and_then(|d| d.mean_all())
        .map_err(cerr)
}

/// The output of `graph` (prepared, [`super::prepare`]) for `input` (`[n][3][h][w]`, planar),
/// as the reconstruction computes it: in float, or with `calib`'s integer layers of `mode`
/// fake-quantized. It is the model the learning sees, exposed to test it against the CPU
/// twins and the integer kernels.
pub fn output(
    graph: &Graph,
    quant: Option<(&Calibration, Mode)>,
    input: &[f32],
    (n, h, w): (usize, usize, usize),
) -> Result<Vec<f32>> {
    let x = Tensor::from_slice(input, (n, 3, h, w), &Device::Cpu).map_err(cerr)?;
    let mut net = Net::new(graph)?;
    if let Some((calib, mode)) = quant {
        let Mode::Uniform { w, a } = mode else {
            return Err(Error::Invalid(format!("{mode} is not a uniform mode")));
        };
        net.quantize(calib, (w, a), None)?;
        net.refresh(calib)?;
    }
    let y = net.forward(&x, quant.is_some())?;
    (y.flatten_all()).and_then(|t| t.to_vec1()).map_err(cerr)
}

/// An integer layer's input steps, as logarithms (so they stay positive): learned or fixed.
enum Steps {
    Learned(Var),
    Fixed(Tensor),
}

impl Steps {
    fn log(&self) -> &Tensor {
        match self {
            Steps::Learned(v) => v.as_tensor(),
            Steps::Fixed(t) => t,
        }
    }
}

/// One integer layer of the trained network.
pub(super) struct IntLayer {
    /// Index among the body convolutions (into the calibration's layers).
    pub(super) index: usize,
    pub(super) w_bits: u32,
    pub(super) bits: u32,
    /// Each channel's smallest code (one for all where the layer has one step).
    lo: Vec<i32>,
    /// Eq. 1 with this layer's code range: the clamp to `lo..lo + 2^bits`.
    quant: FakeQuant,
    log: Steps,
    /// The effective convolution at the current steps ([`Net::refresh`]), where the weights'
    /// quantization is not learned.
    pub(super) conv: Option<(FixedConv, Tensor)>,
    /// Where the weights' quantization is learned in the graph: their clip, or their codes.
    pub(super) weights: Option<Weights>,
}

/// A layer's weights as its integer layer folds them with one calibration.
pub(super) struct Folding {
    /// The input quantizer whose steps are folded into the weights.
    pub(super) act: ActQuant,
    /// The folded convolution, and its weights' per-output-channel quantizers.
    pub(super) folded: Conv,
    pub(super) wq: Vec<super::Quantizer>,
    /// What stored weight codes for this folding carry ([`super::fingerprint`]).
    pub(super) print: String,
}

impl IntLayer {
    /// The weights of `c`, this layer's convolution, folded with `calib`'s steps and clips at
    /// this layer's widths.
    pub(super) fn fold_with(&self, c: &Conv, calib: &Calibration) -> Folding {
        let clip = calib.weight_clip(self.index, self.w_bits, Bounds::Channel);
        let act = calib.quantizer(self.index, self.bits, Bounds::Channel);
        let (folded, wq) = super::fold_weights(c, self.w_bits, &act, Bounds::Channel, clip);
        let print = super::fingerprint(&folded.weights, &wq);
        Folding {
            act,
            folded,
            wq,
            print,
        }
    }

    /// Whether codes chosen for this layer while calibrating `mode` would also serve a mode
    /// that never judged them: the layer is wider than 4 bits (weights and inputs), `mode` is
    /// not the plain `wXaY` of its widths, and that plain mode folds it to the same `print`.
    /// Stored codes serve every mode whose folding they match. On SPAN x2, the codes refqsr:8-4
    /// learned for its queries' first block (kept at 8 bits, with the plain steps) moved w8a8
    /// by -0.13 dB on the held-out photos; a layer a 4-bit mode keeps at 6 bits folds as w6a6
    /// folds it. The plain mode chooses such a layer's codes itself.
    pub(super) fn serves_an_unjudged_mode(
        &self,
        c: &Conv,
        calib: &Calibration,
        print: &str,
        mode: Mode,
    ) -> bool {
        let plain = Mode::Uniform {
            w: self.w_bits,
            a: self.bits,
        };
        self.w_bits > 4 && self.bits > 4 && mode != plain && self.fold_with(c, calib).print == print
    }
}

/// What an integer layer learns of its weights' quantization.
pub(super) enum Weights {
    /// The clip of each output channel (with the steps, here).
    Clip(LearnedWeights),
    /// Which code each weight takes, the quantizers fixed ([`super::rounding`]).
    Codes(super::rounding::LearnedCodes),
}

/// A layer whose weight clipping is learned: its weights are quantized in the graph, from the
/// current steps and clip, on every forward pass.
pub(super) struct LearnedWeights {
    /// Log of each output channel's clip ratio (`LayerBounds::weight_clip`), `[o, 1, 1, 1]`.
    log_clip: Var,
    /// The float weights `[o, c, k, k]`, bias `[1, o, 1, 1]` and input channel means
    /// `[1, c, 1, 1]`.
    weights: Tensor,
    bias: Tensor,
    mean: Tensor,
}

impl LearnedWeights {
    /// `c` at `bits` with input quantizer `act`: the clip starts from the stored one, else from
    /// the searched bounds.
    fn new(c: &Conv, act: &ActQuant, bits: u32, layer: &super::calib::LayerBounds) -> Result<Self> {
        let folded = act.fold_conv(c);
        let max = super::weight_quantizers(&folded.weights, c.out_ch, bits);
        let clip: Vec<f32> = match layer.weight_clip.get(&bits) {
            Some(clip) => clip.clone(),
            None => calib::searched_weight_quantizers(&folded.weights, c.out_ch, bits)
                .iter()
                .zip(&max)
                .map(|(q, m)| (q.beta / m.beta).min(1.0))
                .collect(),
        };
        let t = |v: &[f32], shape: (usize, usize, usize, usize)| {
            Tensor::from_slice(v, shape, &Device::Cpu).map_err(cerr)
        };
        let log: Vec<f32> = clip.iter().map(|r| r.ln()).collect();
        Ok(LearnedWeights {
            log_clip: Var::from_tensor(&t(&log, (c.out_ch, 1, 1, 1))?).map_err(cerr)?,
            weights: t(&c.weights, (c.out_ch, c.in_ch, c.k, c.k))?,
            bias: t(&c.bias, (1, c.out_ch, 1, 1))?,
            mean: t(&layer.mean, (1, c.in_ch, 1, 1))?,
        })
    }

    /// The effective weights and corrected bias of the integer layer with input steps `s`
    /// (`[1, c, 1, 1]`) at `bits`, as [`super::fold_layer`] builds them: the weights times
    /// their input channel's step, quantized per output channel over `[-r m, r m]` (`m` the
    /// largest magnitude, `r` the clip; rounding straight through), divided by the steps again;
    /// the bias less the shift the quantization causes on the channel means.
    fn quantized(&self, s: &Tensor, bits: u32) -> candle_core::Result<(Tensor, Tensor)> {
        let o = self.weights.dim(0)?;
        let folded = self.weights.broadcast_mul(s)?;
        let m = (folded.abs()?.reshape((o, ())))?.max_keepdim(1)?.detach();
        let m = m.maximum(f32::MIN_POSITIVE)?.reshape((o, 1, 1, 1))?;
        // the float steps of `Quantizer::new(-beta, beta, bits)` and `Quantizer::code`, so that
        // the codes match to the last bit: whether the clipped end is code -2^(b-1) or
        // 2^(b-1) depends on how `alpha / s` rounds
        let levels = ((1u32 << bits) - 1) as f64;
        let beta = m.broadcast_mul(&self.log_clip.as_tensor().exp()?)?;
        // a true division (candle's `/ f64` multiplies by the reciprocal)
        let divisor = Tensor::new(&[levels as f32], beta.device())?;
        let step = (&beta + &beta)?.broadcast_div(&divisor)?;
        let inv = step.recip()?;
        let lo = (beta.broadcast_mul(&inv)?.neg()?.round()?).detach();
        let hi = (&lo + levels)?;
        let v = (folded
            .broadcast_maximum(&beta.neg()?)?
            .broadcast_minimum(&beta)?)
        .broadcast_mul(&inv)?;
        let codes = v.round()?.broadcast_maximum(&lo)?.broadcast_minimum(&hi)?;
        let v = (&v + (codes - &v)?.detach())?;
        let w = v.broadcast_mul(&step)?.broadcast_div(s)?;
        let shift = (&w - &self.weights)?.broadcast_mul(&self.mean)?;
        let shift = shift.sum_keepdim((1, 2, 3))?.reshape((1, o, 1, 1))?;
        Ok((w, self.bias.broadcast_sub(&shift)?))
    }
}

impl IntLayer {
    fn steps(&self) -> Result<Vec<f32>> {
        (self.log.log().exp().and_then(|s| s.flatten_all()))
            .and_then(|s| s.to_vec1::<f32>())
            .map_err(cerr)
    }

    pub(super) fn act(&self) -> Result<ActQuant> {
        let steps = self.steps()?;
        if steps.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(Error::Invalid(
                "reconstruction calibration diverged: a step is not finite".into(),
            ));
        }
        Ok(if steps.len() == 1 {
            let top = self.lo[0] + (1 << self.bits) - 1;
            super::Quantizer::new(
                self.lo[0] as f32 * steps[0],
                top as f32 * steps[0],
                self.bits,
            )
            .into()
        } else {
            ActQuant::per_channel(self.bits, &self.lo, &steps)
        })
    }

    /// `x` through Eq. 1 with the layer's steps; the rounding passes the gradient straight
    /// through, the clamp stops it outside the codes.
    fn fake_quant(&self, x: &Tensor) -> Result<Tensor> {
        let s = self.log.log().exp().map_err(cerr)?;
        (x.contiguous())
            .and_then(|x| x.apply_op2(&s.contiguous()?, self.quant.clone()))
            .map_err(cerr)
    }
}

/// Eq. 1 per channel as one op: `round(clamp(x / s, lo, hi)) * s`, for `x` `[n][C][h][w]` and
/// the steps `s` `[1, C, 1, 1]` (or one step, and one `lo`/`hi`, for all channels). Its
/// gradients are those of the composition `(v + (round(v) - v).detach()) * s` with
/// `v = min(max(x / s, lo), hi)` in candle, ties of the clamp included (candle's maximum and
/// minimum give each side half the gradient where they are equal, as at `x = 0` with
/// `lo = 0`): `dx = g m` and `ds = sum of g (round(v) - m x / s)`, `m` the clamp's mask. The
/// composition's seven passes and their allocations, forward and backward, were about a
/// fifth of a learning step.
#[derive(Clone)]
pub(super) struct FakeQuant {
    lo: Vec<f32>,
    hi: Vec<f32>,
}

impl FakeQuant {
    /// The clamp to the codes `lo..lo + 2^bits` of each channel (of all, where `lo` has one).
    pub(super) fn new(lo: &[i32], bits: u32) -> Self {
        FakeQuant {
            lo: lo.iter().map(|&l| l as f32).collect(),
            hi: lo.iter().map(|&l| (l + (1 << bits) - 1) as f32).collect(),
        }
    }

    /// The smallest and largest codes as `[1, C, 1, 1]` tensors.
    fn bounds(&self) -> Result<(Tensor, Tensor)> {
        let t = |v: &[f32]| Tensor::from_slice(v, (1, v.len(), 1, 1), &Device::Cpu).map_err(cerr);
        Ok((t(&self.lo)?, t(&self.hi)?))
    }

    /// The step, smallest and largest code of the channel of plane `p` (of `c` channels).
    fn channel(&self, s: &[f32], p: usize, c: usize) -> (f32, f32, f32) {
        let at = |v: &[f32]| if v.len() == 1 { v[0] } else { v[p % c] };
        (at(s), at(&self.lo), at(&self.hi))
    }

    /// The clamp's gradient mask at `x / s`, with candle's halves at ties.
    fn mask(v: f32, lo: f32, hi: f32) -> f32 {
        let above = if v > lo {
            1.0
        } else if v == lo {
            0.5
        } else {
            0.0
        };
        let m = v.max(lo);
        let below = if m < hi {
            1.0
        } else if m == hi {
            0.5
        } else {
            0.0
        };
        above * below
    }
}

impl CustomOp2 for FakeQuant {
    fn name(&self) -> &'static str {
        "refqsr-fake-quant"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, c, h, w) = l1.shape().dims4()?;
        let (x, s) = (contiguous(s1, l1)?, contiguous(s2, l2)?);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut((h * w).max(1))
            .zip(x.par_chunks((h * w).max(1)))
            .enumerate()
            .for_each(|(p, (y, x))| {
                let (s, lo, hi) = self.channel(s, p, c);
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = (x / s).max(lo).min(hi).round() * s;
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        s: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, c, h, w) = x.dims4()?;
        let plane = (h * w).max(1);
        let steps = s.flatten_all()?.to_vec1::<f32>()?;
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let g = grad.flatten_all()?.to_vec1::<f32>()?;
        let mut dx = vec![0f32; xs.len()];
        // each plane's share of its step's gradient
        let shares: Vec<f32> = dx
            .par_chunks_mut(plane)
            .zip(xs.par_chunks(plane).zip(g.par_chunks(plane)))
            .enumerate()
            .map(|(p, (dx, (x, g)))| {
                let (s, lo, hi) = self.channel(&steps, p, c);
                let mut ds = 0f32;
                for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
                    let v = x / s;
                    let m = Self::mask(v, lo, hi);
                    *dx = g * m;
                    ds += g * (v.max(lo).min(hi).round() - m * v);
                }
                ds
            })
            .collect();
        let ds = if s.track_op() {
            let mut ds = vec![0f32; steps.len()];
            for (p, share) in shares.iter().enumerate() {
                ds[if steps.len() == 1 { 0 } else { p % c }] += share;
            }
            Some(Tensor::from_vec(ds, s.shape(), s.device())?)
        } else {
            None
        };
        Ok((Some(Tensor::from_vec(dx, x.shape(), x.device())?), ds))
    }
}

/// A custom op's contiguous f32 input.
fn contiguous<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("refqsr's custom ops need a contiguous input"),
    }
}

/// `graph` in candle (NCHW, f32), float or with its integer layers fake-quantized.
pub(super) struct Net<'g> {
    graph: &'g Graph,
    /// The float convolutions, by node index.
    float: BTreeMap<usize, (FixedConv, Tensor)>,
    /// The integer layers, by node index.
    pub(super) int: BTreeMap<usize, IntLayer>,
}

impl<'g> Net<'g> {
    pub(super) fn new(graph: &'g Graph) -> Result<Self> {
        cpu_conv::reuse_freed_memory();
        let mut float = BTreeMap::new();
        for (j, n) in graph.nodes.iter().enumerate() {
            match &n.op {
                Op::Conv(c) => {
                    float.insert(j, FixedConv::new(c)?);
                }
                Op::RefEr { .. } => {
                    return Err(Error::Unsupported {
                        model: graph.name.clone(),
                        message: "reconstruction calibration of a RefQSR graph".into(),
                    })
                }
                _ => {}
            }
        }
        Ok(Net {
            graph,
            float,
            int: BTreeMap::new(),
        })
    }

    /// Quantize the body layers as mode `w`/`a` runs them; with `learn`, the steps (and clips)
    /// of the layers with per-channel steps become variables, which are returned, except
    /// those the options hold fixed.
    pub(super) fn quantize(
        &mut self,
        calib: &Calibration,
        (w, a): (u32, u32),
        learn: Option<&Options>,
    ) -> Result<Vec<Var>> {
        let spec = calib.spec(w, a);
        let mut vars = Vec::new();
        for (i, &j) in body_convs(self.graph).iter().enumerate() {
            let [lw, la] = spec[i];
            if la == calib::FLOAT {
                continue;
            }
            let act = calib.quantizer(i, la, Bounds::Channel);
            let steps: Vec<f32> = (0..act.channels().len())
                .map(|c| act.channel(c).step().ln())
                .collect();
            let log = Tensor::from_vec(steps, (1, act.channels().len(), 1, 1), &Device::Cpu)
                .map_err(cerr)?;
            // every layer learns the steps it runs at in this mode, unless an earlier mode
            // of the run learned them
            let learned =
                learn.is_some_and(|o| !o.fixed_steps.contains(&(i, la))) && act.is_per_channel();
            let log = if learned {
                let v = Var::from_tensor(&log).map_err(cerr)?;
                vars.push(v.clone());
                Steps::Learned(v)
            } else {
                Steps::Fixed(log)
            };
            let clip = learn.is_some_and(|o| o.weights && !o.fixed_clips.contains(&(i, lw)));
            let weights = if learned && clip {
                let Op::Conv(c) = &self.graph.nodes[j].op else {
                    unreachable!("body_convs lists convolutions")
                };
                let learned = LearnedWeights::new(c, &act, lw, &calib.layers[i])?;
                vars.push(learned.log_clip.clone());
                Some(Weights::Clip(learned))
            } else {
                None
            };
            let layer = IntLayer {
                index: i,
                w_bits: lw,
                bits: la,
                quant: FakeQuant::new(&act.lo(), la),
                lo: act.lo(),
                log,
                conv: None,
                weights,
            };
            self.int.insert(j, layer);
        }
        Ok(vars)
    }

    /// Build the effective weights of the integer layers whose weights are not learned in the
    /// graph: all of them the first time, then those whose steps are learned (the others do
    /// not change).
    pub(super) fn refresh(&mut self, calib: &Calibration) -> Result<()> {
        let stale = |l: &IntLayer| l.conv.is_none() || matches!(l.log, Steps::Learned(_));
        let layers = self.int.iter_mut();
        for (&j, l) in layers.filter(|(_, l)| l.weights.is_none() && stale(l)) {
            let Op::Conv(c) = &self.graph.nodes[j].op else {
                unreachable!("integer layers are convolutions")
            };
            let mean = &calib.layers[l.index].mean;
            let clip = calib.weight_clip(l.index, l.w_bits, Bounds::Channel);
            let codes = calib.codes(l.index, Bounds::Channel);
            // fixed steps as stored, not through their logarithm, so that the folded weights
            // are the integer layer's to the bit (and find their codes)
            let act = match l.log {
                Steps::Fixed(_) => calib.quantizer(l.index, l.bits, Bounds::Channel),
                Steps::Learned(_) => l.act()?,
            };
            let eff = effective_weights(c, l.w_bits, &act, mean, Bounds::Channel, clip, codes);
            l.conv = Some(FixedConv::new(&eff)?);
        }
        Ok(())
    }

    /// Keep every learned clip ratio at most 1: a bound beyond the largest weight only
    /// coarsens the step.
    fn clamp_clips(&self) -> Result<()> {
        let clips = self.int.values().filter_map(|l| match &l.weights {
            Some(Weights::Clip(lw)) => Some(lw),
            _ => None,
        });
        for lw in clips {
            let t = lw.log_clip.as_tensor().minimum(0f32).map_err(cerr)?;
            lw.log_clip.set(&t).map_err(cerr)?;
        }
        Ok(())
    }

    /// The steps (and clips) of the learned layers.
    fn learned(&self) -> Result<Vec<Learned>> {
        let mut out = Vec::new();
        for l in self.int.values() {
            if let Steps::Learned(_) = l.log {
                let steps = ChannelSteps {
                    lo: l.lo.clone(),
                    steps: l.steps()?,
                };
                let clip = match &l.weights {
                    Some(Weights::Clip(lw)) => {
                        let clip = (lw.log_clip.as_tensor().exp())
                            .and_then(|c| c.flatten_all())
                            .and_then(|c| c.to_vec1::<f32>())
                            .map_err(cerr)?;
                        // exp of a log clamped to <= 0 may round just above 1
                        Some((l.w_bits, clip.into_iter().map(|r| r.min(1.0)).collect()))
                    }
                    _ => None,
                };
                out.push(Learned {
                    layer: l.index,
                    bits: l.bits,
                    steps,
                    clip,
                });
            }
        }
        Ok(out)
    }

    /// Mean squared error of the quantized network against `target` on `x`, in batches.
    pub(super) fn mse(&self, x: &Tensor, target: &Tensor) -> Result<f64> {
        let out = self.forward(x, true)?;
        let d = (out - target).map_err(cerr)?;
        let m = d.sqr().and_then(|s| s.mean_all()).map_err(cerr)?;
        Ok(m.to_scalar::<f32>().map_err(cerr)? as f64)
    }

    /// The network's output for `x` (`[n, 3, h, w]`), with the integer layers fake-quantized
    /// when `quant`.
    pub(super) fn forward(&self, x: &Tensor, quant: bool) -> Result<Tensor> {
        self.run(x, quant, None)
    }

    /// The codes (`round(x / s)`, clamped) the integer layer at node `j` reads from the
    /// quantized network on `x`, as floats `[n, c, h, w]`; the nodes after it are not run.
    pub(super) fn input_codes(&self, x: &Tensor, j: usize) -> Result<Tensor> {
        self.run(x, true, Some(j))
    }

    /// [`Net::forward`], or with `stop`, [`Net::input_codes`] of that node.
    fn run(&self, x: &Tensor, quant: bool, stop: Option<usize>) -> Result<Tensor> {
        let g = self.graph;
        let mut values: Vec<Option<Tensor>> = vec![None; g.values.len()];
        values[g.input] = Some(x.clone());
        for (j, node) in g.nodes.iter().enumerate() {
            let get = |v: usize| {
                values[v]
                    .clone()
                    .ok_or_else(|| Error::Invalid(format!("value {v} used before it is computed")))
            };
            let x = get(node.inputs[0])?;
            if stop == Some(j) {
                let l = (self.int.get(&j))
                    .ok_or_else(|| Error::Invalid(format!("node {j} is not an integer layer")))?;
                let s = l.log.log().exp().map_err(cerr)?;
                let v = x.broadcast_div(&s).map_err(cerr)?;
                let (lo, hi) = l.quant.bounds()?;
                return (v.broadcast_maximum(&lo))
                    .and_then(|v| v.broadcast_minimum(&hi))
                    .and_then(|v| v.round())
                    .map_err(cerr);
            }
            let out = match &node.op {
                Op::Conv(c) => {
                    let r = c.epilogue.residual().map(get).transpose()?;
                    let int = self.int.get(&j).filter(|_| quant);
                    let y = match int {
                        Some(
                            l @ IntLayer {
                                weights: Some(lw), ..
                            },
                        ) => {
                            let x = l.fake_quant(&x)?.contiguous().map_err(cerr)?;
                            let wb = match lw {
                                Weights::Clip(lw) => {
                                    let s = l.log.log().exp().map_err(cerr)?;
                                    lw.quantized(&s, l.w_bits)
                                }
                                Weights::Codes(lc) => lc.quantized(),
                            };
                            let (w, b) = wb.map_err(cerr)?;
                            (x.apply_op2(&w.contiguous().map_err(cerr)?, LearnedConv))
                                .and_then(|y| y.broadcast_add(&b))
                                .map_err(cerr)?
                        }
                        _ => {
                            let (input, (conv, bias)) = match int {
                                Some(l) => (
                                    l.fake_quant(&x)?,
                                    l.conv.as_ref().expect("refreshed before use"),
                                ),
                                None => (x, &self.float[&j]),
                            };
                            (input.contiguous())
                                .and_then(|t| t.apply_op1(conv.clone()))
                                .and_then(|y| y.broadcast_add(bias))
                                .map_err(cerr)?
                        }
                    };
                    epilogue(&y, c, r.as_ref())?
                }
                Op::Binary { kind, rhs } => {
                    let b = match rhs {
                        Rhs::Tensor => get(node.inputs[1])?,
                        Rhs::Scalar(s) => Tensor::new(&[*s], &Device::Cpu)
                            .and_then(|t| t.reshape((1, 1, 1, 1)))
                            .map_err(cerr)?,
                        Rhs::PerChannel(v) => {
                            Tensor::from_slice(v, (1, v.len(), 1, 1), &Device::Cpu).map_err(cerr)?
                        }
                    };
                    binary(&x, &b, *kind)?
                }
                Op::Act(act) => activate(&x, act)?,
                Op::Concat => {
                    let ins: Vec<Tensor> =
                        node.inputs.iter().map(|&v| get(v)).collect::<Result<_>>()?;
                    Tensor::cat(&ins, 1).map_err(cerr)?
                }
                Op::PixelShuffle { factor } => {
                    let f = *factor as usize;
                    let (n, c, h, w) = x.dims4().map_err(cerr)?;
                    (x.reshape((n, c / (f * f), f, f, h, w)))
                        .and_then(|t| t.permute((0, 1, 4, 2, 5, 3)))
                        .and_then(|t| t.reshape((n, c / (f * f), h * f, w * f)))
                        .map_err(cerr)?
                }
                Op::InterpNearest { factor } => {
                    let f = *factor as usize;
                    let (_, _, h, w) = x.dims4().map_err(cerr)?;
                    x.upsample_nearest2d(h * f, w * f).map_err(cerr)?
                }
                Op::RefEr { .. } => unreachable!("refused by Net::new"),
            };
            values[node.output] = Some(out);
        }
        values[g.output]
            .take()
            .ok_or_else(|| Error::Invalid("the graph output is never computed".into()))
    }
}

/// `finish` of the convolution shaders on the biased sum `y`: activation, then SPAN's gate or
/// the residual add.
fn epilogue(y: &Tensor, c: &Conv, r: Option<&Tensor>) -> Result<Tensor> {
    match (c.epilogue, r) {
        (Epilogue::SpanGate(_), Some(r)) => {
            let gate = (candle_nn::ops::sigmoid(y).map_err(cerr)? - 0.5).map_err(cerr)?;
            (y + r).and_then(|s| s * gate).map_err(cerr)
        }
        (Epilogue::Add(_), Some(r)) => (activate(y, &c.act)? + r).map_err(cerr),
        _ => activate(y, &c.act),
    }
}

/// `activate` of `common.wgsl`.
fn activate(x: &Tensor, act: &Activation) -> Result<Tensor> {
    let negative_slope = |s: &Tensor| -> candle_core::Result<Tensor> {
        x.relu()? + x.minimum(0f32)?.broadcast_mul(s)?
    };
    match act {
        Activation::None => Ok(x.clone()),
        Activation::Relu => x.relu(),
        Activation::Leaky(a) => Tensor::new(&[*a], &Device::Cpu)
            .and_then(|s| s.reshape((1, 1, 1, 1)))
            .and_then(|s| negative_slope(&s)),
        Activation::PRelu(v) => {
            Tensor::from_slice(v, (1, v.len(), 1, 1), &Device::Cpu).and_then(|s| negative_slope(&s))
        }
        Activation::Swish => candle_nn::ops::sigmoid(x).and_then(|s| x * s),
        Activation::Sigmoid => candle_nn::ops::sigmoid(x),
    }
    .map_err(cerr)
}

/// `a (op) b`, `b` broadcast.
fn binary(a: &Tensor, b: &Tensor, kind: BinaryKind) -> Result<Tensor> {
    match kind {
        BinaryKind::Add => a.broadcast_add(b),
        BinaryKind::Sub => a.broadcast_sub(b),
        BinaryKind::Mul => a.broadcast_mul(b),
        BinaryKind::Div => a.broadcast_div(b),
        BinaryKind::RSub => b.broadcast_sub(a),
        BinaryKind::Max => a.broadcast_maximum(b),
        BinaryKind::Min => a.broadcast_minimum(b),
    }
    .map_err(cerr)
}

/// A "same"-padded stride-1 convolution by constant weights, as a custom op: forward is
/// [`cpu_conv::forward`], backward the input gradient alone (the convolution of the output
/// gradient with the kernel flipped and its channel axes swapped).
#[derive(Clone)]
pub(super) struct FixedConv {
    weights: std::sync::Arc<Vec<f32>>,
    flipped: std::sync::Arc<Vec<f32>>,
    out_ch: usize,
    in_ch: usize,
    k: usize,
}

impl FixedConv {
    /// The convolution of `c` and its bias as `[1, out, 1, 1]`.
    pub(super) fn new(c: &Conv) -> Result<(Self, Tensor)> {
        let (o, i, k) = (c.out_ch, c.in_ch, c.k);
        let bias = Tensor::from_slice(&c.bias, (1, o, 1, 1), &Device::Cpu).map_err(cerr)?;
        Ok((
            FixedConv {
                weights: std::sync::Arc::new(c.weights.clone()),
                flipped: std::sync::Arc::new(cpu_conv::flipped(&c.weights, o, i, k)),
                out_ch: o,
                in_ch: i,
                k,
            },
            bias,
        ))
    }
}

impl CustomOp1 for FixedConv {
    fn name(&self) -> &'static str {
        "refqsr-fixed-conv"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, dims) = planar(storage, layout, self.in_ch)?;
        let y = cpu_conv::forward(x, dims, &self.weights, self.out_ch, self.k);
        let (n, _, h, w) = dims;
        Ok((CpuStorage::F32(y), Shape::from((n, self.out_ch, h, w))))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (n, o, h, w) = grad.dims4()?;
        let g = grad.flatten_all()?.to_vec1::<f32>()?;
        let dx = cpu_conv::forward(&g, (n, o, h, w), &self.flipped, self.in_ch, self.k);
        Ok(Some(Tensor::from_vec(
            dx,
            (n, self.in_ch, h, w),
            grad.device(),
        )?))
    }
}

/// A "same"-padded stride-1 convolution of an input by learned weights, as a custom op:
/// forward is [`cpu_conv::forward`], backward the input gradient by the flipped kernel and
/// [`cpu_conv::weight_grad`].
pub(super) struct LearnedConv;

impl CustomOp2 for LearnedConv {
    fn name(&self) -> &'static str {
        "refqsr-conv"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (o, i, k, _) = l2.shape().dims4()?;
        let (x, dims) = planar(s1, l1, i)?;
        let (weights, _) = planar(s2, l2, i)?;
        let y = cpu_conv::forward(x, dims, weights, o, k);
        let (n, _, h, w) = dims;
        Ok((CpuStorage::F32(y), Shape::from((n, o, h, w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (o, i, k, _) = w.dims4()?;
        let dims @ (n, _, h, wd) = x.dims4()?;
        let x = x.flatten_all()?.to_vec1::<f32>()?;
        let w = w.flatten_all()?.to_vec1::<f32>()?;
        let g = grad.flatten_all()?.to_vec1::<f32>()?;
        let dx = cpu_conv::forward(&g, (n, o, h, wd), &cpu_conv::flipped(&w, o, i, k), i, k);
        let dw = cpu_conv::weight_grad(&x, dims, &g, o, k);
        Ok((
            Some(Tensor::from_vec(dx, (n, i, h, wd), grad.device())?),
            Some(Tensor::from_vec(dw, (o, i, k, k), grad.device())?),
        ))
    }
}

/// A custom op's contiguous f32 input of `channels` channels, with its `[n][c][h][w]` shape.
fn planar<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    channels: usize,
) -> candle_core::Result<(&'a [f32], cpu_conv::Dims)> {
    let dims = layout.shape().dims4()?;
    if dims.1 != channels {
        candle_core::bail!("a convolution of {channels} input channels got {}", dims.1)
    }
    Ok((contiguous(storage, layout)?, dims))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::model::{Activation, Epilogue};
    use rand::rngs::StdRng;

    /// `n` uniform draws in `lo..hi`.
    pub(in crate::quant) fn uniform(rng: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(lo..hi)).collect()
    }

    /// A random 3x3 convolution of `o` outputs over six inputs and a 4-bit per-channel input
    /// quantizer (zero points of both signs), with the generator that drew them: the layer
    /// the twins of learned weights and learned codes are checked on.
    pub(in crate::quant) fn random_layer(seed: u64, o: usize) -> (Conv, ActQuant, StdRng) {
        let mut rng = StdRng::seed_from_u64(seed);
        let (i, k) = (6, 3);
        let c = Conv {
            in_ch: i,
            out_ch: o,
            k,
            weights: uniform(&mut rng, o * i * k * k, -1.0, 1.0),
            bias: uniform(&mut rng, o, -0.5, 0.5),
            act: Activation::None,
            epilogue: Epilogue::None,
        };
        let steps = uniform(&mut rng, i, 0.01, 0.3);
        let act = ActQuant::per_channel(4, &[-5, 0, -8, -15, -3, -7], &steps);
        (c, act, rng)
    }

    #[test]
    fn learned_weights_quantize_as_the_integer_layer_does() {
        let (c, act, mut rng) = random_layer(7, 5);
        let (o, i, k, bits) = (c.out_ch, c.in_ch, c.k, 4);
        let mut layer = calib::LayerBounds {
            name: "conv".into(),
            in_ch: i,
            min: -1.0,
            max: 1.0,
            bounds: BTreeMap::new(),
            mean: uniform(&mut rng, i, -1.0, 1.0),
            floor: None,
            channels: BTreeMap::new(),
            weight_clip: BTreeMap::new(),
            query_channels: BTreeMap::new(),
            query_weight_clip: BTreeMap::new(),
            weight_codes: Vec::new(),
        };
        let s: Vec<f32> = (0..i).map(|ch| act.channel(ch).step()).collect();
        let s = Tensor::from_slice(&s, (1, i, 1, 1), &Device::Cpu).unwrap();
        // without a stored clip it starts from the searched bounds, then with a stored one
        for clip in [None, Some(vec![0.9f32, 0.7, 1.0, 0.55, 0.8])] {
            if let Some(clip) = &clip {
                layer.weight_clip.insert(bits, clip.clone());
            }
            let learned = LearnedWeights::new(&c, &act, bits, &layer).unwrap();
            let (w, b) = learned.quantized(&s, bits).unwrap();
            let w = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            // the clip as it would be stored: the searched bounds' share of the largest weight
            let stored: Vec<f32> = (learned.log_clip.as_tensor().exp())
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .unwrap();
            let folded = act.fold_conv(&c);
            let searched = calib::searched_weight_quantizers(&folded.weights, o, bits);
            let max = crate::quant::weight_quantizers(&folded.weights, o, bits);
            for (ch, r) in stored.iter().enumerate() {
                let want = match &clip {
                    Some(clip) => clip[ch],
                    None => searched[ch].beta / max[ch].beta,
                };
                assert!((r - want).abs() <= 1e-6, "{clip:?} clip {ch}: {r} {want}");
            }
            let want = effective_weights(
                &c,
                bits,
                &act,
                &layer.mean,
                Bounds::Channel,
                Some(&stored),
                &[],
            );
            for (n, (x, y)) in w.iter().zip(&want.weights).enumerate() {
                assert!(
                    (x - y).abs() <= 1e-4 * y.abs().max(1.0),
                    "{clip:?} weight {n}: {x} {y}"
                );
            }
            for (x, y) in b.iter().zip(&want.bias) {
                assert!((x - y).abs() <= 1e-4, "{clip:?} bias: {x} {y}");
            }
            // the weights take at most 2^b levels per output channel
            let per = i * k * k;
            for ch in w.chunks(per) {
                let folded: std::collections::BTreeSet<i64> = (ch.iter().enumerate())
                    .map(|(n, v)| (v * act.channel(n / (k * k)).step() * 1e5).round() as i64)
                    .collect();
                assert!(folded.len() <= 1 << bits, "{} levels", folded.len());
            }
        }
    }

    /// The fused fake quantization against the composition of candle ops it replaces, values
    /// and both gradients, with inputs on the clamp's ends (zeros against `lo = 0`, and codes
    /// exactly at `lo` and `hi`), per channel and with one step for all.
    #[test]
    fn fused_fake_quantization_is_the_composition_it_replaces() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(21);
        for channels in [3usize, 1] {
            let (n, c, h, w) = (2usize, 3usize, 5usize, 4usize);
            let lo: Vec<i32> = [0, -3, -8][..channels].to_vec();
            let bits = 4;
            let steps: Vec<f32> = uniform(&mut rng, channels, 0.05, 0.3);
            let mut x = uniform(&mut rng, n * c * h * w, -3.0, 3.0);
            for (i, v) in x.iter_mut().enumerate() {
                let ch = if channels == 1 { 0 } else { i / (h * w) % c };
                match i % 7 {
                    0 => *v = 0.0,
                    1 => *v = lo[ch] as f32 * steps[ch],
                    2 => *v = (lo[ch] + (1 << bits) - 1) as f32 * steps[ch],
                    _ => {}
                }
            }
            let g = uniform(&mut rng, x.len(), -1.0, 1.0);
            let run = |fused: bool| {
                let xv = Var::from_slice(&x, (n, c, h, w), &Device::Cpu).unwrap();
                let sv = Var::from_slice(&steps, (1, channels, 1, 1), &Device::Cpu).unwrap();
                let (s, xt) = (sv.as_tensor(), xv.as_tensor());
                let op = FakeQuant::new(&lo, bits);
                let y = if fused {
                    xt.apply_op2(s, op).unwrap()
                } else {
                    let (lo, hi) = op.bounds().unwrap();
                    let v = xt.broadcast_div(s).unwrap();
                    let v = v
                        .broadcast_maximum(&lo)
                        .unwrap()
                        .broadcast_minimum(&hi)
                        .unwrap();
                    let r = (v.round().unwrap() - &v).unwrap().detach();
                    (v + r).unwrap().broadcast_mul(s).unwrap()
                };
                let gt = Tensor::from_slice(&g, (n, c, h, w), &Device::Cpu).unwrap();
                let loss = (&y * gt).unwrap().sum_all().unwrap();
                let grads = loss.backward().unwrap();
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                (
                    flat(&y),
                    flat(grads.get(xt).unwrap()),
                    flat(grads.get(s).unwrap()),
                )
            };
            let (want, fused) = (run(false), run(true));
            assert_eq!(fused.0, want.0, "values, {channels} step(s)");
            for (a, b) in fused.1.iter().zip(&want.1) {
                assert!((a - b).abs() <= 1e-6, "dx {a} {b}, {channels} step(s)");
            }
            for (a, b) in fused.2.iter().zip(&want.2) {
                assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "ds {a} {b}");
            }
            // the ties are there: some inputs sit on each end of the clamp
            assert!(x.iter().filter(|&&v| v == 0.0).count() > 4);
        }
    }
}
