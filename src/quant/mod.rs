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
pub mod mode;
pub mod pack;

use std::collections::BTreeMap;

pub use accounting::{cost, Cost};
pub use calib::{body_convs, Bounds, Calibration};
pub use mode::Mode;

use crate::kernels::int_conv::PackedIntConv;
use crate::model::{Graph, Op};

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
            let wq = match how {
                Bounds::Searched => calib::searched_weight_quantizers(&c.weights, c.out_ch, w),
                Bounds::MinMax => weight_quantizers(&c.weights, c.out_ch, w),
            };
            let c = calib::correct_bias(c, &wq, &calib.layers[i].mean);
            (
                j,
                PackedIntConv::with_quantizers(&c, &wq, calib.quantizer(i, a, how)),
            )
        })
        .collect()
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
    fn weight_quantizers_are_per_channel_and_symmetric() {
        let w = [0.5, -0.25, 0.1, 0.0, 2.0, -3.0];
        let q = weight_quantizers(&w, 2, 8);
        assert_eq!(q.len(), 2);
        assert_eq!((q[0].alpha, q[0].beta), (-0.5, 0.5));
        assert_eq!((q[1].alpha, q[1].beta), (-3.0, 3.0));
    }
}
