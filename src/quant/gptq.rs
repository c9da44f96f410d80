//! Weight rounding against the inputs a layer sees (GPTQ, Frantar et al. 2023, after OBQ).
//!
//! Rounding each folded weight to its nearest code makes every weight's error small, but
//! what the output sees is `dW x` summed over a window, and those errors add up. Here each
//! layer's weights are quantized one input column at a time, and the error of each column is
//! spread over the columns not yet quantized, in the proportions the layer's input
//! correlations `H = sum x x^T` say cancel it best (the OBS update `dW = -e H^-1_{:,i} /
//! H^-1_{ii}`). The quantizers (steps and clips) stay as calibrated; only which code each
//! weight takes changes, so nothing in the kernels does. `H` is measured on calibration crops
//! through the quantized network, layer by layer in graph order, each layer seeing the codes
//! its predecessors now produce. The bias is then corrected from the channel means as for
//! rounding to nearest.
//!
//! Measured on SPAN x4's held-out calibration crops (PSNR against fp32): w8a8 55.75 -> 59.08
//! dB, w6a6 45.57 -> 48.59; w4a8 41.44 -> 45.09. Two things did not pay and are not here:
//! - at 4-bit inputs after [`super::recon`] (w4a4 41.63, w4a3 39.76, refqsr:8-4's queries
//!   43.78), the codes lost 0.1-1.6 dB: the reconstruction's steps and clips were learned
//!   end to end with the nearest codes' errors in the loop and lean on them. Without it
//!   (searched steps) GPTQ takes w4a4 from 39.12 to 41.20, short of the 41.64 reconstruction
//!   reaches, so those modes keep reconstruction and nearest codes (`calibrate` keeps codes
//!   only where the held-out error goes down);
//! - fitting the codes to the float network's inputs rather than the quantized ones (`W~ = W
//!   F H^-1`, `F = sum f q^T`, with the bias from both means) helped w4a8 (46.22) but lost
//!   at w8a8 (56.84) and w6a6 (47.29).
//!
//! The codes are stored per layer with the fingerprint of the folded weights and quantizers
//! they were chosen for ([`super::calib::WeightCodes`]): any path that folds the layer the same
//! way (a uniform mode, RefQSR's references, its queries' first block) takes them; anything
//! else rounds to nearest. They are kept only where the whole network's error on held-out
//! crops goes down.

use candle_core::Tensor;
use image::Rgb32FImage;

use super::calib::{Calibration, WeightCodes};
use super::recon::{psnr, Crops, Folding, Net};
use super::{Mode, Quantizer};
use crate::error::{Error, Result};
use crate::model::Op;

/// The knobs of one rounding pass.
#[derive(Debug, Clone)]
pub struct Options {
    /// Calibration crops the input correlations are measured on.
    pub crops: usize,
    /// Their side (input pixels).
    pub crop: usize,
    /// Seed of the crop sampler.
    pub seed: u64,
    /// Held-out crops the result is judged on.
    pub holdout: usize,
    /// Added to `H`'s diagonal, as a share of its mean: keeps the inverse tame where inputs
    /// are nearly collinear (GPTQ's 1%).
    pub damp: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            crops: 32,
            crop: 40,
            seed: 21,
            holdout: 16,
            damp: 0.01,
        }
    }
}

/// What one rounding pass did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub mode: Mode,
    /// Layers whose codes were chosen (layers that already had codes for the same folding
    /// keep them).
    pub layers: usize,
    /// PSNR (RGB, against the float output) on held-out crops before and after.
    pub psnr: [f64; 2],
    /// Whether the codes were written (they beat the previous rounding).
    pub kept: bool,
}

/// Crops per forward pass: bounds the memory of the input windows.
const BATCH: usize = 8;

/// Choose the weight codes of every integer layer of `mode` (for a RefQSR mode, of its query
/// path) on crops of `images`, and add them to `calib` where they lower the held-out error.
/// `graph` is prepared ([`super::prepare`]); `progress(done, total)` per layer.
pub fn round_weights(
    graph: &crate::model::Graph,
    calib: &mut Calibration,
    mode: Mode,
    images: &[Rgb32FImage],
    opts: &Options,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Outcome> {
    let (spec, mut run) = folding(graph, calib, mode)?;
    let mut crops = Crops::new(images, opts.crop, opts.seed)?;
    let holdout = crops.take(opts.holdout.max(1))?;
    let data = (0..opts.crops.div_ceil(BATCH).max(1))
        .map(|_| crops.take(BATCH))
        .collect::<Result<Vec<_>>>()?;

    let mut net = Net::new(graph)?;
    net.quantize(&run, spec, None)?;
    net.refresh(&run)?;
    let target = net.forward(&holdout, false)?;
    let before = net.mse(&holdout, &target)?;
    let nodes: Vec<usize> = net.int.keys().copied().collect();
    let mut chosen = Vec::new();
    progress(0, nodes.len());
    for (done, &j) in nodes.iter().enumerate() {
        let l = &net.int[&j];
        let Op::Conv(c) = &graph.nodes[j].op else {
            unreachable!("integer layers are convolutions")
        };
        let Folding {
            folded, wq, print, ..
        } = l.fold_with(c, &run);
        let codes = &run.layers[l.index].weight_codes;
        if codes.iter().all(|s| s.fingerprint != print)
            && !l.serves_an_unjudged_mode(c, calib, &print, mode)
        {
            let n = c.in_ch * c.k * c.k;
            let mut h = vec![0f64; n * n];
            for x in &data {
                add_correlations(&net.input_codes(x, j)?, c.k, &mut h)?;
            }
            let entry = WeightCodes {
                w: l.w_bits,
                a: l.bits,
                fingerprint: print,
                codes: round_columns(&folded.weights, &h, &wq, opts.damp),
                learned: false,
            };
            let index = l.index;
            run.layers[index].weight_codes.push(entry.clone());
            chosen.push((index, entry));
            if let Some(l) = net.int.get_mut(&j) {
                l.conv = None;
            }
            net.refresh(&run)?;
        }
        progress(done + 1, nodes.len());
    }
    let after = net.mse(&holdout, &target)?;
    let kept = after < before;
    let layers = chosen.len();
    if kept {
        for (i, entry) in chosen {
            calib.layers[i].weight_codes.push(entry);
        }
    }
    Ok(Outcome {
        mode,
        layers,
        psnr: [psnr(before), psnr(after)],
        kept,
    })
}

/// The (weight, input) bits the integer layers of `mode` run at (for a RefQSR mode, its
/// query path's), and the calibration they fold with: `calib` itself, or the queries' own.
pub(super) fn folding(
    graph: &crate::model::Graph,
    calib: &Calibration,
    mode: Mode,
) -> Result<((u32, u32), Calibration)> {
    Ok(match mode {
        Mode::Uniform { w, a } => ((w, a), calib.clone()),
        Mode::RefQsr { high, low } => (
            (crate::refqsr::medium(high, low), low),
            crate::refqsr::query_calibration(graph, calib, high),
        ),
        Mode::Fp32 => {
            return Err(Error::Invalid(
                "weight codes are for wXaY or refqsr:H-L modes, not fp32".into(),
            ))
        }
    })
}

fn cerr(e: candle_core::Error) -> Error {
    super::recon::candle_error("weight rounding", e)
}

/// Add `sum q q^T` over every `k`x`k` window of `q` (`[b, c, h, w]`, zero-padded as the
/// kernels pad a real 0) to `h` (`c k^2` squared, in the weights' `[c][tap]` order).
fn add_correlations(q: &Tensor, k: usize, h: &mut [f64]) -> Result<()> {
    let q = windows(q, k)?;
    let qqt = (q.t().and_then(|t| t.contiguous()))
        .and_then(|t| q.matmul(&t))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(cerr)?;
    for (a, x) in h.iter_mut().zip(qqt) {
        *a += x as f64;
    }
    Ok(())
}

/// The `k`x`k` windows of `x` (`[b, c, h, w]`, zero-padded) as the columns of a
/// `[c k^2, b h w]` matrix, rows in the weights' `[c][tap]` order.
fn windows(x: &Tensor, k: usize) -> Result<Tensor> {
    let (b, c, rows, cols) = x.dims4().map_err(cerr)?;
    let v: Vec<f32> = x.flatten_all().and_then(|t| t.to_vec1()).map_err(cerr)?;
    let (n, pad, plane) = (c * k * k, (k / 2) as isize, rows * cols);
    let mut out = vec![0f32; n * b * plane];
    for ch in 0..c {
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut out[((ch * k + ky) * k + kx) * b * plane..][..b * plane];
                for img in 0..b {
                    let src = &v[(img * c + ch) * plane..][..plane];
                    for y in 0..rows {
                        let sy = y as isize + ky as isize - pad;
                        if sy < 0 || sy >= rows as isize {
                            continue;
                        }
                        for x in 0..cols {
                            let sx = x as isize + kx as isize - pad;
                            if sx >= 0 && sx < cols as isize {
                                row[img * plane + y * cols + x] =
                                    src[sy as usize * cols + sx as usize];
                            }
                        }
                    }
                }
            }
        }
    }
    Tensor::from_vec(out, (n, b * plane), &candle_core::Device::Cpu).map_err(cerr)
}

/// The codes of `folded` weights (`[o][n]`, one quantizer per output channel) that keep
/// `sum_x |(W_q - W) x|^2` small for inputs of correlations `h` (`n` by `n`): GPTQ's column
/// sweep, in order of decreasing input energy (its "act-order"), with `damp` of the mean
/// diagonal added. Inputs that never carry anything take their nearest codes, and so does
/// every weight where `h` cannot be factored even with 1000 times the damping.
pub fn round_columns(folded: &[f32], h: &[f64], wq: &[Quantizer], damp: f64) -> Vec<i8> {
    let n = (h.len() as f64).sqrt().round() as usize;
    assert_eq!(n * n, h.len(), "h is not square");
    assert_eq!(
        folded.len(),
        n * wq.len(),
        "weights and quantizers disagree"
    );
    let mean = (0..n).map(|i| h[i * n + i]).sum::<f64>() / n as f64;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| h[b * n + b].total_cmp(&h[a * n + a]));
    let u = (0..4).find_map(|t| {
        let d = damp * 10f64.powi(t) * mean.max(f64::MIN_POSITIVE);
        let mut p = vec![0f64; n * n];
        for (r, &i) in order.iter().enumerate() {
            for (s, &j) in order.iter().enumerate() {
                p[r * n + s] = h[i * n + j];
            }
            // a dead input: its weights multiply only zeros
            p[r * n + r] += d + if h[i * n + i] > 0.0 { 0.0 } else { 1.0 };
        }
        inverse_factor(&cholesky(&p, n)?, n)
    });
    let mut codes = vec![0i8; folded.len()];
    for (o, q) in wq.iter().enumerate() {
        // the codes the kernels carry (see `PackedIntConv::with_quantizers`)
        let half = 1i32 << (q.bits - 1);
        let code = |w: f32| q.code(w).clamp(-half, half - 1);
        let row = &folded[o * n..(o + 1) * n];
        let out = &mut codes[o * n..(o + 1) * n];
        let Some(u) = &u else {
            for (c, &w) in out.iter_mut().zip(row) {
                *c = code(w) as i8;
            }
            continue;
        };
        let mut w: Vec<f64> = order.iter().map(|&i| row[i] as f64).collect();
        for r in 0..n {
            let code = code(w[r] as f32);
            out[order[r]] = code as i8;
            // the OBS update: the columns still to round take back this one's error
            let e = (w[r] - (code as f32 * q.step()) as f64) / u[r * n + r];
            for s in r + 1..n {
                w[s] -= e * u[r * n + s];
            }
        }
    }
    codes
}

/// The upper Cholesky factor `U` of `a^-1` (`a^-1 = U^T U`), row-major, from `a`'s lower
/// Cholesky factor `l`; `None` where rounding leaves `a^-1` not positive definite.
fn inverse_factor(l: &[f64], n: usize) -> Option<Vec<f64>> {
    // a^-1 = L^-T L^-1, by solving L y = e_j, then L^T z = y, column by column
    let mut inv = vec![0f64; n * n];
    let mut y = vec![0f64; n];
    for j in 0..n {
        for i in 0..n {
            let mut s = if i == j { 1.0 } else { 0.0 };
            for k in 0..i {
                s -= l[i * n + k] * y[k];
            }
            y[i] = s / l[i * n + i];
        }
        for i in (0..n).rev() {
            let mut s = y[i];
            for k in i + 1..n {
                s -= l[k * n + i] * inv[k * n + j];
            }
            inv[i * n + j] = s / l[i * n + i];
        }
    }
    let l = cholesky(&inv, n)?;
    // U = L^T
    let mut u = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            u[j * n + i] = l[i * n + j];
        }
    }
    Some(u)
}

/// The lower Cholesky factor of symmetric `a`, or `None` where it is not positive definite.
fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s = a[i * n + j] - (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum::<f64>();
            if i == j {
                if !(s > 0.0 && s.is_finite()) {
                    return None;
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    Some(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// `sum_x |(W_q - W) x|^2 / N` for the inputs `xs`.
    fn output_error(folded: &[f32], codes: &[i8], wq: &[Quantizer], xs: &[Vec<f32>]) -> f64 {
        let n = xs[0].len();
        let mut e = 0.0;
        for x in xs {
            for (o, q) in wq.iter().enumerate() {
                let d: f64 = (0..n)
                    .map(|i| {
                        let wq = codes[o * n + i] as f32 * q.step();
                        ((wq - folded[o * n + i]) * x[i]) as f64
                    })
                    .sum();
                e += d * d;
            }
        }
        e / xs.len() as f64
    }

    fn problem(
        seed: u64,
        n: usize,
        o: usize,
        bits: u32,
    ) -> (Vec<f32>, Vec<Quantizer>, Vec<Vec<f32>>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let folded: Vec<f32> = (0..n * o).map(|_| rng.random_range(-1.0..1.0)).collect();
        let wq = super::super::weight_quantizers(&folded, o, bits);
        // correlated inputs: a few shared factors plus noise, some inputs always 0
        let xs: Vec<Vec<f32>> = (0..400)
            .map(|_| {
                let f: Vec<f32> = (0..3).map(|_| rng.random_range(-2.0..2.0)).collect();
                (0..n)
                    .map(|i| {
                        if i % 7 == 6 {
                            0.0
                        } else {
                            f[i % 3] + 0.3 * rng.random_range(-1.0..1.0f32)
                        }
                    })
                    .collect()
            })
            .collect();
        (folded, wq, xs)
    }

    fn correlations(xs: &[Vec<f32>]) -> Vec<f64> {
        let n = xs[0].len();
        let mut h = vec![0f64; n * n];
        for x in xs {
            for i in 0..n {
                for j in 0..n {
                    h[i * n + j] += (x[i] * x[j]) as f64;
                }
            }
        }
        h
    }

    #[test]
    fn the_sweep_beats_rounding_to_nearest_on_correlated_inputs() {
        for (seed, bits) in [(1, 4), (2, 3), (3, 6)] {
            let (n, o) = (36, 5);
            let (folded, wq, xs) = problem(seed, n, o, bits);
            let codes = round_columns(&folded, &correlations(&xs), &wq, 0.01);
            let nearest: Vec<i8> = (folded.iter().enumerate())
                .map(|(i, &w)| wq[i / n].code(w) as i8)
                .collect();
            let half = 1 << (bits - 1);
            assert!(codes.iter().all(|&c| (-half..half).contains(&(c as i32))));
            let (swept, rtn) = (
                output_error(&folded, &codes, &wq, &xs),
                output_error(&folded, &nearest, &wq, &xs),
            );
            // several times smaller: the shared factors let later columns cancel earlier errors
            assert!(swept < 0.5 * rtn, "{bits} bits: {swept} against {rtn}");
        }
    }

    #[test]
    fn independent_inputs_round_to_nearest() {
        // with no correlation between inputs no column can cancel another's error
        let (n, o) = (20, 3);
        let (folded, wq, _) = problem(4, n, o, 4);
        let mut h = vec![0f64; n * n];
        for i in 0..n {
            h[i * n + i] = 1.0 + i as f64;
        }
        let codes = round_columns(&folded, &h, &wq, 0.01);
        for (i, &w) in folded.iter().enumerate() {
            assert_eq!(
                codes[i] as i32,
                wq[i / n].code(w).clamp(-8, 7),
                "weight {i}"
            );
        }
    }

    #[test]
    fn the_inverse_factor_inverts() {
        let n = 6;
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let m: Vec<f64> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|k| m[i * n + k] * m[j * n + k]).sum::<f64>()
                    + if i == j { 0.5 } else { 0.0 };
            }
        }
        let u = inverse_factor(&cholesky(&a, n).unwrap(), n).unwrap();
        // a U^T U = I
        for i in 0..n {
            for j in 0..n {
                let v: f64 = (0..n)
                    .map(|k| {
                        a[i * n + k] * (0..n).map(|t| u[t * n + k] * u[t * n + j]).sum::<f64>()
                    })
                    .sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-9, "({i}, {j}): {v}");
            }
        }
        assert!(cholesky(&[1.0, 2.0, 2.0, 1.0], 2).is_none());
    }
}
