//! CPU twin of `shaders/refer_prep.wgsl` (RefER's pooled descriptors, RefQSR Eq. 4).

use crate::kernels::refer_prep::{inv_step, pooled, qmax};
use crate::quant::pack::pack_i8x4;

/// Codes `[n][cell][g]` of `batch` windows of `channels` x `h` x `w` features (`src`, C4HW):
/// per 3 x 3 cell the mean of the L2-normalized pixel vectors, quantized symmetrically to
/// `bits` bits with clipping at `clip`. Same loops and operation order as the shader.
pub fn refer_prep(
    src: &[f32],
    batch: usize,
    channels: usize,
    h: usize,
    w: usize,
    bits: u32,
    clip: f32,
) -> Vec<u32> {
    let (ph, pw) = pooled(h as u32, w as u32);
    let (ph, pw) = (ph as usize, pw as usize);
    let (groups, plane) = (channels.div_ceil(4), h * w);
    let inv_step = inv_step(bits, clip);
    let qmax = qmax(bits) as f32;
    // `mask_lanes` of the shader
    let load = |n: usize, g: usize, p: usize| -> [f32; 4] {
        let at = ((n * groups + g) * plane + p) * 4;
        std::array::from_fn(|l| {
            if g * 4 + l < channels {
                src[at + l]
            } else {
                0.0
            }
        })
    };
    let mut out = Vec::with_capacity(batch * ph * pw * groups);
    for n in 0..batch {
        for cell in 0..ph * pw {
            let (x0, y0) = ((cell % pw) * 3, (cell / pw) * 3);
            let pixels: Vec<usize> = (y0..(y0 + 3).min(h))
                .flat_map(|y| (x0..(x0 + 3).min(w)).map(move |x| y * w + x))
                .collect();
            let inv: Vec<f32> = pixels
                .iter()
                .map(|&p| {
                    let s = (0..groups).fold(0.0f32, |s, g| {
                        let v = load(n, g, p);
                        s + (v[0] * v[0] + v[1] * v[1] + v[2] * v[2] + v[3] * v[3])
                    });
                    1.0 / s.sqrt().max(1e-12)
                })
                .collect();
            let mean = 1.0 / pixels.len() as f32;
            for g in 0..groups {
                let mut acc = [0.0f32; 4];
                for (&p, &r) in pixels.iter().zip(&inv) {
                    let v = load(n, g, p);
                    for l in 0..4 {
                        acc[l] += v[l] * r;
                    }
                }
                let codes: [i8; 4] = std::array::from_fn(|l| {
                    if g * 4 + l < channels {
                        (acc[l] * mean * inv_step)
                            .round_ties_even()
                            .clamp(-qmax, qmax) as i8
                    } else {
                        0
                    }
                });
                out.push(pack_i8x4(&codes)[0]);
            }
        }
    }
    out
}
