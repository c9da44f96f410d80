//! CPU twin of `shaders/conv.wgsl`.

use super::{activate, mask_lanes, sigmoid, Tensor};
use crate::kernels::conv::{EpilogueParams, PackedConv, OCB};

use crate::kernels::conv::PX;

/// Convolution with the fused epilogue, looping as the shader does: one dispatch per block of
/// [`OCB`] output groups, one invocation per 4 pixels of a row, accumulating over input group,
/// tap row, tap column.
pub fn conv(input: &Tensor, p: &PackedConv, residual: Option<&Tensor>) -> Tensor {
    assert_eq!(
        input.groups(),
        p.icg,
        "input channels do not match the convolution"
    );
    let (n, h, w) = (input.n, input.h, input.w);
    let mut out = Tensor::poisoned(n, p.oc, h, w);
    let (k, icg) = (p.k, p.icg);
    let r = (k / 2) as isize;
    let taps = k * k;
    let plane = w * h;
    for block in 0..p.blocks() {
        let og = block * OCB;
        let weights = &p.mats[block * p.block_len()..(block + 1) * p.block_len()];
        for b in 0..n {
            for y in 0..h {
                for x0 in (0..w).step_by(PX) {
                    let mut acc = [[[0f32; 4]; PX]; OCB];
                    for ic in 0..icg {
                        let base = (b * icg + ic) * plane;
                        for ky in 0..k {
                            let iy = (y + ky) as isize - r;
                            let row_ok = iy >= 0 && iy < h as isize;
                            let row = base + iy.clamp(0, h as isize - 1) as usize * w;
                            let mut v = [[0f32; 4]; PX + 2];
                            for (i, vi) in v.iter_mut().enumerate().take(PX + k - 1) {
                                let ix = (x0 + i) as isize - r;
                                if row_ok && ix >= 0 && ix < w as isize {
                                    *vi = input.vec4(row + ix as usize);
                                }
                            }
                            for kx in 0..k {
                                for (j, a) in acc.iter_mut().enumerate() {
                                    let m = &weights[(ic * taps + ky * k + kx) * OCB + j];
                                    for (px, ap) in a.iter_mut().enumerate() {
                                        let s = mat_vec(m, &v[px + kx]);
                                        for l in 0..4 {
                                            ap[l] += s[l];
                                        }
                                    }
                                }
                            }
                        }
                    }
                    for (px, x) in (x0..(x0 + PX).min(w)).enumerate() {
                        for (j, a) in acc.iter().enumerate() {
                            let g = og + j;
                            if g >= p.ocg {
                                continue;
                            }
                            let i = ((b * p.ocg + g) * h + y) * w + x;
                            let res = residual.map(|t| t.vec4(i));
                            out.set_vec4(i, finish(&p.epilogue, p.oc, a[px], g, res));
                        }
                    }
                }
            }
        }
    }
    out
}

/// `m * v` for a column-major mat4x4 (column j multiplies lane j of `v`).
pub(crate) fn mat_vec(m: &[f32; 16], v: &[f32; 4]) -> [f32; 4] {
    std::array::from_fn(|i| m[i] * v[0] + m[4 + i] * v[1] + m[8 + i] * v[2] + m[12 + i] * v[3])
}

/// `finish` of the convolution shaders: bias, activation, gate or residual, lane mask.
pub(crate) fn finish(
    p: &EpilogueParams,
    oc: usize,
    acc: [f32; 4],
    g: usize,
    residual: Option<[f32; 4]>,
) -> [f32; 4] {
    let y = std::array::from_fn(|l| {
        let c = g * 4 + l;
        let x = acc[l] + p.bias.get(c).copied().unwrap_or(0.0);
        let slope = p.slopes.get(c).copied().unwrap_or(0.0);
        let mut y = activate(x, p.act, p.leaky, slope);
        match (p.epi, residual) {
            (1, Some(r)) => y = (x + r[l]) * (sigmoid(x) - 0.5),
            (2, Some(r)) => y += r[l],
            _ => {}
        }
        y
    });
    mask_lanes(y, g, oc)
}
