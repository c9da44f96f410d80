//! ClustBlock (Table 1 of the paper): conv 3x3 stride 3 (3->64), conv 3x3 (64->64), conv 3x3
//! (64->32), global average pooling, FC 32->C; the convolutions run in int8 on the GPU, one
//! dispatch per layer over a whole group of patches.
//!
//! The paper pre-trains the extractor on DTD, a texture dataset we can neither ship nor fetch,
//! so its weights are a fixed construction instead, and only the FC is fitted (by
//! `refqsr calibrate`, on shipped photos):
//! - the stride-3 conv is a 3x3 DCT-II of each 3x3 block in an opponent colour space (luma
//!   (R+G+B)/3, red-green (R-G)/2, yellow-blue (R+G-2B)/4): 27 responses, each kept as a
//!   pair (+r, -r) so that ReLU keeps both signs (54 channels, 10 zero);
//! - the second conv is a per-channel 3x3 box filter (local energy);
//! - the third sums each pair back into |r| (32 channels, 5 zero);
//! - pooling gives the mean magnitude of every DCT coefficient: a texture spectrum with
//!   colour contrast. The host takes its square root (power normalisation, so that brightness
//!   does not drown texture), normalises it, and the FC maps it to C logits: its rows are the
//!   k-means centroids of calibration patches' descriptors, centred and scaled by
//!   [`TEMPERATURE`], so Eqs. 2-3 see one class per texture found in the calibration images.
//!
//! The stride-3 conv is computed as a 1x1 conv on a space-to-depth input (the host lays each
//! 3x3 block out as 27 channels while it extracts the patch), which is the same sum. The
//! paper's convs 2 and 3 are unpadded: ours pad (the only convs the engine has), and pooling
//! skips the two-pixel border whose values padding changed, which gives the unpadded result.
//! Pooling and the FC (32 x C multiply-adds per patch) run on the host in f32.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::exec::GpuModel;
use crate::gpu::Context;
use crate::kernels::int_conv::PackedIntConv;
use crate::model::{Activation, Conv, Epilogue, Graph, Node, Op, Value};
use crate::profile::{Profiler, Stage};
use crate::quant::Quantizer;

/// Channels of the descriptor (the third conv's output).
pub const FEATURES: usize = 32;
/// Scale of the logits: cosine differences of a few hundredths become clear preferences.
pub const TEMPERATURE: f32 = 20.0;
/// Patches per ClustBlock dispatch.
pub const GROUP: usize = 64;

/// What calibration fits: the activation ranges of convs 2 and 3 (min/max, as the paper) and
/// the FC's prototypes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClustParams {
    /// Largest input of convs 2 and 3 (ReLU outputs, so the smallest is 0).
    pub ranges: [f32; 2],
    /// Unit-length centroids of the descriptors, one per class.
    pub prototypes: Vec<Vec<f32>>,
}

/// The float ClustBlock on a space-to-depth input (27 channels).
pub fn graph() -> Graph {
    let t = [
        [1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0],
        [0.5, -0.5, 0.0],
        [0.25, 0.25, -0.5],
    ];
    let dct = |u: usize, i: usize| {
        let c = if u == 0 {
            (1.0f32 / 3.0).sqrt()
        } else {
            (2.0f32 / 3.0).sqrt()
        };
        c * (std::f32::consts::PI * (2 * i + 1) as f32 * u as f32 / 6.0).cos()
    };
    let mut w1 = vec![0f32; 64 * 27];
    for (s, ts) in t.iter().enumerate() {
        for u in 0..3 {
            for v in 0..3 {
                let k = s * 9 + u * 3 + v;
                for c in 0..3 {
                    for dy in 0..3 {
                        for dx in 0..3 {
                            let w = ts[c] * dct(u, dy) * dct(v, dx);
                            w1[(2 * k) * 27 + c * 9 + dy * 3 + dx] = w;
                            w1[(2 * k + 1) * 27 + c * 9 + dy * 3 + dx] = -w;
                        }
                    }
                }
            }
        }
    }
    let mut w2 = vec![0f32; 64 * 64 * 9];
    for o in 0..64 {
        for tap in 0..9 {
            w2[(o * 64 + o) * 9 + tap] = 1.0 / 9.0;
        }
    }
    let mut w3 = vec![0f32; 32 * 64 * 9];
    for k in 0..27 {
        w3[(k * 64 + 2 * k) * 9 + 4] = 1.0;
        w3[(k * 64 + 2 * k + 1) * 9 + 4] = 1.0;
    }
    let conv = |in_ch, out_ch, k, weights| Conv {
        in_ch,
        out_ch,
        k,
        weights,
        bias: vec![0.0; out_ch],
        act: Activation::Relu,
        epilogue: Epilogue::None,
    };
    let value = |name: &str, channels| Value {
        name: name.into(),
        channels,
        scale: 1,
    };
    let node = |name: &str, c: Conv, i: usize| Node {
        name: name.into(),
        op: Op::Conv(c),
        inputs: vec![i],
        output: i + 1,
    };
    Graph {
        name: "clustblock".into(),
        values: vec![
            value("blocks", 27),
            value("dct", 64),
            value("energy", 64),
            value("magnitude", FEATURES),
        ],
        nodes: vec![
            node("clust_conv1", conv(27, 64, 1, w1), 0),
            node("clust_conv2", conv(64, 64, 3, w2), 1),
            node("clust_conv3", conv(64, FEATURES, 3, w3), 2),
        ],
        input: 0,
        output: 3,
    }
}

/// Pooled size of a `h` x `w` window: one position per 3x3 block.
pub fn blocks(h: usize, w: usize) -> (usize, usize) {
    (h.div_ceil(3), w.div_ceil(3))
}

/// One RGB window (C4HW, one channel group) laid out as 3x3 blocks of 27 channels (C4HW,
/// seven groups); blocks past the edge are zero (the stride-3 conv's view of them).
pub fn space_to_depth(src: &[f32], h: usize, w: usize, dst: &mut [f32]) {
    let (bh, bw) = blocks(h, w);
    let plane = bh * bw;
    assert_eq!(src.len(), h * w * 4);
    assert_eq!(dst.len(), 7 * plane * 4);
    dst.fill(0.0);
    for y in 0..h {
        for x in 0..w {
            let p = (y / 3) * bw + x / 3;
            for c in 0..3 {
                let ch = c * 9 + (y % 3) * 3 + x % 3;
                dst[((ch / 4) * plane + p) * 4 + ch % 4] = src[(y * w + x) * 4 + c];
            }
        }
    }
}

/// [`space_to_depth`] of every window in `windows` (RGB C4HW items of `h` x `w`): the
/// ClustBlock input of the group.
pub fn blocks_input(windows: &[f32], h: usize, w: usize) -> Vec<f32> {
    let (bh, bw) = blocks(h, w);
    let per = 7 * bh * bw * 4;
    let items = windows.len() / (h * w * 4);
    let mut out = vec![0f32; items * per];
    for (src, dst) in windows.chunks(h * w * 4).zip(out.chunks_mut(per)) {
        space_to_depth(src, h, w, dst);
    }
    out
}

/// Mean of each channel over the positions at least two from the border (all positions when
/// there are none): global average pooling of the unpadded convs. `x` is one C4HW item.
pub fn pool(x: &[f32], bh: usize, bw: usize) -> Vec<f32> {
    let plane = bh * bw;
    let (ys, xs) = (inner(bh), inner(bw));
    let count = (ys.len() * xs.len()) as f32;
    (0..FEATURES)
        .map(|c| {
            let mut s = 0f32;
            for y in ys.clone() {
                for xx in xs.clone() {
                    s += x[((c / 4) * plane + y * bw + xx) * 4 + c % 4];
                }
            }
            s / count
        })
        .collect()
}

fn inner(n: usize) -> std::ops::Range<usize> {
    if n > 4 {
        2..n - 2
    } else {
        0..n
    }
}

/// The host side of the descriptor: square root, unit length (zero stays zero).
pub fn normalise(d: &[f32]) -> Vec<f32> {
    let r: Vec<f32> = d.iter().map(|&x| x.max(0.0).sqrt()).collect();
    let n = r.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        r.iter().map(|x| x / n).collect()
    } else {
        r
    }
}

/// The FC: logits of a normalised descriptor against the centred prototypes.
pub fn logits(f: &[f32], prototypes: &[Vec<f32>]) -> Vec<f32> {
    let k = prototypes.len() as f32;
    let mean: Vec<f32> = (0..f.len())
        .map(|i| prototypes.iter().map(|p| p[i]).sum::<f32>() / k)
        .collect();
    prototypes
        .iter()
        .map(|p| {
            TEMPERATURE
                * p.iter()
                    .zip(&mean)
                    .zip(f)
                    .map(|((a, m), x)| (a - m) * x)
                    .sum::<f32>()
        })
        .collect()
}

/// Spherical k-means with a farthest-point start (deterministic): `k` unit centroids.
pub fn kmeans(xs: &[Vec<f32>], k: usize, iterations: usize) -> Vec<Vec<f32>> {
    assert!(!xs.is_empty());
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let mut centres = vec![xs[0].clone()];
    while centres.len() < k.min(xs.len()) {
        let far = xs
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let best = centres.iter().map(|c| dot(x, c)).fold(f32::MIN, f32::max);
                (i, best)
            })
            .fold((0, f32::MAX), |a, b| if b.1 < a.1 { b } else { a });
        centres.push(xs[far.0].clone());
    }
    for _ in 0..iterations {
        let mut sums = vec![vec![0f32; xs[0].len()]; centres.len()];
        for x in xs {
            let best = (0..centres.len())
                .max_by(|&a, &b| dot(x, &centres[a]).total_cmp(&dot(x, &centres[b])))
                .expect("centres");
            sums[best].iter_mut().zip(x).for_each(|(s, v)| *s += v);
        }
        for (c, s) in centres.iter_mut().zip(sums) {
            let n = s.iter().map(|v| v * v).sum::<f32>().sqrt();
            if n > 0.0 {
                *c = s.iter().map(|v| v / n).collect();
            }
        }
    }
    centres
}

/// Multiply-accumulates of ClustBlock on `n` windows of `h` x `w` with `classes` classes (all
/// at 8 x 8 bits: BitOPs = 64 x this).
pub fn macs(n: usize, h: usize, w: usize, classes: usize) -> f64 {
    let (bh, bw) = blocks(h, w);
    let p = (bh * bw) as f64;
    n as f64 * (p * (27.0 * 64.0 + 64.0 * 64.0 * 9.0 + 64.0 * 32.0 * 9.0) + 32.0 * classes as f64)
}

/// ClustBlock on the GPU.
pub struct ClustBlock {
    model: GpuModel,
    pub params: ClustParams,
}

impl ClustBlock {
    /// The int8 extractor with the calibrated ranges.
    pub fn new(ctx: Arc<Context>, params: ClustParams) -> Result<Self> {
        let g = graph();
        let ranges = [1.0, params.ranges[0], params.ranges[1]];
        let layers: BTreeMap<usize, PackedIntConv> = g
            .nodes
            .iter()
            .enumerate()
            .map(|(j, n)| {
                let Op::Conv(c) = &n.op else {
                    unreachable!("ClustBlock is convolutions")
                };
                let act = Quantizer::new(0.0, ranges[j].max(f32::MIN_POSITIVE), 8);
                (j, PackedIntConv::new(c, 8, act))
            })
            .collect();
        Ok(ClustBlock {
            model: GpuModel::quantized(ctx, g, layers)?,
            params,
        })
    }

    /// Pooled descriptors (`n` x [`FEATURES`]) of `n` RGB windows of `h` x `w` (C4HW, one
    /// channel group each), [`GROUP`] windows per dispatch.
    pub fn descriptors(
        &self,
        windows: &[f32],
        n: usize,
        h: usize,
        w: usize,
        prof: Option<&Profiler>,
    ) -> Result<Vec<f32>> {
        let (bh, bw) = blocks(h, w);
        let per = h * w * 4;
        let mut out = Vec::with_capacity(n * FEATURES);
        for start in (0..n).step_by(GROUP) {
            let m = GROUP.min(n - start);
            let plan = self.model.plan(m, bh, bw)?;
            let input = blocks_input(&windows[start * per..(start + m) * per], h, w);
            let y = plan.run_maybe_profiled(&input, prof, Stage::ClustBlock)?;
            for item in y.chunks(y.len() / m) {
                out.extend(pool(item, bh, bw));
            }
        }
        Ok(out)
    }

    /// ClustBlock's output `V` (`n` x classes) for `n` windows.
    pub fn logits(
        &self,
        windows: &[f32],
        n: usize,
        h: usize,
        w: usize,
        prof: Option<&Profiler>,
    ) -> Result<Vec<f32>> {
        let d = self.descriptors(windows, n, h, w, prof)?;
        Ok(d.chunks(FEATURES)
            .flat_map(|x| logits(&normalise(x), &self.params.prototypes))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_to_depth_puts_each_block_in_one_position() {
        let (h, w) = (4, 5);
        let src: Vec<f32> = (0..h * w * 4).map(|i| i as f32).collect();
        let (bh, bw) = blocks(h, w);
        let mut dst = vec![f32::NAN; 7 * bh * bw * 4];
        space_to_depth(&src, h, w, &mut dst);
        let plane = bh * bw;
        // pixel (y 3, x 4), green: block (1, 1), channel 9 + 0 * 3 + 1
        let ch = 9 + 1;
        assert_eq!(
            dst[((ch / 4) * plane + bw + 1) * 4 + ch % 4],
            src[(3 * w + 4) * 4 + 1]
        );
        assert!(dst.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn the_dct_pairs_are_complete_and_balanced() {
        let g = graph();
        let Op::Conv(c) = &g.nodes[0].op else {
            panic!()
        };
        // a flat grey block has only the luma DC response
        let grey = vec![0.5f32; 27];
        let r: Vec<f32> = c
            .weights
            .chunks(27)
            .map(|w| w.iter().zip(&grey).map(|(a, b)| a * b).sum())
            .collect();
        assert!(
            (r[0] - 1.5 * 3f32.sqrt() / 3.0 * 3.0f32.sqrt()).abs() < 1e-5,
            "{}",
            r[0]
        );
        assert!((r[1] + r[0]).abs() < 1e-6);
        assert!(r[2..].iter().all(|x| x.abs() < 1e-5));
    }

    #[test]
    fn kmeans_finds_separated_clusters() {
        let mut xs = Vec::new();
        for i in 0..30 {
            let e = (i % 3) as usize;
            let mut v = [0.05f32; 4];
            v[e] = 1.0;
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            xs.push(v.iter().map(|x| x / n).collect::<Vec<_>>());
        }
        let c = kmeans(&xs, 3, 5);
        for e in 0..3 {
            assert!(c.iter().any(|p| p[e] > 0.99), "{c:?}");
        }
    }
}
