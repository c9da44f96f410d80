//! CPU twin of `shaders/conv.wgsl`.

use super::{activate, mask_lanes, sigmoid, Tensor};
use crate::kernels::conv::PackedConv;

const PX: usize = 4;

/// Convolution with the fused epilogue, looping as the shader does (one invocation = 4 pixels
/// of a row x 2 output groups).
pub fn conv(input: &Tensor, p: &PackedConv, residual: Option<&Tensor>) -> Tensor {
    assert_eq!(
        input.groups(),
        p.icg,
        "input channels do not match the convolution"
    );
    let (n, h, w) = (input.n, input.h, input.w);
    let mut out = Tensor::poisoned(n, p.oc, h, w);
    let (k, icg, ocg) = (p.k, p.icg, p.ocg);
    let r = (k / 2) as isize;
    let taps = k * k;
    let plane = w * h;
    for b in 0..n {
        for og in (0..ocg).step_by(2) {
            for y in 0..h {
                for x0 in (0..w).step_by(PX) {
                    let mut acc = [[[0f32; 4]; PX]; 2];
                    for ic in 0..icg {
                        let base = (b * icg + ic) * plane;
                        let w0 = (og * icg + ic) * taps;
                        let w1 = w0 + icg * taps;
                        for ky in 0..k {
                            let iy = (y + ky) as isize - r;
                            let row_ok = iy >= 0 && iy < h as isize;
                            let row = base + iy.clamp(0, h as isize - 1) as usize * w;
                            let mut v = [[0f32; 4]; 6];
                            for (i, vi) in v.iter_mut().enumerate().take(PX + k - 1) {
                                let ix = (x0 + i) as isize - r;
                                if row_ok && ix >= 0 && ix < w as isize {
                                    *vi = input.vec4(row + ix as usize);
                                }
                            }
                            for kx in 0..k {
                                let m = [&p.mats[w0 + ky * k + kx], &p.mats[w1 + ky * k + kx]];
                                for (a, m) in acc.iter_mut().zip(m) {
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
                    for px in 0..PX {
                        let x = x0 + px;
                        if x >= w {
                            break;
                        }
                        for (j, a) in acc.iter().enumerate() {
                            let g = og + j;
                            if g >= ocg {
                                continue;
                            }
                            let i = ((b * ocg + g) * h + y) * w + x;
                            let res = residual.map(|t| t.vec4(i));
                            out.set_vec4(i, finish(p, a[px], g, res));
                        }
                    }
                }
            }
        }
    }
    out
}

/// `m * v` for a column-major mat4x4 (column j multiplies lane j of `v`).
fn mat_vec(m: &[f32; 16], v: &[f32; 4]) -> [f32; 4] {
    std::array::from_fn(|i| m[i] * v[0] + m[4 + i] * v[1] + m[8 + i] * v[2] + m[12 + i] * v[3])
}

fn finish(p: &PackedConv, acc: [f32; 4], g: usize, residual: Option<[f32; 4]>) -> [f32; 4] {
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
    mask_lanes(y, g, p.oc)
}
