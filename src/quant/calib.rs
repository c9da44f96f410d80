//! Calibration: the activation bounds `[alpha, beta]` of every quantized layer at every
//! bit-width, found on real images and stored beside the model (`MODEL.calib.json`), and the
//! per-channel weight bounds, searched the same way from the weights alone.
//!
//! The search follows 2DQuant's DOBI (distribution-oriented bound initialization): start from
//! min/max and search the bounds that minimize the quantization error over the observed
//! distribution; activations (asymmetric, long-tailed) search both bounds, weights (roughly
//! symmetric) one symmetric bound per output channel. The error is the one the layer's output
//! sees: with independent rounding errors `e` on the input, `E|W e|^2 = sum_c |W_c|^2 e_c^2`,
//! so each input value counts with its channel's squared weight norm.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{ActQuant, Quantizer};
use crate::error::{Error, Result};
use crate::model::{Conv, Graph, Op};

/// The `format` tag of calibration files this build reads and writes.
pub const FORMAT: &str = "refqsr-calibration-1";

/// Bit-widths every calibration file carries.
pub const BITS: std::ops::RangeInclusive<u32> = 2..=8;

/// The floor of a layer that no bit-width serves: it runs in f32 in every mode (its part of
/// the per-layer spec then reads `[32, 32]`, and the accounting counts it so).
pub const FLOAT: u32 = 32;

/// A calibration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub format: String,
    /// The model's name (its `.param` file stem).
    pub model: String,
    /// The calibration images (file names) and patches used.
    pub images: Vec<String>,
    pub patches: usize,
    /// One entry per quantized convolution, in graph order.
    pub layers: Vec<LayerBounds>,
}

/// The bounds of one quantized convolution's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerBounds {
    /// The convolution's name in the model.
    pub name: String,
    pub in_ch: usize,
    /// Smallest and largest value seen (the min/max bounds, widened to contain 0).
    pub min: f32,
    pub max: f32,
    /// Searched `[alpha, beta]` per bit-width.
    pub bounds: BTreeMap<u32, [f32; 2]>,
    /// Mean of each input channel: quantized weights shift every output by
    /// `sum (w_q - w) mean`, which the bias takes back (bias correction, as in DFQ).
    pub mean: Vec<f32>,
    /// The fewest bits this layer's weights and input may take, whatever the mode asks:
    /// the layer's part of the per-layer quantization spec, set by `calibrate --report` from
    /// its measured sensitivity (see [`crate::calibrate::FLOOR_DB`]). Absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<[u32; 2]>,
    /// Per bit-width, one step per input channel over a shared code range (the per-channel
    /// input quantizer, [`crate::quant::ActQuant`]); absent for a bit-width: `bounds` serves.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub channels: BTreeMap<u32, ChannelSteps>,
    /// Per weight bit-width, one clipping ratio per output channel, learned by reconstruction
    /// ([`crate::quant::recon`]): the symmetric bound of the channel's folded weights is this
    /// share (in `(0, 1]`) of their largest magnitude. Absent for a bit-width: the bound is
    /// searched from the weights alone.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub weight_clip: BTreeMap<u32, Vec<f32>>,
    /// RefQSR's queries' own input steps, per bit-width, where reconstruction learned them on
    /// the query path (weights at b_medium): they replace `channels` there
    /// ([`crate::refqsr::query_calibration`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query_channels: BTreeMap<u32, ChannelSteps>,
    /// The queries' own weight clips, per weight bit-width (see `weight_clip`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query_weight_clip: BTreeMap<u32, Vec<f32>>,
    /// Weight codes chosen against the layer's input statistics ([`crate::quant::gptq`]),
    /// each for the folded weights and quantizers it was computed on: a layer folded the same
    /// way (whatever mode or path folds it) takes them instead of rounding to nearest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weight_codes: Vec<WeightCodes>,
}

/// One layer's quantized weights, as codes, for one way of folding it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightCodes {
    /// The weight and input bits they were computed at (for people and for the checks).
    pub w: u32,
    pub a: u32,
    /// [`crate::quant::fingerprint`] of the folded weights and their quantizers, as 16 hex
    /// digits: the codes are used where it matches and nowhere else.
    pub fingerprint: String,
    /// One code per weight (`[o][c][tap]`), base64 of signed bytes.
    #[serde(with = "base64_codes")]
    pub codes: Vec<i8>,
    /// Learned end to end against the network's output ([`super::rounding`]) rather than
    /// chosen layer by layer ([`super::gptq`]): the end-to-end learning replaces codes chosen
    /// layer by layer where it measures better, never codes learned end to end (those of an
    /// earlier mode of the same folding judged them). Files written before this field read as
    /// chosen layer by layer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub learned: bool,
}

/// Codes as base64 of their bytes: a fifth of their size as a JSON array.
mod base64_codes {
    use base64::Engine;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[i8], s: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = v.iter().map(|&c| c as u8).collect();
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i8>, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = (base64::engine::general_purpose::STANDARD.decode(text))
            .map_err(|e| D::Error::custom(format!("weight codes: {e}")))?;
        Ok(bytes.into_iter().map(|b| b as i8).collect())
    }
}

/// A layer's per-channel input quantizer at one bit-width: channel `c` quantizes over
/// `[lo[c] steps[c], (lo[c] + 2^b - 1) steps[c]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelSteps {
    /// Each channel's smallest code, in `-(2^b - 1)..=0` so that 0 is a code: one per channel,
    /// or one for all (files written before the zero points were per channel hold one
    /// integer).
    #[serde(with = "one_or_many")]
    pub lo: Vec<i32>,
    pub steps: Vec<f32>,
}

impl ChannelSteps {
    /// The smallest code of channel `c`.
    pub fn lo(&self, c: usize) -> i32 {
        self.lo[if self.lo.len() == 1 { 0 } else { c }]
    }
}

/// `lo` as JSON: an array, or (as older files have it) one integer for every channel.
mod one_or_many {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(i32),
        Many(Vec<i32>),
    }

    pub fn serialize<S: Serializer>(v: &[i32], s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i32>, D::Error> {
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(x) => vec![x],
            OneOrMany::Many(v) => v,
        })
    }
}

/// How the input bounds are chosen: searched per channel (the default, where the calibration
/// has them), searched per tensor, or plain min/max per tensor, to show what each is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Bounds {
    #[default]
    Channel,
    Searched,
    MinMax,
}

impl std::fmt::Display for Bounds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Bounds::Channel => "channel",
            Bounds::Searched => "searched",
            Bounds::MinMax => "minmax",
        })
    }
}

impl std::str::FromStr for Bounds {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "channel" => Ok(Bounds::Channel),
            "searched" => Ok(Bounds::Searched),
            "minmax" => Ok(Bounds::MinMax),
            _ => Err(Error::Invalid(format!(
                "unknown bounds `{s}`: use channel, searched or minmax"
            ))),
        }
    }
}

/// Indices of the convolutions a quantized mode runs in integers: all but the first and the
/// tail (see [`super::accounting::float_convs`]), in graph order.
pub fn body_convs(g: &Graph) -> Vec<usize> {
    let float = super::accounting::float_convs(g);
    (0..g.nodes.len())
        .filter(|j| matches!(g.nodes[*j].op, Op::Conv(_)) && !float.contains(j))
        .collect()
}

impl Calibration {
    /// Read and check a calibration file against `graph`.
    pub fn load(path: &Path, graph: &Graph) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path, graph)
    }

    /// Parse calibration `text` (from `origin`, for messages) and check it against `graph`.
    pub fn parse(text: &str, origin: &Path, graph: &Graph) -> Result<Self> {
        let bad = |m: String| Error::model(origin, m);
        let c: Calibration =
            serde_json::from_str(text).map_err(|e| bad(format!("not a calibration file: {e}")))?;
        if c.format != FORMAT {
            return Err(bad(format!(
                "calibration format `{}`, this build reads `{FORMAT}`",
                c.format
            )));
        }
        let body = body_convs(graph);
        if c.layers.len() != body.len() {
            return Err(bad(format!(
                "calibrates {} layers, model `{}` quantizes {}: recalibrate with `refqsr calibrate`",
                c.layers.len(),
                graph.name,
                body.len()
            )));
        }
        for (l, &j) in c.layers.iter().zip(&body) {
            let n = &graph.nodes[j];
            let Op::Conv(conv) = &n.op else {
                unreachable!()
            };
            if l.name != n.name || l.in_ch != conv.in_ch {
                return Err(bad(format!(
                    "layer `{}` ({} channels) does not match the model's `{}` ({} channels): recalibrate with `refqsr calibrate`",
                    l.name, l.in_ch, n.name, conv.in_ch
                )));
            }
            if l.mean.len() != l.in_ch || l.mean.iter().any(|m| !m.is_finite()) {
                return Err(bad(format!(
                    "layer `{}` needs {} finite channel means, has {}",
                    l.name,
                    l.in_ch,
                    l.mean.len()
                )));
            }
            let valid = |f: [u32; 2]| f == [FLOAT; 2] || f.iter().all(|b| BITS.contains(b));
            if let Some(f) = l.floor.filter(|&f| !valid(f)) {
                return Err(bad(format!(
                    "layer `{}` has a precision floor of {f:?} bits: each must be in {}..={}, or both {FLOAT} (float)",
                    l.name,
                    BITS.start(),
                    BITS.end()
                )));
            }
            if let Some(b) = BITS.clone().find(|b| !l.bounds.contains_key(b)) {
                return Err(bad(format!(
                    "layer `{}` has no bounds for {b} bits",
                    l.name
                )));
            }
            let ok =
                |a: f32, b: f32| a.is_finite() && b.is_finite() && a <= 0.0 && b >= 0.0 && b > a;
            if !ok(l.min, l.max) || l.bounds.values().any(|[a, b]| !ok(*a, *b)) {
                return Err(bad(format!(
                    "layer `{}` has bounds that are not finite or do not contain 0",
                    l.name
                )));
            }
            let steps = (l.channels.iter().map(|c| ("channels", c)))
                .chain(l.query_channels.iter().map(|c| ("query_channels", c)));
            for (field, (&b, ch)) in steps {
                let what = if !BITS.contains(&b) {
                    Some(format!("{b} bits"))
                } else if let Some(lo) =
                    (ch.lo.iter()).find(|lo| !(-((1 << b) - 1)..=0).contains(*lo))
                {
                    Some(format!("lo {lo} (codes must contain 0)"))
                } else if ch.steps.len() != l.in_ch || l.in_ch > crate::quant::MAX_ACT_CHANNELS {
                    Some(format!("{} steps for {} channels", ch.steps.len(), l.in_ch))
                } else if ch.lo.len() != 1 && ch.lo.len() != l.in_ch {
                    Some(format!("{} lo for {} channels", ch.lo.len(), l.in_ch))
                } else {
                    (ch.steps.iter().position(|s| !(s.is_finite() && *s > 0.0)))
                        .map(|c| format!("step {} of channel {c}", ch.steps[c]))
                };
                if let Some(what) = what {
                    return Err(bad(format!(
                        "layer `{}`: {field}.{b}: {what}, steps must be finite and positive",
                        l.name
                    )));
                }
            }
            let clips = (l.weight_clip.iter().map(|c| ("weight_clip", c)))
                .chain(l.query_weight_clip.iter().map(|c| ("query_weight_clip", c)));
            for (field, (&b, clip)) in clips {
                let what = if !BITS.contains(&b) {
                    Some(format!("{b} bits"))
                } else if clip.len() != conv.out_ch {
                    Some(format!(
                        "{} ratios for {} channels",
                        clip.len(),
                        conv.out_ch
                    ))
                } else {
                    (clip.iter().position(|r| !(*r > 0.0 && *r <= 1.0)))
                        .map(|o| format!("ratio {} of channel {o}", clip[o]))
                };
                if let Some(what) = what {
                    return Err(bad(format!(
                        "layer `{}`: {field}.{b}: {what}, ratios must be in (0, 1]",
                        l.name
                    )));
                }
            }
        }
        c.check_codes(graph, &bad)?;
        Ok(c)
    }

    /// Check each layer's stored weight codes: their count and range, and that they were
    /// computed for this file's steps and clips (the uniform modes' or the queries'), since
    /// codes for other ones are never used.
    fn check_codes(&self, graph: &Graph, bad: &dyn Fn(String) -> Error) -> Result<()> {
        for (i, (l, &j)) in self.layers.iter().zip(&body_convs(graph)).enumerate() {
            let Op::Conv(conv) = &graph.nodes[j].op else {
                unreachable!("body_convs lists convolutions")
            };
            for e in &l.weight_codes {
                let wrong = |what: String| {
                    bad(format!(
                        "layer `{}`: weight_codes w{}a{}: {what}",
                        l.name, e.w, e.a
                    ))
                };
                if !BITS.contains(&e.w) || !l.bounds.contains_key(&e.a) {
                    return Err(wrong(format!(
                        "bits must be in {}..={}",
                        BITS.start(),
                        BITS.end()
                    )));
                }
                let n = conv.out_ch * conv.in_ch * conv.k * conv.k;
                if e.codes.len() != n {
                    return Err(wrong(format!("{} codes for {n} weights", e.codes.len())));
                }
                let half = 1i32 << (e.w - 1);
                if let Some(q) = (e.codes.iter()).find(|&&q| !(-half..half).contains(&(q as i32))) {
                    return Err(wrong(format!("code {q} outside {}..{half}", -half)));
                }
                let fits = self.codes_fit(i, conv, e);
                if !fits {
                    return Err(wrong(
                        "computed for other steps or weight clips than this file's (stale): rechoose them with `refqsr calibrate --round-only`".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether codes `e` of body layer `i` (convolution `conv`) were computed for this
    /// calibration's steps and clips: the uniform modes' or the queries' (the codes' bits
    /// must be valid).
    fn codes_fit(&self, i: usize, conv: &Conv, e: &WeightCodes) -> bool {
        let l = &self.layers[i];
        let plain = (
            self.quantizer(i, e.a, Bounds::Channel),
            l.weight_clip.get(&e.w),
        );
        let query = (
            (l.query_channels.get(&e.a))
                .map(|q| ActQuant::per_channel(e.a, &q.lo, &q.steps))
                .unwrap_or_else(|| plain.0.clone()),
            l.query_weight_clip.get(&e.w).or(plain.1),
        );
        [plain, query].iter().any(|(act, clip)| {
            let clip = clip.map(Vec::as_slice);
            let (folded, wq) = super::fold_weights(conv, e.w, act, Bounds::Channel, clip);
            super::fingerprint(&folded.weights, &wq) == e.fingerprint
        })
    }

    /// Drop the weight codes that no longer fit the steps and clips (after they were
    /// learned again): they would never be used.
    pub fn drop_stale_codes(&mut self, graph: &Graph) {
        for (i, &j) in body_convs(graph).iter().enumerate() {
            let Op::Conv(conv) = &graph.nodes[j].op else {
                unreachable!("body_convs lists convolutions")
            };
            let codes = std::mem::take(&mut self.layers[i].weight_codes);
            let kept = codes
                .into_iter()
                .filter(|e| self.codes_fit(i, conv, e))
                .collect();
            self.layers[i].weight_codes = kept;
        }
    }

    /// Write as pretty JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("calibration serializes");
        crate::imageio::atomic_write(path, |w| {
            std::io::Write::write_all(w, text.as_bytes()).map_err(|e| Error::io(path, e))
        })
    }

    /// The (weight, activation) bits of each body layer in a mode asking for `w` and `a`:
    /// the mode's, raised to the layer's floor ([`FLOAT`]: kept in f32). This is the
    /// per-layer spec the planner runs and the accounting counts.
    pub fn spec(&self, w: u32, a: u32) -> Vec<[u32; 2]> {
        self.layers
            .iter()
            .map(|l| {
                let [fw, fa] = l.floor.unwrap_or([0, 0]);
                [w.max(fw), a.max(fa)]
            })
            .collect()
    }

    /// The learned weight clip of body layer `i` at `bits` (with [`Bounds::Channel`] only: it
    /// was learned with the per-channel steps).
    pub fn weight_clip(&self, i: usize, bits: u32, how: Bounds) -> Option<&[f32]> {
        match how {
            Bounds::Channel => self.layers[i].weight_clip.get(&bits).map(Vec::as_slice),
            _ => None,
        }
    }

    /// The stored weight codes of body layer `i` (with [`Bounds::Channel`] only, like the
    /// clips they were computed with).
    pub fn codes(&self, i: usize, how: Bounds) -> &[WeightCodes] {
        match how {
            Bounds::Channel => &self.layers[i].weight_codes,
            _ => &[],
        }
    }

    /// The input quantizer of body layer `i` (index into [`body_convs`]) at `bits`
    /// ([`Bounds::Channel`] falls back to the per-tensor bounds where the file has no steps).
    pub fn quantizer(&self, i: usize, bits: u32, how: Bounds) -> ActQuant {
        let l = &self.layers[i];
        match (how, l.channels.get(&bits)) {
            (Bounds::MinMax, _) => Quantizer::new(l.min, l.max, bits).into(),
            (Bounds::Channel, Some(ch)) => ActQuant::per_channel(bits, &ch.lo, &ch.steps),
            _ => {
                let [a, b] = l.bounds[&bits];
                Quantizer::new(a, b, bits).into()
            }
        }
    }
}

/// `c` with its bias corrected for the mean shift its quantized weights `quantized` cause on
/// inputs of the given channel means: `bias_o -= sum_{i, tap} (w_q - w) mean_i`.
pub fn correct_bias(c: &Conv, quantized: &[f32], mean: &[f32]) -> Conv {
    let taps = c.k * c.k;
    let per = c.in_ch * taps;
    let mut out = c.clone();
    for (o, b) in out.bias.iter_mut().enumerate() {
        let range = o * per..(o + 1) * per;
        let shift: f64 = (c.weights[range.clone()].iter().zip(&quantized[range]))
            .enumerate()
            .map(|(i, (&w, &q))| ((q - w) * mean[i / taps]) as f64)
            .sum();
        *b -= shift as f32;
    }
    out
}

/// Per input channel of `c`: the squared norm of its weights over outputs and taps.
pub fn channel_weights(c: &Conv) -> Vec<f64> {
    let taps = c.k * c.k;
    let mut w = vec![0f64; c.in_ch];
    for (i, v) in c.weights.iter().enumerate() {
        w[(i / taps) % c.in_ch] += (*v as f64) * (*v as f64);
    }
    w
}

/// A weighted histogram of values over `[lo, hi]` keeping, per bin, the weight and the first
/// two weighted moments, so the squared error of any quantizer whose rounding does not split a
/// bin is exact: `sum w (q - x)^2 = q^2 W - 2 q S1 + S2`.
#[derive(Debug, Clone)]
pub struct Histogram {
    pub lo: f32,
    pub hi: f32,
    bins: Vec<[f64; 3]>,
}

/// How much more a clipped value's error costs than a rounding error of the same size.
/// Rounding errors are independent from pixel to pixel, so a 3x3 kernel sums them in power;
/// clipping errors are not (a clipped highlight covers its neighbours), so the kernel sums
/// them in amplitude: up to 9x the power. Without this factor the search clips SPAN's wide
/// feature maps hard and w8a8 loses 0.5 dB PSNR-Y on the shipped photos instead of 0.2.
pub const CLIP_GAIN: f64 = 9.0;

/// Bins per histogram: 16 per step of an 8-bit quantizer over the full range.
const BINS: usize = 4096;

/// Bins per channel's histogram: there are 48-64 per layer, each searched once per
/// bit-width and shared code range ([`channel_steps`]).
pub const CHANNEL_BINS: usize = 1024;

impl Histogram {
    /// An empty histogram over `[lo, hi]` (which must contain 0).
    pub fn new(lo: f32, hi: f32) -> Self {
        Self::with_bins(lo, hi, BINS)
    }

    /// An empty histogram of `bins` bins over `[lo, hi]`.
    pub fn with_bins(lo: f32, hi: f32, bins: usize) -> Self {
        Histogram {
            lo,
            hi: if hi > lo { hi } else { lo + 1.0 },
            bins: vec![[0.0; 3]; bins],
        }
    }

    pub fn add(&mut self, x: f32, weight: f64) {
        let n = self.bins.len();
        let t = ((x - self.lo) / (self.hi - self.lo) * n as f32) as isize;
        let b = &mut self.bins[t.clamp(0, n as isize - 1) as usize];
        let x = x as f64;
        b[0] += weight;
        b[1] += weight * x;
        b[2] += weight * x * x;
    }

    /// Weighted squared error of `q` over the histogram; clipped values count
    /// [`CLIP_GAIN`] times (see there).
    pub fn error(&self, q: &Quantizer) -> f64 {
        self.bins
            .iter()
            .filter(|b| b[0] > 0.0)
            .map(|&[w, s1, s2]| {
                let mean = (s1 / w) as f32;
                let v = q.quantize(mean) as f64;
                let gain = if mean < q.alpha || mean > q.beta {
                    CLIP_GAIN
                } else {
                    1.0
                };
                gain * (v * v * w - 2.0 * v * s1 + s2).max(0.0)
            })
            .sum()
    }
}

/// The `[alpha, beta]` at `bits` minimizing [`Histogram::error`]: a grid over both bounds
/// shrunk from min/max, then a finer grid around the best (DOBI's asymmetric search).
pub fn search_bounds(h: &Histogram, bits: u32) -> [f32; 2] {
    let (lo, hi) = (h.lo.min(0.0), h.hi.max(0.0));
    let eval = |fa: f32, fb: f32| {
        let (a, b) = (lo * fa, hi * fb);
        if b - a <= 0.0 {
            return (f64::INFINITY, [lo, hi]);
        }
        (h.error(&Quantizer::new(a, b, bits)), [a, b])
    };
    // fractions of min/max kept: 1.0 down to 0.05
    let coarse = |i: usize| 1.0 - 0.95 * i as f32 / 32.0;
    let mut best = (f64::INFINITY, [lo, hi], (0usize, 0usize));
    for i in 0..=32 {
        for j in 0..=32 {
            let (e, ab) = eval(coarse(i), coarse(j));
            if e < best.0 {
                best = (e, ab, (i, j));
            }
        }
    }
    let (ci, cj) = best.2;
    let mut out = (best.0, best.1);
    for i in -8i32..=8 {
        for j in -8i32..=8 {
            let fa = (coarse(ci) + 0.95 / 32.0 * i as f32 / 8.0).clamp(0.01, 1.0);
            let fb = (coarse(cj) + 0.95 / 32.0 * j as f32 / 8.0).clamp(0.01, 1.0);
            let (e, ab) = eval(fa, fb);
            if e < out.0 {
                out = (e, ab);
            }
        }
    }
    out.1
}

/// The widest activations whose channels each get their own code range (zero point); wider
/// ones share one. Measured on SPAN x4's 29 held-out photos, against one shared range:
/// w4a4 35.85 -> 36.22 dB and w4a3 34.96 -> 35.45, but w8a8 40.40 -> 39.61 and w6a6 38.86 ->
/// 38.67. With few codes, those a channel spends on a sign it never takes cost more than the
/// clipping of values the calibration photos never reached; with many codes the trade turns:
/// a channel that never went negative on them gets no negative code, and photos that do (a
/// smooth digital painting lost 6.3 dB at w8a8) are clipped to a biased output.
pub const OWN_ZERO_BITS: u32 = 4;

/// The per-channel input quantizer at `bits` of a layer whose channels' values (each weighted
/// by what its errors cost the output, as in [`search_bounds`]) are `hists`.
///
/// Channel `c`'s bounds are `[lo_c s_c, (lo_c + 2^b - 1) s_c]`: `lo_c` sets how its codes
/// split between negative and positive values. Each channel's own bounds are searched first.
/// At [`OWN_ZERO_BITS`] or fewer, each channel then tries every `lo_c` with the smallest step
/// that keeps its bounds, and the best few are refined by scaling the step down where
/// clipping more costs less. Wider, the channels share one `lo` (see [`ActQuant`]): every
/// `lo` is tried the same way, and the one of least total error wins.
pub fn channel_steps(hists: &[Histogram], bits: u32) -> ChannelSteps {
    let n = 1i32 << bits;
    let own: Vec<[f32; 2]> = hists.iter().map(|h| search_bounds(h, bits)).collect();
    // a step for a channel with nothing in it: any will do, so the widest one seen
    let fallback = own
        .iter()
        .map(|[a, b]| (b - a) / (n - 1) as f32)
        .fold(f32::MIN_POSITIVE, f32::max);
    let step = |[a, b]: [f32; 2], lo: i32| -> f32 {
        // lo codes below zero, n - 1 + lo above it; a side without codes is clipped
        let below = if lo < 0 { -a / -lo as f32 } else { 0.0 };
        let above = if n - 1 + lo > 0 {
            b / (n - 1 + lo) as f32
        } else {
            0.0
        };
        let s = below.max(above);
        if s > 0.0 && s.is_finite() {
            s
        } else {
            fallback
        }
    };
    let error = |h: &Histogram, lo: i32, s: f32| {
        h.error(&Quantizer::new(
            lo as f32 * s,
            (lo + n - 1) as f32 * s,
            bits,
        ))
    };
    // a channel's best step at `lo` (its error and step): the smallest that keeps its bounds,
    // scaled down where clipping more costs less
    let best = |h: &Histogram, bounds: [f32; 2], lo: i32| -> (f64, f32) {
        let s0 = step(bounds, lo);
        (0..=12)
            .map(|i| s0 * (1.0 - 0.05 * i as f32))
            .map(|s| (error(h, lo, s), s))
            .fold((f64::INFINITY, s0), |a, b| if b.0 < a.0 { b } else { a })
    };
    // the coarse pass tries every lo at the channels' own bounds, the fine one refines the
    // best few; `channels` are those whose error counts
    let search = |channels: &[usize]| -> (i32, Vec<f32>) {
        let mut coarse: Vec<(f64, i32)> = (-(n - 1)..=0)
            .map(|lo| {
                let e = channels
                    .iter()
                    .map(|&c| error(&hists[c], lo, step(own[c], lo)))
                    .sum::<f64>();
                (e, lo)
            })
            .collect();
        coarse.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (_, lo, steps) = coarse
            .iter()
            .take(4)
            .map(|&(_, lo)| {
                let per: Vec<(f64, f32)> = (channels.iter())
                    .map(|&c| best(&hists[c], own[c], lo))
                    .collect();
                let total: f64 = per.iter().map(|p| p.0).sum();
                (
                    total,
                    lo,
                    per.into_iter().map(|p| p.1).collect::<Vec<f32>>(),
                )
            })
            .fold((f64::INFINITY, 0, Vec::new()), |a, b| {
                if b.0 < a.0 {
                    b
                } else {
                    a
                }
            });
        (lo, steps)
    };
    if bits <= OWN_ZERO_BITS {
        let (lo, steps) = (0..hists.len())
            .map(|c| {
                let (lo, s) = search(&[c]);
                (lo, s[0])
            })
            .unzip();
        ChannelSteps { lo, steps }
    } else {
        let all: Vec<usize> = (0..hists.len()).collect();
        let (lo, steps) = search(&all);
        ChannelSteps {
            lo: vec![lo],
            steps,
        }
    }
}

/// Per-output-channel symmetric weight quantizers with the clipping bound searched for the
/// least squared error of the channel's weights (min/max is the search's first candidate).
pub fn searched_weight_quantizers(weights: &[f32], out_ch: usize, bits: u32) -> Vec<Quantizer> {
    let per = weights.len() / out_ch;
    super::weight_quantizers(weights, out_ch, bits)
        .into_iter()
        .zip(weights.chunks(per))
        .map(|(minmax, w)| {
            let error = |q: &Quantizer| -> f64 {
                w.iter()
                    .map(|&x| ((q.quantize(x) - x) as f64).powi(2))
                    .sum()
            };
            (0..=100)
                .map(|i| {
                    let m = minmax.beta * (1.0 - 0.009 * i as f32);
                    let q = Quantizer::new(-m, m, bits);
                    (error(&q), q)
                })
                // the first of equal errors: the least clipping
                .fold(
                    (f64::INFINITY, minmax),
                    |a, b| if b.0 < a.0 { b } else { a },
                )
                .1
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A long-tailed sample: mostly small values, a few large ones.
    fn tailed(n: usize) -> Vec<f32> {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = (s >> 11) as f32 / (1u64 << 53) as f32;
                let v = -(1.0 - u).ln() * 0.2; // exponential
                if s % 3 == 0 {
                    -v * 0.3
                } else {
                    v
                }
            })
            .collect()
    }

    fn direct_error(xs: &[f32], q: &Quantizer) -> f64 {
        xs.iter()
            .map(|&x| ((q.quantize(x) - x) as f64).powi(2))
            .sum()
    }

    #[test]
    fn histogram_error_matches_the_direct_sum() {
        let xs = tailed(20_000);
        let (lo, hi) = xs
            .iter()
            .fold((0f32, 0f32), |(a, b), &x| (a.min(x), b.max(x)));
        let mut h = Histogram::new(lo, hi);
        xs.iter().for_each(|&x| h.add(x, 1.0));
        for bits in [4, 8] {
            let q = Quantizer::new(lo, hi, bits);
            let (a, b) = (h.error(&q), direct_error(&xs, &q));
            assert!((a - b).abs() <= 0.05 * b, "{bits} bits: {a} vs {b}");
        }
    }

    #[test]
    fn searched_bounds_beat_min_max_at_low_bits_and_contain_zero() {
        let xs = tailed(50_000);
        let (lo, hi) = xs
            .iter()
            .fold((0f32, 0f32), |(a, b), &x| (a.min(x), b.max(x)));
        let mut h = Histogram::new(lo, hi);
        xs.iter().for_each(|&x| h.add(x, 1.0));
        for bits in [2, 4, 8] {
            let [a, b] = search_bounds(&h, bits);
            assert!(a <= 0.0 && b >= 0.0 && a >= lo && b <= hi);
            let searched = direct_error(&xs, &Quantizer::new(a, b, bits));
            let minmax = direct_error(&xs, &Quantizer::new(lo, hi, bits));
            assert!(searched <= minmax * 1.001, "{bits}: {searched} vs {minmax}");
            if bits <= 4 {
                assert!(searched < 0.7 * minmax, "{bits}: {searched} vs {minmax}");
            }
        }
    }

    #[test]
    fn channel_steps_follow_each_channel_and_beat_one_step() {
        // channels of one sign or both, with ranges 100x apart
        let base = tailed(20_000);
        let shapes: [(f32, bool); 4] = [(0.05, false), (5.0, false), (0.5, true), (2.0, true)];
        let hists: Vec<Histogram> = shapes
            .iter()
            .map(|&(scale, signed)| {
                let xs: Vec<f32> = base
                    .iter()
                    .map(|&x| if signed { x * scale } else { x.abs() * scale })
                    .collect();
                let (lo, hi) = xs
                    .iter()
                    .fold((0f32, 0f32), |(a, b), &x| (a.min(x), b.max(x)));
                let mut h = Histogram::with_bins(lo, hi, CHANNEL_BINS);
                xs.iter().for_each(|&x| h.add(x, 1.0));
                h
            })
            .collect();
        for bits in [4, 8] {
            let ch = channel_steps(&hists, bits);
            let n = 1 << bits;
            assert!(
                ch.lo.iter().all(|lo| (-(n - 1)..=0).contains(lo)),
                "{bits}: lo {:?}",
                ch.lo
            );
            assert_eq!(ch.steps.len(), 4);
            assert!(ch.steps.iter().all(|s| s.is_finite() && *s > 0.0));
            if bits <= OWN_ZERO_BITS {
                // each channel's codes split as its values do: none spent below zero on the
                // channels of one sign; on the signed ones (a third of the values below zero,
                // reaching 0.3x as far) about a quarter
                assert!(ch.lo[0] >= -1 && ch.lo[1] >= -1, "{bits}: lo {:?}", ch.lo);
                let quarter = |lo: i32| (-n / 2..=-n / 8).contains(&lo);
                assert!(
                    quarter(ch.lo[2]) && quarter(ch.lo[3]),
                    "{bits}: lo {:?}",
                    ch.lo
                );
            } else {
                assert_eq!(ch.lo.len(), 1, "{bits}: one code range");
            }
            // the step follows the channel's scale
            assert!(ch.steps[1] > 20.0 * ch.steps[0], "{bits}: {:?}", ch.steps);
            // and the total error is far below that of the best single quantizer of them all
            let q = ActQuant::per_channel(bits, &ch.lo, &ch.steps);
            let per: f64 = (0..4).map(|c| hists[c].error(q.channel(c))).sum();
            let mut all = Histogram::new(-10.0, 10.0);
            for (&(scale, signed), _) in shapes.iter().zip(&hists) {
                base.iter()
                    .for_each(|&x| all.add(if signed { x * scale } else { x.abs() * scale }, 1.0));
            }
            let [a, b] = search_bounds(&all, bits);
            let one = all.error(&Quantizer::new(a, b, bits));
            assert!(per < 0.8 * one, "{bits} bits: per channel {per}, one {one}");
        }
    }

    #[test]
    fn weight_search_never_loses_to_min_max() {
        let w = tailed(4 * 432);
        for bits in [3, 4, 8] {
            let s = searched_weight_quantizers(&w, 4, bits);
            let m = super::super::weight_quantizers(&w, 4, bits);
            for (c, chunk) in w.chunks(432).enumerate() {
                assert!(direct_error(chunk, &s[c]) <= direct_error(chunk, &m[c]));
                assert_eq!(s[c].alpha, -s[c].beta);
            }
        }
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;

    fn span() -> (Graph, String) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/models");
        let g =
            Graph::load_ncnn(&dir.join("spanx4_ch48.param"), &dir.join("spanx4_ch48.bin")).unwrap();
        let text = std::fs::read_to_string(dir.join("spanx4_ch48.calib.json")).unwrap();
        (crate::quant::prepare(g), text)
    }

    #[test]
    fn the_shipped_calibration_matches_its_model() {
        let (g, text) = span();
        let c = Calibration::parse(&text, Path::new("x.json"), &g).unwrap();
        assert_eq!(c.layers.len(), body_convs(&g).len());
        // and round-trips through the file format
        let again = serde_json::to_string(&c).unwrap();
        assert_eq!(
            Calibration::parse(&again, Path::new("y.json"), &g).unwrap(),
            c
        );
    }

    #[test]
    fn calibrations_that_do_not_fit_are_named_errors() {
        let (g, text) = span();
        let c: Calibration = serde_json::from_str(&text).unwrap();
        let check = |c: &Calibration, want: &str| {
            let e = Calibration::parse(
                &serde_json::to_string(c).unwrap(),
                Path::new("bad.json"),
                &g,
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("bad.json") && e.contains(want), "{want}: {e}");
        };
        let mut fewer = c.clone();
        fewer.layers.pop();
        check(&fewer, "calibrates 22 layers");
        let mut renamed = c.clone();
        renamed.layers[3].name = "other".into();
        check(&renamed, "does not match");
        let mut no_bits = c.clone();
        no_bits.layers[0].bounds.remove(&5);
        check(&no_bits, "no bounds for 5 bits");
        let mut format = c.clone();
        format.format = "v0".into();
        check(&format, "format");
        let mut zero = c.clone();
        zero.layers[1].bounds.insert(8, [0.5, 1.0]);
        check(&zero, "contain 0");
        let mut means = c.clone();
        means.layers[2].mean.pop();
        check(&means, "channel means");
        // per-channel steps: reversed or empty code ranges, NaN, zero or negative steps, too few
        let mut good = c.clone();
        let in_ch = good.layers[0].in_ch;
        good.layers[0].channels.insert(
            8,
            ChannelSteps {
                lo: vec![-3],
                steps: vec![0.01; in_ch],
            },
        );
        Calibration::parse(
            &serde_json::to_string(&good).unwrap(),
            Path::new("ok.json"),
            &g,
        )
        .unwrap();
        for (lo, step, count, want) in [
            (1, 0.01, 0, "lo 1"),
            (-300, 0.01, 0, "lo -300"),
            (-3, f32::NAN, 0, "not a calibration file"),
            (-3, 0.0, 0, "step 0"),
            (-3, -0.5, 0, "step -0.5"),
            (-3, 0.01, 1, "steps for"),
        ] {
            let mut bad = good.clone();
            let ch = bad.layers[0].channels.get_mut(&8).unwrap();
            ch.lo = vec![lo];
            ch.steps[7] = step;
            for _ in 0..count {
                ch.steps.pop();
            }
            check(&bad, want);
        }
        // the queries' own steps are checked the same way
        let mut bad = good.clone();
        let mut steps = bad.layers[0].channels[&8].clone();
        steps.lo = vec![1];
        bad.layers[0].query_channels.insert(8, steps);
        check(&bad, "query_channels.8: lo 1");
        // one code range per channel, or one for all: any other count is refused
        let mut bad = good.clone();
        bad.layers[0].channels.get_mut(&8).unwrap().lo = vec![-3, -2];
        check(&bad, &format!("channels.8: 2 lo for {in_ch} channels"));
        // files written before the zero points were per channel hold one integer
        let text = serde_json::to_string(&good).unwrap();
        assert!(text.contains("\"lo\":[-3]"));
        let old = text.replace("\"lo\":[-3]", "\"lo\":-3");
        let back = Calibration::parse(&old, Path::new("old.json"), &g).unwrap();
        assert_eq!(back, good);
        let mut each = good.clone();
        each.layers[0].channels.insert(
            4,
            ChannelSteps {
                lo: (0..in_ch as i32).map(|c| -(c % 16)).collect(),
                steps: vec![0.01; in_ch],
            },
        );
        let back = Calibration::parse(
            &serde_json::to_string(&each).unwrap(),
            Path::new("ok.json"),
            &g,
        )
        .unwrap();
        assert_eq!(back.layers[0].channels[&4].lo(5), -5);
        let mut bad = good.clone();
        let n = bad.layers[0].in_ch;
        bad.layers[0].query_weight_clip.insert(6, vec![1.2; n]);
        check(&bad, "query_weight_clip.6: ratio 1.2");
        // learned weight clips: one ratio in (0, 1] per output channel
        let out_ch = match &g.nodes[body_convs(&g)[0]].op {
            Op::Conv(conv) => conv.out_ch,
            _ => unreachable!(),
        };
        // (a new clip makes the layer's 4-bit codes stale, which is checked elsewhere)
        good.layers[0].weight_codes.retain(|c| c.w != 4);
        good.layers[0].weight_clip.insert(4, vec![0.8; out_ch]);
        Calibration::parse(
            &serde_json::to_string(&good).unwrap(),
            Path::new("ok.json"),
            &g,
        )
        .unwrap();
        for (ratio, count, bits, want) in [
            (0.0, 0, 4, "ratio 0 of channel 5"),
            (1.5, 0, 4, "ratio 1.5"),
            (-0.2, 0, 4, "ratio -0.2"),
            (0.8, 1, 4, "ratios for"),
            (0.8, 0, 9, "weight_clip.9: 9 bits"),
        ] {
            let mut bad = good.clone();
            let mut clip = bad.layers[0].weight_clip.remove(&4).unwrap();
            clip[5] = ratio;
            clip.truncate(clip.len() - count);
            bad.layers[0].weight_clip.insert(bits, clip);
            check(&bad, want);
        }
        // unrelated JSON
        let e = Calibration::parse("{\"rows\": []}", Path::new("bad.json"), &g).unwrap_err();
        assert!(e.to_string().contains("not a calibration file"), "{e}");
    }

    #[test]
    fn floors_raise_a_layers_bits_in_the_spec_the_planner_and_the_accounting() {
        let (g, text) = span();
        let mut c = Calibration::parse(&text, Path::new("x.json"), &g).unwrap();
        c.layers.iter_mut().for_each(|l| l.floor = None);
        c.layers[1].floor = Some([8, 6]);
        assert_eq!(c.spec(4, 4)[1], [8, 6]);
        assert_eq!(c.spec(4, 4)[0], [4, 4]);
        assert_eq!(c.spec(8, 8)[1], [8, 8]);
        let body = body_convs(&g);
        let mode = crate::quant::Mode::Uniform { w: 4, a: 4 };
        let int = crate::quant::int_layers(&g, mode, &c, Bounds::Searched);
        for (i, j) in body.iter().enumerate() {
            let want = if i == 1 { (8, 6) } else { (4, 4) };
            assert_eq!((int[j].w_bits, int[j].act.bits), want, "layer {i}");
        }
        // the accounting counts the raised layer at its own bits: its MACs times 8 x 6
        // instead of 4 x 4, from the layer's shape alone
        let (w, h) = (64, 48);
        let plain = crate::quant::accounting::cost_with(&g, mode, &[], w, h).unwrap();
        let raised = crate::quant::accounting::cost_with(&g, mode, &c.spec(0, 0), w, h).unwrap();
        let Op::Conv(conv) = &g.nodes[body[1]].op else {
            unreachable!()
        };
        let scale = g.values[g.nodes[body[1]].inputs[0]].scale as f64;
        let macs =
            (conv.in_ch * conv.out_ch * conv.k * conv.k) as f64 * (w * h) as f64 * scale * scale;
        let want = macs * (8.0 * 6.0 - 4.0 * 4.0) / 1e9;
        assert!(
            (raised.bitops_body_g - plain.bitops_body_g - want).abs() < 1e-9,
            "{} - {} != {want}",
            raised.bitops_body_g,
            plain.bitops_body_g
        );
        assert!(raised.fqr > plain.fqr);
        // a float floor takes the layer out of the integer ones in every mode, and the
        // accounting counts its MACs at 32 x 32
        c.layers[1].floor = Some([FLOAT; 2]);
        for mode in [mode, crate::quant::Mode::Uniform { w: 8, a: 8 }] {
            let int = crate::quant::int_layers(&g, mode, &c, Bounds::Searched);
            assert!(!int.contains_key(&body[1]), "{mode}: float layer quantized");
            assert_eq!(int.len(), body.len() - 1, "{mode}");
        }
        let float = crate::quant::accounting::cost_with(&g, mode, &c.spec(0, 0), w, h).unwrap();
        let want = macs * (32.0 * 32.0 - 4.0 * 4.0) / 1e9;
        assert!((float.bitops_body_g - plain.bitops_body_g - want).abs() < 1e-9);
        // a floor outside the kernels' bit-widths, or float for one part only, is a named
        // error
        c.layers[2].floor = Some([FLOAT, 8]);
        let e = Calibration::parse(&serde_json::to_string(&c).unwrap(), Path::new("f.json"), &g)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&c.layers[2].name) && e.contains("floor"), "{e}");
        c.layers[2].floor = None;
        c.layers[3].floor = Some([1, 9]);
        let e = Calibration::parse(&serde_json::to_string(&c).unwrap(), Path::new("f.json"), &g)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("f.json") && e.contains(&c.layers[3].name) && e.contains("floor"),
            "{e}"
        );
    }
}
