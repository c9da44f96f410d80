//! BitOPs and FQR, as the paper reports them (after [54] and CADyQ [14]).
//!
//! BitOPs = sum over convolutions of MACs x weight bits x activation bits; the first
//! convolution and the tail (convolutions from which the output is reached without another
//! convolution) stay in float and count at 32 x 32. FQR = mean activation bit-width over the
//! body's convolutions, weighted by the size of their input feature maps.

use std::collections::HashSet;

use super::Mode;
use crate::model::{Graph, Node, Op};

/// Multiply-accumulates of node `n` of `g` when the network's input is `width` x `height`
/// (its own input may be upsampled); `None` for a node that is not a convolution.
pub fn conv_macs(g: &Graph, n: &Node, width: f64, height: f64) -> Option<f64> {
    let Op::Conv(c) = &n.op else { return None };
    let s = g.values[n.inputs[0]].scale as f64;
    Some((c.in_ch * c.out_ch * c.k * c.k) as f64 * width * height * s * s)
}

/// Cost of running a graph on one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    /// Whole network, in 10^9 BitOPs.
    pub bitops_g: f64,
    /// The quantized body alone, in 10^9 BitOPs.
    pub bitops_body_g: f64,
    /// Feature quantization ratio: mean body activation bits.
    pub fqr: f64,
}

/// Indices of the convolution nodes that stay in float: those fed by the input and those
/// feeding the output without another convolution in between.
pub fn float_convs(g: &Graph) -> HashSet<usize> {
    let producer = |v: usize| g.nodes.iter().position(|n| n.output == v);
    let is_conv = |j: usize| matches!(g.nodes[j].op, Op::Conv(_));
    let mut out = HashSet::new();
    // backwards from the output
    let mut stack = vec![g.output];
    let mut seen = HashSet::new();
    while let Some(v) = stack.pop() {
        if !seen.insert(v) {
            continue;
        }
        if let Some(j) = producer(v) {
            if is_conv(j) {
                out.insert(j);
            } else {
                stack.extend(g.nodes[j].inputs.iter().copied());
            }
        }
    }
    // forwards from the input
    let mut reached = HashSet::from([g.input]);
    for (j, n) in g.nodes.iter().enumerate() {
        if n.inputs.iter().any(|v| reached.contains(v)) {
            if is_conv(j) {
                out.insert(j);
            } else {
                reached.insert(n.output);
            }
        }
    }
    out
}

/// BitOPs and FQR of `mode` on a `width` x `height` input; `None` for modes whose cost depends
/// on the image content (RefQSR: the share of reference patches).
pub fn cost(g: &Graph, mode: Mode, width: usize, height: usize) -> Option<Cost> {
    cost_with(g, mode, &[], width, height)
}

/// [`cost`] of the per-layer spec: body convolution `i` (in [`super::body_convs`] order)
/// runs at the mode's bits raised to `floors[i]` (none when `floors` is empty), so layers
/// kept at higher precision count as such.
pub fn cost_with(
    g: &Graph,
    mode: Mode,
    floors: &[[u32; 2]],
    width: usize,
    height: usize,
) -> Option<Cost> {
    let (wb, ab) = match mode {
        Mode::Fp32 => (32.0, 32.0),
        Mode::Uniform { w, a } => (w as f64, a as f64),
        Mode::RefQsr { .. } => return None,
    };
    let body_index: std::collections::HashMap<usize, usize> = super::body_convs(g)
        .into_iter()
        .enumerate()
        .map(|(i, j)| (j, i))
        .collect();
    let float = float_convs(g);
    let (mut all, mut body, mut fq_num, mut fq_den) = (0f64, 0f64, 0f64, 0f64);
    for (j, n) in g.nodes.iter().enumerate() {
        let Op::Conv(c) = &n.op else { continue };
        let s = g.values[n.inputs[0]].scale as f64;
        let pixels = width as f64 * height as f64 * s * s;
        let macs = (c.in_ch * c.out_ch * c.k * c.k) as f64 * pixels;
        if float.contains(&j) {
            all += macs * 32.0 * 32.0;
        } else {
            let (wb, ab) = match body_index.get(&j).and_then(|&i| floors.get(i)) {
                Some(&[fw, fa]) if mode != Mode::Fp32 => (wb.max(fw as f64), ab.max(fa as f64)),
                _ => (wb, ab),
            };
            all += macs * wb * ab;
            body += macs * wb * ab;
            let feature = c.in_ch as f64 * pixels;
            fq_num += feature * ab;
            fq_den += feature;
        }
    }
    Some(Cost {
        bitops_g: all / 1e9,
        bitops_body_g: body / 1e9,
        fqr: if fq_den > 0.0 { fq_num / fq_den } else { 32.0 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span() -> Graph {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/models");
        Graph::load_ncnn(&dir.join("spanx4_ch48.param"), &dir.join("spanx4_ch48.bin")).unwrap()
    }

    #[test]
    fn span_keeps_its_first_and_last_convolution_in_float() {
        let g = span();
        let names: Vec<&str> = float_convs(&g)
            .iter()
            .map(|&j| g.nodes[j].name.as_str())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(
            names.iter().any(|n| n.contains("conv_1"))
                && names.iter().any(|n| n.contains("upsampler")),
            "{names:?}"
        );
    }

    #[test]
    fn bitops_scale_with_the_bit_widths() {
        let g = span();
        let fp = cost(&g, Mode::Fp32, 64, 48).unwrap();
        let w8 = cost(&g, Mode::Uniform { w: 8, a: 8 }, 64, 48).unwrap();
        let w4 = cost(&g, Mode::Uniform { w: 4, a: 4 }, 64, 48).unwrap();
        // body: 18 body 3x3 convs (blocks) + conv_2 (3x3) + conv_cat (1x1 192->48)
        let body_macs = (19.0 * 48.0 * 48.0 * 9.0 + 192.0 * 48.0) * 64.0 * 48.0;
        assert!((fp.bitops_body_g - body_macs * 1024.0 / 1e9).abs() < 1e-6);
        assert!((w8.bitops_body_g * 16.0 - fp.bitops_body_g).abs() < 1e-6);
        assert!((w4.bitops_body_g * 4.0 - w8.bitops_body_g).abs() < 1e-6);
        assert!(w8.bitops_g > w8.bitops_body_g && fp.bitops_g > w8.bitops_g);
        assert_eq!((fp.fqr, w8.fqr, w4.fqr), (32.0, 8.0, 4.0));
        assert!(cost(&g, Mode::RefQsr { high: 8, low: 4 }, 64, 48).is_none());
    }
}
