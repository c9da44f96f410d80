//! Weight codes learned end to end against the float model's output (network-wise
//! quantization-aware rounding, after AdaRound and NWQ).
//!
//! [`super::gptq`] chooses each layer's codes against that layer's own output error, one layer
//! at a time; at 4-bit inputs, after [`super::recon`] has learned the steps and clips with the
//! nearest codes in the loop, that lost on held-out crops. Here the steps and clips stay as
//! calibrated and only the codes move, all layers at once, against what a user sees: the
//! network's output. Each weight's code is a variable in code units, starting at its
//! unrounded value `clip(w s_in, alpha, beta) / s_w`; the forward pass rounds it (the
//! gradient passes straight through), clamps it to the quantizer's `2^b` codes (which stops the
//! gradient outside), multiplies it back by `s_w / s_in` and corrects the bias from the
//! channel means as [`super::fold_layer`] does. Adam moves the codes by at most about its
//! learning rate per step, decayed linearly to zero, so a weight moves to its other neighbour
//! only where the output asks for it.
//!
//! The codes are stored like GPTQ's ([`super::calib::WeightCodes`], with the fingerprint of
//! the folding they were learned for), so nothing in the kernels changes, and kept only where
//! the whole network's error on held-out crops goes down. Codes GPTQ chose for a folding are
//! the baseline they must beat, and give way where they do; codes learned here for a
//! folding (by an earlier mode that judged them) are kept.

use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use image::Rgb32FImage;

use super::calib::{Calibration, WeightCodes};
use super::recon::{psnr, Crops, Folding, Net, Weights};
use super::{ActQuant, Mode, Quantizer};
use crate::error::Result;
use crate::model::{Conv, Op};

/// The knobs of one learning of codes.
#[derive(Debug, Clone)]
pub struct Options {
    /// Optimizer steps.
    pub steps: usize,
    /// Crops per step.
    pub batch: usize,
    /// Side of the square crops (input pixels).
    pub crop: usize,
    /// Adam's initial learning rate, in code units per step, decayed linearly to zero.
    pub lr: f64,
    /// Seed of the crop sampler.
    pub seed: u64,
    /// Held-out crops the result is judged on.
    pub holdout: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            // 300 steps gained 0.34 dB on the held-out photos at w4a4 where 100 gained 0.16
            // (benches/RESULTS.md); about 2.5 minutes a mode on a 2-core machine
            steps: 300,
            batch: 4,
            crop: 40,
            lr: 0.02,
            seed: 31,
            holdout: 16,
        }
    }
}

/// What one learning of codes did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub mode: Mode,
    /// Layers whose codes were learned.
    pub layers: usize,
    /// PSNR (RGB, against the float output) on held-out crops before and after.
    pub psnr: [f64; 2],
    /// Whether the codes were written (they beat the previous ones).
    pub kept: bool,
    /// Share of the weights whose code differs from the previous rounding.
    pub moved: f64,
}

/// Learn the weight codes of every integer layer of `mode` (for a RefQSR mode, of its query
/// path) on crops of `images`, against the float output of `graph` (prepared,
/// [`super::prepare`]), and add them to `calib` where they lower the held-out error.
/// `progress(done, total)` per optimizer step.
pub fn learn_codes(
    graph: &crate::model::Graph,
    calib: &mut Calibration,
    mode: Mode,
    images: &[Rgb32FImage],
    opts: &Options,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Outcome> {
    let (spec, mut run) = super::gptq::folding(graph, calib, mode)?;
    let mut crops = Crops::new(images, opts.crop, opts.seed)?;
    let holdout = crops.take(opts.holdout.max(1))?;

    let mut net = Net::new(graph)?;
    net.quantize(&run, spec, None)?;
    net.refresh(&run)?;
    let target = net.forward(&holdout, false)?;
    let before = net.mse(&holdout, &target)?;

    let mut vars = Vec::new();
    for (&j, l) in net.int.iter_mut() {
        let Op::Conv(c) = &graph.nodes[j].op else {
            unreachable!("integer layers are convolutions")
        };
        let Folding {
            act,
            folded,
            wq,
            print,
        } = l.fold_with(c, &run);
        let stored = &run.layers[l.index].weight_codes;
        if stored.iter().any(|s| s.fingerprint == print && s.learned)
            || l.serves_an_unjudged_mode(c, calib, &print, mode)
        {
            continue;
        }
        let codes = LearnedCodes::new(c, &folded.weights, &wq, &act, &run.layers[l.index].mean)
            .map_err(cerr)?;
        vars.push(codes.u.clone());
        l.weights = Some(Weights::Codes(LearnedCodes { print, ..codes }));
    }
    let layers = vars.len();
    if layers == 0 {
        return Ok(Outcome {
            mode,
            layers,
            psnr: [psnr(before); 2],
            kept: false,
            moved: 0.0,
        });
    }
    let start: Vec<Vec<i8>> = (net.int.values())
        .filter_map(|l| match &l.weights {
            Some(Weights::Codes(c)) => Some(c.codes()),
            _ => None,
        })
        .collect::<candle_core::Result<_>>()
        .map_err(cerr)?;
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr: opts.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .map_err(cerr)?;
    progress(0, opts.steps);
    for step in 0..opts.steps {
        opt.set_learning_rate(opts.lr * (1.0 - step as f64 / opts.steps as f64));
        let x = crops.take(opts.batch.max(1))?;
        let y = net.forward(&x, false)?;
        let out = net.forward(&x, true)?;
        let loss = (out - y)
            .and_then(|d| d.sqr())
            .and_then(|d| d.mean_all())
            .map_err(cerr)?;
        opt.backward_step(&loss).map_err(cerr)?;
        progress(step + 1, opts.steps);
    }

    // judged through the integer layers' own folding, with the codes as stored
    let mut chosen = Vec::new();
    let (mut moved, mut total) = (0usize, 0usize);
    let mut start = start.into_iter();
    for l in net.int.values_mut() {
        if let Some(Weights::Codes(lc)) = l.weights.take() {
            let codes = lc.codes().map_err(cerr)?;
            if let Some(s) = start.next() {
                moved += s.iter().zip(&codes).filter(|(a, b)| a != b).count();
                total += codes.len();
            }
            let entry = WeightCodes {
                w: l.w_bits,
                a: l.bits,
                fingerprint: lc.print,
                codes,
                learned: true,
            };
            // codes chosen layer by layer for this folding give way (they are the baseline
            // `before` measured)
            store(&mut run.layers[l.index].weight_codes, entry.clone());
            chosen.push((l.index, entry));
            l.conv = None;
        }
    }
    net.refresh(&run)?;
    let after = net.mse(&holdout, &target)?;
    let kept = after < before;
    if kept {
        for (i, entry) in chosen {
            store(&mut calib.layers[i].weight_codes, entry);
        }
    }
    Ok(Outcome {
        mode,
        layers,
        psnr: [psnr(before), psnr(after)],
        kept,
        moved: moved as f64 / total.max(1) as f64,
    })
}

/// `entry` among a layer's codes, in place of any for the same folding.
fn store(codes: &mut Vec<WeightCodes>, entry: WeightCodes) {
    codes.retain(|c| c.fingerprint != entry.fingerprint);
    codes.push(entry);
}

fn cerr(e: candle_core::Error) -> crate::error::Error {
    super::recon::candle_error("learning weight codes", e)
}

/// One layer's weight codes as variables (code units, `[o, c, k, k]`), with what turns them
/// into the effective weights and bias of the integer layer.
pub(super) struct LearnedCodes {
    u: Var,
    /// Each output channel's smallest and largest code, `[o, 1, 1, 1]`.
    lo: Tensor,
    hi: Tensor,
    /// `s_w[o] / s_in[c]`, `[o, c, 1, 1]`: a code's effective weight.
    scale: Tensor,
    /// The float weights `[o, c, k, k]`, bias `[1, o, 1, 1]` and input channel means
    /// `[1, c, 1, 1]`.
    weights: Tensor,
    bias: Tensor,
    mean: Tensor,
    /// The fingerprint of the folding the codes are for.
    print: String,
}

impl LearnedCodes {
    /// The codes of `c`, whose weights folded with the input steps of `act` are `folded`, with
    /// per-output-channel quantizers `wq`; they start unrounded.
    fn new(
        c: &Conv,
        folded: &[f32],
        wq: &[Quantizer],
        act: &ActQuant,
        mean: &[f32],
    ) -> candle_core::Result<Self> {
        let (o, i, k) = (c.out_ch, c.in_ch, c.k);
        let per = i * k * k;
        let u: Vec<f32> = (folded.iter().enumerate())
            .map(|(n, &w)| {
                let q = &wq[n / per];
                w.clamp(q.alpha, q.beta) * q.inv_step()
            })
            .collect();
        // the quantizer's codes, within the signed range a stored code takes: where
        // `alpha / s` rounds to `-2^(b-1) + 1`, its top code `2^(b-1)` is not storable
        let half = |q: &Quantizer| 1i32 << (q.bits - 1);
        let lo: Vec<f32> = (wq.iter()).map(|q| q.lo().max(-half(q)) as f32).collect();
        let hi: Vec<f32> = (wq.iter())
            .map(|q| (q.lo() + (1 << q.bits) - 1).min(half(q) - 1) as f32)
            .collect();
        let scale: Vec<f32> = (0..o * i)
            .map(|n| wq[n / i].step() / act.channel(n % i).step())
            .collect();
        let t = |v: &[f32], shape: (usize, usize, usize, usize)| {
            Tensor::from_slice(v, shape, &Device::Cpu)
        };
        Ok(LearnedCodes {
            u: Var::from_tensor(&t(&u, (o, i, k, k))?)?,
            lo: t(&lo, (o, 1, 1, 1))?,
            hi: t(&hi, (o, 1, 1, 1))?,
            scale: t(&scale, (o, i, 1, 1))?,
            weights: t(&c.weights, (o, i, k, k))?,
            bias: t(&c.bias, (1, o, 1, 1))?,
            mean: t(mean, (1, i, 1, 1))?,
            print: String::new(),
        })
    }

    /// The codes clamped to the quantizer's range, unrounded.
    fn clamped(&self) -> candle_core::Result<Tensor> {
        (self.u.as_tensor())
            .broadcast_maximum(&self.lo)?
            .broadcast_minimum(&self.hi)
    }

    /// The codes as stored, `[o][c][tap]`.
    fn codes(&self) -> candle_core::Result<Vec<i8>> {
        let v = self.clamped()?.round()?.flatten_all()?.to_vec1::<f32>()?;
        Ok(v.into_iter().map(|c| c as i8).collect())
    }

    /// The effective weights and corrected bias of the integer layer with the current codes:
    /// each code times `s_w / s_in`, the bias less the shift the quantized weights cause on
    /// the channel means.
    pub(super) fn quantized(&self) -> candle_core::Result<(Tensor, Tensor)> {
        let v = self.clamped()?;
        let q = (&v + (v.round()? - &v)?.detach())?;
        let w = q.broadcast_mul(&self.scale)?;
        let o = w.dim(0)?;
        let shift = (&w - &self.weights)?.broadcast_mul(&self.mean)?;
        let shift = shift.sum_keepdim((1, 2, 3))?.reshape((1, o, 1, 1))?;
        Ok((w, self.bias.broadcast_sub(&shift)?))
    }
}

#[cfg(test)]
mod tests {
    use super::super::recon::tests::{random_layer, uniform};
    use super::super::{fingerprint, fold_weights, Bounds};
    use super::*;

    #[test]
    fn learned_codes_are_the_integer_layers_weights_once_stored() {
        let (c, act, mut rng) = random_layer(5, 4);
        let (o, i, k, bits) = (c.out_ch, c.in_ch, c.k, 4);
        let mean = uniform(&mut rng, i, -1.0, 1.0);
        let clip = [0.9f32, 0.7, 1.0, 0.55];
        let (folded, wq) = fold_weights(&c, bits, &act, Bounds::Channel, Some(&clip));
        let lc = LearnedCodes::new(&c, &folded.weights, &wq, &act, &mean).unwrap();
        // unmoved, the codes are the nearest ones the integer layer rounds to
        let per = i * k * k;
        let nearest: Vec<i8> = (folded.weights.iter().enumerate())
            .map(|(n, &w)| wq[n / per].code(w) as i8)
            .collect();
        assert_eq!(lc.codes().unwrap(), nearest);
        // moved by up to a code either way, as learning does
        let push = Tensor::from_vec(
            uniform(&mut rng, o * per, -1.0, 1.0),
            (o, i, k, k),
            &Device::Cpu,
        );
        lc.u.set(&(lc.u.as_tensor() + push.unwrap()).unwrap())
            .unwrap();
        let codes = lc.codes().unwrap();
        let moved = codes.iter().zip(&nearest).filter(|(a, b)| a != b).count();
        assert!(moved > per / 4, "only {moved} codes moved");
        for (n, &q) in codes.iter().enumerate() {
            let q = q as i32;
            let lo = wq[n / per].lo();
            assert!((lo.max(-8)..(lo + 16).min(8)).contains(&q), "code {q}");
        }
        let stored = [WeightCodes {
            w: bits,
            a: bits,
            fingerprint: fingerprint(&folded.weights, &wq),
            codes,
            learned: true,
        }];
        let want = super::super::effective_weights(
            &c,
            bits,
            &act,
            &mean,
            Bounds::Channel,
            Some(&clip),
            &stored,
        );
        let (w, b) = lc.quantized().unwrap();
        let w = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (n, (x, y)) in w.iter().zip(&want.weights).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5 * y.abs().max(1.0),
                "weight {n}: {x} {y}"
            );
        }
        for (x, y) in b.iter().zip(&want.bias) {
            assert!((x - y).abs() <= 1e-4, "bias: {x} {y}");
        }
    }
}
