//! RefER trained end to end (issue 12): the paper's QConv-ReLU-QConv block, learned on the
//! CPU in candle against the fp32 model's output.
//!
//! What RefER sees of a query is its aligned difference `D = Fq - warp(Fr)` at the tap; what
//! it should add is the query's error there, `E = F_fp32 - Fq`. Everything before the tap is
//! fixed by then (steps, clips and codes are calibrated), so the query path's features and the
//! reference's alignment are computed once, as at inference ([`crate::refqsr::fit`]), and
//! only RefER and what follows the tap run in the loop. The tail of the networks refqsr runs
//! is a convolution with no activation followed by a pixel shuffle (and, on Real-ESRGAN
//! compact, an added upsampled input that does not depend on the tap), so the output's error
//! is `tail(R(D) - E)` with the tail conv's bias left out, and the loss is its mean square:
//! the output's error, not the tap's (a fit to the tap's error gained at the tap and lost at
//! the output). Where the last conv has an activation the loss falls back to the tap's error.
//! Each image's windows are weighted by the inverse of that image's error without RefER, so
//! the loss is each image's error relative to its own, the mean over images: what `eval` and
//! the gain judgement score is the mean over images of PSNR, a log of each image's error, and a
//! plain MSE would spend RefER's capacity on the textured images whose errors are largest
//! while smooth images, where a small error is many dB, lose.
//!
//! Both convs run as the integer kernels run them at b_high: the input through Eq. 1 over its
//! searched bounds ([`super::calib::search_bounds`]), the weights folded with the input's step
//! and rounded per output channel ([`super::weight_quantizers`]), the values exactly those
//! codes, the gradients straight through. The hidden ReLU features' bounds are searched again
//! from the current weights every [`REFRESH`] steps. The last conv starts at zero, so training
//! starts from no correction; Adam's rate decays linearly to zero.

use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::{Rng, SeedableRng};

use super::calib::{search_bounds, Histogram};
use super::recon::{candle_error, FakeQuant, FixedConv, LearnedConv};
use super::{weight_quantizers, Quantizer};
use crate::error::{Error, Result};
use crate::model::{Activation, Conv};
use crate::refqsr::ReferConv;

/// One query window's training pair, planar `[c][h][w]`.
pub struct Sample {
    /// The aligned difference `Fq - warp(Fr)`.
    pub d: Vec<f32>,
    /// The query's error at the tap, `F_fp32 - Fq`.
    pub e: Vec<f32>,
    pub h: usize,
    pub w: usize,
    /// The image the window is cut from: each image's windows weigh alike in the loss.
    pub image: usize,
}

/// The knobs of RefER's training.
#[derive(Debug, Clone)]
pub struct Options {
    /// Channels between the two 3x3 convs. With 8 on SPAN ch48 RefER costs 6,912 MACs per
    /// pixel at b_high, which keeps refqsr:8-4 under 0.75x w8a8's body BitOPs.
    pub hidden: usize,
    pub steps: usize,
    /// Crops per step.
    pub batch: usize,
    /// Side of the square crops (tap pixels); windows smaller than it are not used, unless
    /// every window is (the crop is then the largest window's side).
    pub crop: usize,
    /// Adam's initial rate, decayed linearly to zero.
    pub lr: f64,
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            hidden: 8,
            steps: 1200,
            batch: 8,
            crop: 32,
            lr: 2e-3,
            seed: 12,
        }
    }
}

/// Steps between searches of the hidden features' bounds.
pub const REFRESH: usize = 25;

/// Kernel size of both convs.
const K: usize = 3;

fn cerr(e: candle_core::Error) -> Error {
    candle_error("RefER training", e)
}

/// What [`train`] learned and how well it fits its own samples.
pub struct Trained {
    pub convs: Vec<ReferConv>,
    /// The loss on every sample, before (no RefER) and after: the mean over windows of the
    /// output's squared error (through the tail where there is one), each relative to its
    /// image's error without RefER (so before is 1).
    pub mse: [f64; 2],
}

/// Learn RefER for a tap of `c` channels at `bits` (b_high) on `samples`, with the loss through
/// `tail` (the network's last conv, see the module doc); `progress(done, total)` per step.
pub fn train(
    samples: &[Sample],
    c: usize,
    tail: &Conv,
    bits: u32,
    opts: &Options,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Trained> {
    // windows smaller than the crop are left out, unless all are (small images): then the
    // crop shrinks to the largest of them
    let valid = |s: &&Sample| s.d.len() == c * s.h * s.w && s.e.len() == s.d.len();
    let fits = |s: &&Sample, k: usize| valid(s) && s.h >= k && s.w >= k;
    let crop = match samples.iter().any(|s| fits(&s, opts.crop)) {
        true => opts.crop,
        false => (samples.iter().filter(valid))
            .map(|s| s.h.min(s.w))
            .max()
            .unwrap_or(0),
    };
    let usable: Vec<&Sample> = samples.iter().filter(|s| fits(s, crop)).collect();
    let h = opts.hidden.max(1);
    if usable.is_empty() || crop == 0 {
        // nothing to learn from (every patch a reference): no correction, which the gain
        // judgement then switches off
        return Ok(Trained {
            convs: vec![
                ReferConv {
                    k: K,
                    in_ch: c,
                    out_ch: h,
                    input: [-1.0, 1.0],
                    weights: vec![0.0; h * c * K * K],
                    bias: vec![0.0; h],
                },
                ReferConv {
                    k: K,
                    in_ch: h,
                    out_ch: c,
                    input: [0.0, 1.0],
                    weights: vec![0.0; c * h * K * K],
                    bias: vec![0.0; c],
                },
            ],
            mse: [1.0, 1.0],
        });
    }
    let input = bounds_of(
        usable.iter().flat_map(|s| s.d.iter().step_by(7).copied()),
        bits,
    );
    let in_q = Quantizer::new(input[0], input[1], bits);
    let tail = (tail.act == Activation::None)
        .then(|| {
            FixedConv::new(&Conv {
                bias: vec![0.0; tail.out_ch],
                ..tail.clone()
            })
        })
        .transpose()?
        .map(|(conv, _)| conv);

    // each image's mean error without RefER (the loss of a zero correction), and each
    // window's, which is also the loss before training
    let mut base = Vec::with_capacity(usable.len());
    let mut energy: std::collections::BTreeMap<usize, (f64, usize)> = Default::default();
    for s in &usable {
        let e = Tensor::from_slice(&s.e, (1, c, s.h, s.w), &Device::Cpu).map_err(cerr)?;
        let zero = e.zeros_like().map_err(cerr)?;
        let l = loss(tail.as_ref(), &zero, &e, None)?
            .to_scalar::<f32>()
            .map_err(cerr)? as f64;
        base.push(l);
        let x = energy.entry(s.image).or_default();
        *x = (x.0 + l, x.1 + 1);
    }
    let weight: Vec<f32> = usable
        .iter()
        .map(|s| {
            let (sum, n) = energy[&s.image];
            (n as f64 / sum.max(1e-30)) as f32
        })
        .collect();

    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    // He initialisation for the first conv (its ReLU halves the variance), zero for the last
    let fan = (c * K * K) as f32;
    let bound = (6.0 / fan).sqrt();
    let w1: Vec<f32> = (0..h * c * K * K)
        .map(|_| rng.random_range(-bound..bound))
        .collect();
    let var = |v: Vec<f32>, shape: (usize, usize, usize, usize)| {
        Var::from_vec(v, shape, &Device::Cpu).map_err(cerr)
    };
    let w1 = var(w1, (h, c, K, K))?;
    let b1 = var(vec![0.0; h], (1, h, 1, 1))?;
    let w2 = var(vec![0.0; c * h * K * K], (c, h, K, K))?;
    let b2 = var(vec![0.0; c], (1, c, 1, 1))?;
    let mut opt = AdamW::new(
        vec![w1.clone(), b1.clone(), w2.clone(), b2.clone()],
        ParamsAdamW {
            lr: opts.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .map_err(cerr)?;

    let net = Block { bits, in_q };
    let mut hidden_q = Quantizer::new(0.0, 1.0, bits);
    progress(0, opts.steps);
    for step in 0..opts.steps {
        let (d, e, wt) = crops(&usable, &weight, c, crop, opts.batch.max(1), &mut rng)?;
        if step % REFRESH == 0 {
            hidden_q = net.hidden_bounds(&d, &w1, &b1)?;
        }
        opt.set_learning_rate(opts.lr * (1.0 - step as f64 / opts.steps as f64));
        let r = net.forward(&d, &w1, &b1, &w2, &b2, &hidden_q)?;
        let l = loss(tail.as_ref(), &r, &e, Some(&wt))?;
        opt.backward_step(&l).map_err(cerr)?;
        progress(step + 1, opts.steps);
    }

    // the hidden bounds from a larger draw, then every sample whole, as it runs at inference
    let (d, ..) = crops(&usable, &weight, c, crop, 4 * opts.batch.max(1), &mut rng)?;
    let hidden_q = net.hidden_bounds(&d, &w1, &b1)?;
    let mut se = [0f64; 2];
    for ((s, &wt), &before) in usable.iter().zip(&weight).zip(&base) {
        let t = |v: &[f32]| Tensor::from_slice(v, (1, c, s.h, s.w), &Device::Cpu).map_err(cerr);
        let (d, e) = (t(&s.d)?, t(&s.e)?);
        let r = net.forward(&d, &w1, &b1, &w2, &b2, &hidden_q)?;
        let after = loss(tail.as_ref(), &r, &e, None)?
            .to_scalar::<f32>()
            .map_err(cerr)? as f64;
        se[0] += wt as f64 * before;
        se[1] += wt as f64 * after;
    }
    let n = usable.len() as f64;
    let values = |v: &Var| {
        v.flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(cerr)
    };
    Ok(Trained {
        convs: vec![
            ReferConv {
                k: K,
                in_ch: c,
                out_ch: h,
                input,
                weights: values(&w1)?,
                bias: values(&b1)?,
            },
            ReferConv {
                k: K,
                in_ch: h,
                out_ch: c,
                input: [hidden_q.alpha, hidden_q.beta],
                weights: values(&w2)?,
                bias: values(&b2)?,
            },
        ],
        mse: [se[0] / n, se[1] / n],
    })
}

/// The bounds [`search_bounds`] gives `values` at `bits`, widened to contain 0.
fn bounds_of(values: impl Iterator<Item = f32> + Clone, bits: u32) -> [f32; 2] {
    let (lo, hi) = values
        .clone()
        .fold((0f32, 0f32), |(a, b), x| (a.min(x), b.max(x)));
    let mut hist = Histogram::new(lo, hi.max(lo + f32::MIN_POSITIVE));
    for x in values {
        hist.add(x, 1.0);
    }
    let [a, b] = search_bounds(&hist, bits);
    // a feature that is zero everywhere still needs a range
    [a.min(0.0), b.max(a.min(0.0) + f32::MIN_POSITIVE.sqrt())]
}

/// `n` random `crop` x `crop` crops of random samples: (differences, errors) `[n, c, crop,
/// crop]` and the samples' weights `[n, 1, 1, 1]`.
fn crops(
    samples: &[&Sample],
    weight: &[f32],
    c: usize,
    crop: usize,
    n: usize,
    rng: &mut impl Rng,
) -> Result<(Tensor, Tensor, Tensor)> {
    let mut d = Vec::with_capacity(n * c * crop * crop);
    let mut e = Vec::with_capacity(n * c * crop * crop);
    let mut wt = Vec::with_capacity(n);
    for _ in 0..n {
        let i = rng.random_range(0..samples.len());
        let s = samples[i];
        wt.push(weight[i]);
        let (y0, x0) = (
            rng.random_range(0..=s.h - crop),
            rng.random_range(0..=s.w - crop),
        );
        for ch in 0..c {
            for y in y0..y0 + crop {
                let row = (ch * s.h + y) * s.w + x0;
                d.extend_from_slice(&s.d[row..row + crop]);
                e.extend_from_slice(&s.e[row..row + crop]);
            }
        }
    }
    let t = |v: Vec<f32>| Tensor::from_vec(v, (n, c, crop, crop), &Device::Cpu).map_err(cerr);
    let wt = Tensor::from_vec(wt, (n, 1, 1, 1), &Device::Cpu).map_err(cerr)?;
    Ok((t(d)?, t(e)?, wt))
}

/// RefER's block: its bits and the quantizer of its input.
struct Block {
    bits: u32,
    in_q: Quantizer,
}

impl Block {
    /// `x` through Eq. 1 of `q` (per tensor), the gradient straight through inside the codes.
    fn fake_quant(&self, x: &Tensor, q: &Quantizer) -> Result<Tensor> {
        let s = Tensor::new(&[q.step()], &Device::Cpu).map_err(cerr)?;
        (x.contiguous())
            .and_then(|x| x.apply_op2(&s, FakeQuant::new(&[q.lo()], self.bits)))
            .map_err(cerr)
    }

    /// The weights of `w` (`[o][i][k][k]`) as the integer kernels use them behind an input of
    /// step `s_in`: folded with the step, rounded per output channel, unfolded; the gradient
    /// straight through.
    fn fake_weights(&self, w: &Var, s_in: f32) -> Result<Tensor> {
        let (o, ..) = w.dims4().map_err(cerr)?;
        let v = w
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(cerr)?;
        let folded: Vec<f32> = v.iter().map(|x| x * s_in).collect();
        let wq = weight_quantizers(&folded, o, self.bits);
        let per = v.len() / o;
        let (lo, hi) = (-(1i32 << (self.bits - 1)), (1i32 << (self.bits - 1)) - 1);
        let q: Vec<f32> = folded
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let q = &wq[i / per];
                q.code(x).clamp(lo, hi) as f32 * q.step() / s_in
            })
            .collect();
        let q = Tensor::from_vec(q, w.shape(), &Device::Cpu).map_err(cerr)?;
        let t = w.as_tensor();
        (q - t).and_then(|delta| t + delta.detach()).map_err(cerr)
    }

    /// The hidden ReLU features on `d`, before their quantization.
    fn hidden(&self, d: &Tensor, w1: &Var, b1: &Var) -> Result<Tensor> {
        let x = self.fake_quant(d, &self.in_q)?;
        let w = self.fake_weights(w1, self.in_q.step())?;
        (x.apply_op2(&w.contiguous().map_err(cerr)?, LearnedConv))
            .and_then(|y| y.broadcast_add(b1.as_tensor()))
            .and_then(|y| y.relu())
            .map_err(cerr)
    }

    /// The hidden features' quantizer at the current weights, on `d`.
    fn hidden_bounds(&self, d: &Tensor, w1: &Var, b1: &Var) -> Result<Quantizer> {
        let h = self.hidden(d, w1, b1)?;
        let v = h
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(cerr)?;
        let [a, b] = bounds_of(v.iter().copied(), self.bits);
        Ok(Quantizer::new(a, b, self.bits))
    }

    /// RefER's correction `R(D)`.
    fn forward(
        &self,
        d: &Tensor,
        w1: &Var,
        b1: &Var,
        w2: &Var,
        b2: &Var,
        hidden_q: &Quantizer,
    ) -> Result<Tensor> {
        let h = self.hidden(d, w1, b1)?;
        let x = self.fake_quant(&h, hidden_q)?;
        let w = self.fake_weights(w2, hidden_q.step())?;
        (x.apply_op2(&w.contiguous().map_err(cerr)?, LearnedConv))
            .and_then(|y| y.broadcast_add(b2.as_tensor()))
            .map_err(cerr)
    }
}

/// Mean square of `tail(r - e)` (of `r - e` without a linear tail), each sample's squares
/// weighted by `weight` (`[n, 1, 1, 1]`) where given.
fn loss(
    tail: Option<&FixedConv>,
    r: &Tensor,
    e: &Tensor,
    weight: Option<&Tensor>,
) -> Result<Tensor> {
    let diff = (r - e).map_err(cerr)?;
    let y = match tail {
        Some(t) => (diff.contiguous())
            .and_then(|x| x.apply_op1(t.clone()))
            .map_err(cerr)?,
        None => diff,
    };
    let sq = y.sqr().map_err(cerr)?;
    match weight {
        Some(w) => sq.broadcast_mul(w),
        None => Ok(sq),
    }
    .and_then(|y| y.mean_all())
    .map_err(cerr)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tail that is the identity on `c` channels (1x1).
    fn identity(c: usize) -> Conv {
        let mut weights = vec![0.0; c * c];
        for i in 0..c {
            weights[i * c + i] = 1.0;
        }
        Conv {
            in_ch: c,
            out_ch: c,
            k: 1,
            weights,
            bias: vec![0.0; c],
            act: Activation::None,
            epilogue: crate::model::Epilogue::None,
        }
    }

    #[test]
    fn refer_learns_an_error_its_difference_carries_and_nothing_from_noise() {
        // E is a fixed local function of D (a ReLU of a 3x3 blur of one channel, into two
        // others): RefER must learn most of it. With E independent of D it must not make the
        // error worse than no RefER.
        let (c, h, w) = (4, 20, 20);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut make = |carried: bool| -> Vec<Sample> {
            (0..24)
                .map(|_| {
                    let d: Vec<f32> = (0..c * h * w)
                        .map(|_| rng.random_range(-1.0f32..1.0))
                        .collect();
                    let mut e = vec![0f32; c * h * w];
                    for y in 0..h {
                        for x in 0..w {
                            let mut blur = 0f32;
                            for dy in -1i32..=1 {
                                for dx in -1i32..=1 {
                                    let (yy, xx) = (y as i32 + dy, x as i32 + dx);
                                    if (0..h as i32).contains(&yy) && (0..w as i32).contains(&xx) {
                                        blur += d[(yy as usize) * w + xx as usize] / 9.0;
                                    }
                                }
                            }
                            let v = if carried {
                                0.5 * blur.max(0.0)
                            } else {
                                rng.random_range(-0.1f32..0.1)
                            };
                            e[(h + y) * w + x] = v;
                            e[(2 * h + y) * w + x] = -v;
                        }
                    }
                    Sample {
                        d,
                        e,
                        h,
                        w,
                        image: 0,
                    }
                })
                .collect()
        };
        let opts = Options {
            hidden: 4,
            steps: 200,
            batch: 4,
            crop: 12,
            lr: 1e-2,
            seed: 5,
        };
        let carried = make(true);
        let t = train(&carried, c, &identity(c), 8, &opts, &mut |_, _| {}).unwrap();
        assert!(t.mse[1] < 0.3 * t.mse[0], "{:?}", t.mse);
        // the stored convs are what an engine loads
        assert_eq!(t.convs.len(), 2);
        assert_eq!((t.convs[0].in_ch, t.convs[0].out_ch), (c, 4));
        assert_eq!((t.convs[1].in_ch, t.convs[1].out_ch), (4, c));
        for cv in &t.convs {
            assert_eq!(cv.weights.len(), cv.in_ch * cv.out_ch * 9);
            assert!(cv.input[0] <= 0.0 && cv.input[1] > 0.0, "{:?}", cv.input);
        }
        let noise = make(false);
        let t = train(&noise, c, &identity(c), 8, &opts, &mut |_, _| {}).unwrap();
        assert!(t.mse[1] <= 1.02 * t.mse[0], "{:?}", t.mse);
    }

    #[test]
    fn small_windows_shrink_the_crop_and_no_windows_give_no_correction() {
        let c = 4;
        let opts = Options {
            hidden: 2,
            steps: 5,
            batch: 2,
            crop: 12,
            ..Options::default()
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut sample = |h: usize, w: usize, image: usize| Sample {
            d: (0..c * h * w)
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect(),
            e: (0..c * h * w)
                .map(|_| rng.random_range(-0.1f32..0.1))
                .collect(),
            h,
            w,
            image,
        };
        // every window smaller than the crop: they are all used, at their size
        let small = vec![sample(6, 7, 0), sample(7, 6, 1)];
        let t = train(&small, c, &identity(c), 8, &opts, &mut |_, _| {}).unwrap();
        assert!(t.mse[0] > 0.0 && t.mse[1].is_finite(), "{:?}", t.mse);
        // a window of the wrong size is left out, not indexed past its end
        let mut bad = sample(8, 8, 2);
        bad.e.truncate(10);
        let t = train(&[bad], c, &identity(c), 8, &opts, &mut |_, _| {}).unwrap();
        assert!(t.convs[1].weights.iter().all(|&w| w == 0.0));
        assert_eq!(t.mse, [1.0, 1.0]);
        let t = train(&[], c, &identity(c), 8, &opts, &mut |_, _| {}).unwrap();
        assert!(t
            .convs
            .iter()
            .all(|cv| cv.weights.iter().all(|&w| w == 0.0)));
    }

    #[test]
    fn fake_weights_are_the_integer_layers_codes() {
        // the values of the fake-quantized weights are exactly code * step / s_in, with the
        // codes of a PackedIntConv of the same conv behind the same input quantizer
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let (o, i) = (3, 2);
        let v: Vec<f32> = (0..o * i * 9)
            .map(|_| rng.random_range(-0.7f32..0.7))
            .collect();
        let q_in = Quantizer::new(-1.3, 2.1, 4);
        let block = Block {
            bits: 4,
            in_q: q_in,
        };
        let w = Var::from_vec(v.clone(), (o, i, 3, 3), &Device::Cpu).unwrap();
        let got = block
            .fake_weights(&w, q_in.step())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let conv = Conv {
            in_ch: i,
            out_ch: o,
            k: 3,
            weights: v,
            bias: vec![0.0; o],
            act: Activation::None,
            epilogue: crate::model::Epilogue::None,
        };
        let packed = crate::kernels::int_conv::PackedIntConv::new(&conv, 4, q_in);
        let per = i * 9;
        for (j, g) in got.iter().enumerate() {
            let want = packed.codes[j] as f32 * packed.scales[j / per] / q_in.step();
            assert_eq!(*g, want, "weight {j}");
        }
    }
}
