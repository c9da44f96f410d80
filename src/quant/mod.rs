//! Quantization foundations (issue 3): Eq. 1 of the RefQSR paper, bit packing, the precision
//! modes, and the BitOPs/FQR accounting that `eval` reports.
//!
//! Eq. 1: `Q_b(X) = round(clip(X, alpha, beta) / s(b)) * s(b)`, `s(b) = (beta - alpha) /
//! (2^b - 1)`. Its grid is the multiples of `s`, so zero (the convolutions' padding) is exact,
//! and the codes `round(clip(X) / s)` span exactly `2^b` consecutive integers `[lo, lo + 2^b)`.
//! Stored codes are offset to `[0, 2^b)`; the offset (a zero point) folds into one correction
//! term per output channel.

pub mod accounting;
pub mod calib;
mod cpu_conv;
pub mod gptq;
pub mod mode;
pub mod pack;
pub mod recon;
pub mod refer;
pub mod rounding;

use std::collections::BTreeMap;

pub use accounting::{cost, Cost};
pub use calib::{body_convs, Bounds, Calibration};
pub use mode::Mode;

use crate::kernels::int_conv::PackedIntConv;
use crate::model::{Conv, Graph, Op};

/// The graph the integer modes (and their calibration) run: `graph` with each pointwise
/// convolution over a concatenation split per input, so every concatenated tensor gets its
/// own quantizer (see [`crate::model::fuse::split_concat_convs`]).
pub fn prepare(graph: Graph) -> Graph {
    crate::model::fuse::split_concat_convs(graph)
}

/// The integer form of every body convolution of `graph` in `mode`, keyed by node index
/// (empty for fp32): weights per output channel, inputs with the calibrated bounds, at the
/// bits of the mode raised to each layer's floor ([`Calibration::spec`]); a layer whose floor is
/// [`calib::FLOAT`] is not among them and runs in f32.
pub fn int_layers(
    graph: &Graph,
    mode: Mode,
    calib: &Calibration,
    how: Bounds,
) -> BTreeMap<usize, PackedIntConv> {
    let Mode::Uniform { w, a } = mode else {
        return BTreeMap::new();
    };
    let spec = calib.spec(w, a);
    body_convs(graph)
        .into_iter()
        .enumerate()
        .filter(|&(i, _)| spec[i] != [calib::FLOAT; 2])
        .map(|(i, j)| {
            let Op::Conv(c) = &graph.nodes[j].op else {
                unreachable!("body_convs lists convolutions")
            };
            let [w, a] = spec[i];
            let act = calib.quantizer(i, a, how);
            let clip = calib.weight_clip(i, w, how);
            let l = &calib.layers[i];
            (
                j,
                int_layer(c, w, act, &l.mean, how, clip, calib.codes(i, how)),
            )
        })
        .collect()
}

/// `c` in integers: `act`'s steps folded into the weights, which are then quantized per output
/// channel at `w_bits` ([`fold_layer`]).
pub fn int_layer(
    c: &Conv,
    w_bits: u32,
    act: ActQuant,
    mean: &[f32],
    how: Bounds,
    clip: Option<&[f32]>,
    codes: &[calib::WeightCodes],
) -> PackedIntConv {
    let (folded, wq) = fold_layer(c, w_bits, &act, mean, how, clip, codes);
    PackedIntConv::with_quantizers(&folded, &wq, act)
}

/// `c` with `act`'s steps folded into its weights ([`ActQuant::fold`]), and the
/// per-output-channel quantizers of those weights at `w_bits`: each channel's bound `clip[o]`
/// times its largest magnitude where a learned clip is given, else searched, or min/max with
/// [`Bounds::MinMax`]. Unrounded: the codes are [`fold_layer`]'s.
pub fn fold_weights(
    c: &Conv,
    w_bits: u32,
    act: &ActQuant,
    how: Bounds,
    clip: Option<&[f32]>,
) -> (Conv, Vec<Quantizer>) {
    let folded = act.fold_conv(c);
    let wq = match (how, clip) {
        (Bounds::MinMax, _) => weight_quantizers(&folded.weights, c.out_ch, w_bits),
        (_, Some(clip)) => (weight_quantizers(&folded.weights, c.out_ch, w_bits).iter())
            .zip(clip)
            .map(|(q, r)| Quantizer::new(q.alpha * r, q.beta * r, w_bits))
            .collect(),
        _ => calib::searched_weight_quantizers(&folded.weights, c.out_ch, w_bits),
    };
    (folded, wq)
}

/// [`fold_weights`], with the folded weights quantized: to the stored `codes` whose
/// fingerprint matches, else to nearest; and the bias corrected for the shift the quantized
/// weights cause on inputs of channel means `mean`. The weights returned are the quantized
/// values themselves, so that quantizing them again (packing) gives the same codes.
pub fn fold_layer(
    c: &Conv,
    w_bits: u32,
    act: &ActQuant,
    mean: &[f32],
    how: Bounds,
    clip: Option<&[f32]>,
    codes: &[calib::WeightCodes],
) -> (Conv, Vec<Quantizer>) {
    let (folded, wq) = fold_weights(c, w_bits, act, how, clip);
    let per = c.in_ch * c.k * c.k;
    // hashing the weights only where there are codes to match
    let stored = (!codes.is_empty())
        .then(|| fingerprint(&folded.weights, &wq))
        .and_then(|print| codes.iter().find(|s| s.fingerprint == print));
    let quantized: Vec<f32> = match stored {
        Some(s) => (s.codes.iter().enumerate())
            .map(|(i, &q)| q as f32 * wq[i / per].step())
            .collect(),
        None => (folded.weights.iter().enumerate())
            .map(|(i, &w)| wq[i / per].quantize(w))
            .collect(),
    };
    // a folded weight multiplies the input divided by its channel's step
    let mean: Vec<f32> = (mean.iter().enumerate())
        .map(|(ch, m)| m / act.channel(ch).step())
        .collect();
    let corrected = calib::correct_bias(&folded, &quantized, &mean);
    (
        Conv {
            weights: quantized,
            ..corrected
        },
        wq,
    )
}

/// The fingerprint of folded weights and their quantizers (64-bit FNV-1a over their bits):
/// what stored [`calib::WeightCodes`] were computed for.
pub fn fingerprint(folded: &[f32], wq: &[Quantizer]) -> String {
    let words =
        (folded.iter().copied()).chain(wq.iter().flat_map(|q| [q.alpha, q.beta, q.bits as f32]));
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in words.flat_map(|w| w.to_bits().to_le_bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The float weights an integer layer computes with: [`fold_layer`]'s quantized weights with
/// the activation steps taken back out, and its corrected bias.
pub fn effective_weights(
    c: &Conv,
    w_bits: u32,
    act: &ActQuant,
    mean: &[f32],
    how: Bounds,
    clip: Option<&[f32]>,
    codes: &[calib::WeightCodes],
) -> Conv {
    let (mut folded, wq) = fold_layer(c, w_bits, act, mean, how, clip, codes);
    let (taps, per) = (c.k * c.k, c.in_ch * c.k * c.k);
    for (i, w) in folded.weights.iter_mut().enumerate() {
        *w = wq[i / per].quantize(*w) / act.channel((i / taps) % c.in_ch).step();
    }
    folded
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantizer {
    pub alpha: f32,
    pub beta: f32,
    pub bits: u32,
}

impl Quantizer {
    /// A quantizer; `beta > alpha` and 2 <= `bits` <= 8.
    pub fn new(alpha: f32, beta: f32, bits: u32) -> Self {
        assert!((2..=8).contains(&bits), "bit-width {bits} outside 2..=8");
        assert!(
            beta > alpha && alpha.is_finite() && beta.is_finite(),
            "bad bounds [{alpha}, {beta}]"
        );
        Quantizer { alpha, beta, bits }
    }

    /// The step `s(b)`.
    pub fn step(&self) -> f32 {
        (self.beta - self.alpha) / ((1u32 << self.bits) - 1) as f32
    }

    /// `1 / s`: kernels multiply by it (a correctly rounded operation in WGSL, where division
    /// may be off by 2.5 ulp), so the CPU does the same to agree bit for bit.
    pub fn inv_step(&self) -> f32 {
        1.0 / self.step()
    }

    /// The smallest code, `round(alpha / s)`; codes are `lo..lo + 2^b`.
    pub fn lo(&self) -> i32 {
        (self.alpha * self.inv_step()).round_ties_even() as i32
    }

    /// `round(clip(x, alpha, beta) / s)` (ties to even, as WGSL's `round`), kept inside the
    /// `2^b` codes from [`Quantizer::lo`].
    pub fn code(&self, x: f32) -> i32 {
        let q = (x.clamp(self.alpha, self.beta) * self.inv_step()).round_ties_even() as i32;
        q.clamp(self.lo(), self.lo() + (1 << self.bits) - 1)
    }

    /// The signed value the integer kernels carry, `code - zero_point()`, in
    /// `-2^(b-1)..2^(b-1)`: a byte, or for at most 4 bits a nibble.
    pub fn byte(&self, x: f32) -> i8 {
        (self.code(x) - self.zero_point()) as i8
    }

    /// `lo + 2^(b-1)`: the code of byte 0, centring the carried values on 0. A real 0
    /// (padding) is byte `-zero_point()`.
    pub fn zero_point(&self) -> i32 {
        self.lo() + (1 << (self.bits - 1))
    }

    /// The stored (unsigned) form of `code(x)`: `code - lo`, in `0..2^b`.
    pub fn stored(&self, x: f32) -> u8 {
        (self.code(x) - self.lo()) as u8
    }

    /// `Q_b(x)`: the value the code stands for.
    pub fn quantize(&self, x: f32) -> f32 {
        self.code(x) as f32 * self.step()
    }
}

/// The most input channels whose activation steps travel to the kernels one per channel (the
/// uniform arrays of `shaders/shared/common.wgsl`'s `Eq1`); wider layers take one step.
pub const MAX_ACT_CHANNELS: usize = 256;

/// The input quantizer of an integer layer: Eq. 1 per input channel, each channel `c` with its
/// own step `s_c` and code range `lo_c..lo_c + 2^b` (so its own bounds
/// `[lo_c s_c, (lo_c + 2^b - 1) s_c]` and its own zero point). A per-tensor quantizer is the
/// case of one channel.
///
/// The steps fold into the consumer's weights ([`ActQuant::fold`]) before they are quantized
/// per output channel, so outlier channels no longer set the step of every other one (a
/// channel reaching 137 next to channels below 1 on SPAN). The zero points fold into one
/// correction per output channel, as long as a real zero (the convolutions' padding) reads as
/// its own channel's code: the kernels take one padding word per input word
/// ([`crate::kernels::int_conv`]). A channel of one sign then spends no codes on the other:
/// with one code range shared by all channels, the calibration photos' 4-bit input error was
/// 1.5 to 3 times that of per-channel ranges on half of SPAN x4's layers. The calibration
/// gives each channel its own range at [`calib::OWN_ZERO_BITS`] bits or fewer only (see
/// there why).
#[derive(Debug, Clone, PartialEq)]
pub struct ActQuant {
    pub bits: u32,
    /// One quantizer per input channel, or one for all.
    channels: Vec<Quantizer>,
}

impl From<Quantizer> for ActQuant {
    fn from(q: Quantizer) -> Self {
        ActQuant {
            bits: q.bits,
            channels: vec![q],
        }
    }
}

impl ActQuant {
    /// Per-channel steps over the codes `lo[c]..lo[c] + 2^bits` (one `lo` for all channels, or
    /// one each; `lo <= 0 < lo + 2^bits`, so that 0 is a code; steps finite and positive; at
    /// most [`MAX_ACT_CHANNELS`]).
    pub fn per_channel(bits: u32, lo: &[i32], steps: &[f32]) -> Self {
        assert!(!steps.is_empty() && steps.len() <= MAX_ACT_CHANNELS);
        assert!(lo.len() == 1 || lo.len() == steps.len(), "{} lo", lo.len());
        let channels: Vec<Quantizer> = steps
            .iter()
            .enumerate()
            .map(|(c, &s)| {
                let lo = lo[if lo.len() == 1 { 0 } else { c }];
                let top = lo + (1 << bits) - 1;
                assert!(lo <= 0 && top >= 0, "codes {lo}..={top} miss 0");
                assert!(s.is_finite() && s > 0.0, "activation step {s}");
                let q = Quantizer::new(lo as f32 * s, top as f32 * s, bits);
                assert_eq!(q.lo(), lo, "codes drifted from {lo}");
                q
            })
            .collect();
        ActQuant { bits, channels }
    }

    /// Whether each channel has its own step.
    pub fn is_per_channel(&self) -> bool {
        self.channels.len() > 1
    }

    /// The quantizer of input channel `c`.
    pub fn channel(&self, c: usize) -> &Quantizer {
        &self.channels[if self.channels.len() == 1 { 0 } else { c }]
    }

    /// The quantizers as stored: one, or one per channel.
    pub fn channels(&self) -> &[Quantizer] {
        &self.channels
    }

    /// Each stored channel's smallest code (one, or one per channel).
    pub fn lo(&self) -> Vec<i32> {
        self.channels.iter().map(Quantizer::lo).collect()
    }

    /// The code of byte 0 in channel `c` (see [`Quantizer::zero_point`]).
    pub fn zero_point(&self, c: usize) -> i32 {
        self.channel(c).zero_point()
    }

    /// The byte of a real zero (the convolutions' padding) in channel `c`; past the channels,
    /// the last channel's (the kernels' lanes past the real channels carry it).
    pub fn pad_byte(&self, c: usize) -> i8 {
        (-self.channels[c.min(self.channels.len() - 1)].zero_point()) as i8
    }

    /// The byte the kernels carry for `x` in channel `c`.
    pub fn byte(&self, c: usize, x: f32) -> i8 {
        self.channel(c).byte(x)
    }

    /// `Q_b(x)` in channel `c`.
    pub fn quantize(&self, c: usize, x: f32) -> f32 {
        self.channel(c).quantize(x)
    }

    /// Conv weights `[o][c][tap]` times their input channel's step: the weights the integer
    /// sums multiply the bytes with, so that one step per output channel dequantizes them.
    pub fn fold(&self, weights: &[f32], in_ch: usize, taps: usize) -> Vec<f32> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| w * self.channel((i / taps) % in_ch).step())
            .collect()
    }

    /// `c` with its weights folded ([`ActQuant::fold`]).
    pub fn fold_conv(&self, c: &Conv) -> Conv {
        Conv {
            weights: self.fold(&c.weights, c.in_ch, c.k * c.k),
            ..c.clone()
        }
    }
}

/// Per-output-channel weight quantizers: symmetric bounds `[-max|w|, max|w|]` per channel.
pub fn weight_quantizers(weights: &[f32], out_ch: usize, bits: u32) -> Vec<Quantizer> {
    let per = weights.len() / out_ch;
    weights
        .chunks(per)
        .map(|w| {
            let m = w
                .iter()
                .fold(0f32, |m, v| m.max(v.abs()))
                .max(f32::MIN_POSITIVE);
            Quantizer::new(-m, m, bits)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eq1_codes_span_2_to_the_b_and_zero_is_exact() {
        for bits in 2..=8 {
            for (a, b) in [
                (-1.0f32, 1.0f32),
                (-0.3, 2.7),
                (0.0, 5.0),
                (-4.0, -0.5),
                (0.1, 0.2),
            ] {
                let q = Quantizer::new(a, b, bits);
                let n = 1i32 << bits;
                let inside = (0..=4000).map(|i| a + (b - a) * i as f32 / 4000.0);
                let codes: std::collections::BTreeSet<i32> = inside
                    .chain([a - 1.0, b + 1.0])
                    .map(|x| q.code(x))
                    .collect();
                assert_eq!(*codes.iter().next().unwrap(), q.lo());
                assert!(
                    codes.len() as i32 <= n && *codes.iter().last().unwrap() < q.lo() + n,
                    "{bits} bits [{a}, {b}]"
                );
                assert!(
                    codes.len() as i32 >= n - 1,
                    "{bits} bits [{a}, {b}]: only {} codes",
                    codes.len()
                );
                if a <= 0.0 && b >= 0.0 {
                    assert_eq!(q.quantize(0.0), 0.0);
                }
                // inside the bounds the error is at most half a step (plus float slack)
                for i in 0..=100 {
                    let x = a + (b - a) * i as f32 / 100.0;
                    assert!(
                        (q.quantize(x) - x).abs() <= q.step() * 0.5 + 1e-5 * (1.0 + x.abs()),
                        "{bits} bits [{a}, {b}] at {x}"
                    );
                }
                assert_eq!(q.stored(a - 10.0), (q.code(a - 10.0) - q.lo()) as u8);
            }
        }
    }

    #[test]
    fn per_channel_steps_and_code_ranges_keep_zero_exact() {
        let steps = [0.01f32, 0.3, 2.5, 1e-4, 7.0];
        for bits in 2..=8 {
            let n = 1 << bits;
            let each = [0, -1, -(n / 2), -(n - 1), -(n / 4)];
            let shared = [0, -1, -(n / 2), -(n - 1)].map(|lo| vec![lo]);
            for lo in shared.iter().chain([&each.to_vec()]) {
                let q = ActQuant::per_channel(bits, lo, &steps);
                assert!(q.is_per_channel());
                for (c, &s) in steps.iter().enumerate() {
                    let ch = q.channel(c);
                    let want = lo[if lo.len() == 1 { 0 } else { c }];
                    assert_eq!(ch.lo(), want);
                    assert_eq!(q.zero_point(c), want + n / 2);
                    assert!((ch.step() - s).abs() <= 1e-5 * s, "{bits} {lo:?} {c}");
                    assert_eq!(q.quantize(c, 0.0), 0.0);
                    assert_eq!(q.byte(c, 0.0), q.pad_byte(c));
                    assert_eq!(q.byte(c, 0.0) as i32, -q.zero_point(c));
                    // the codes span the whole range, clipped at both ends
                    assert_eq!(q.byte(c, -1e9) as i32, -(n / 2));
                    assert_eq!(q.byte(c, 1e9) as i32, n / 2 - 1);
                }
            }
        }
        // one quantizer for all channels
        let one = ActQuant::from(Quantizer::new(-1.0, 3.0, 8));
        assert!(!one.is_per_channel());
        assert_eq!(one.channel(40), one.channel(0));
        // folding multiplies each input channel's weights by its step
        let q = ActQuant::per_channel(8, &[-3], &[0.5, 2.0]);
        let w = [1.0f32, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0];
        let f = q.fold(&w, 2, 2);
        let s = [q.channel(0).step(), q.channel(1).step()];
        assert_eq!(f, vec![s[0], s[0], s[1], s[1], -s[0], -s[0], -s[1], -s[1]]);
    }

    #[test]
    fn weight_quantizers_are_per_channel_and_symmetric() {
        let w = [0.5, -0.25, 0.1, 0.0, 2.0, -3.0];
        let q = weight_quantizers(&w, 2, 8);
        assert_eq!(q.len(), 2);
        assert_eq!((q[0].alpha, q[0].beta), (-0.5, 0.5));
        assert_eq!((q[1].alpha, q[1].beta), (-3.0, 3.0));
    }
}
