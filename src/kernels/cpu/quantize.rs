//! CPU twin of `shaders/quantize.wgsl`.

use super::Tensor;
use crate::quant::pack::{nibbles_of, pack_i8x4};
use crate::quant::ActQuant;

/// Packed codes of `x` (C4HW): one word of four bytes per pixel and channel group, or with
/// `nibbles` one word of eight nibbles per pixel and pair of groups (C8HW); each channel with
/// its own step and zero point where `q` is per channel; lanes past the channels
/// carry the last channel's code of 0.
pub fn quantize(x: &Tensor, q: &ActQuant, nibbles: bool) -> Vec<u32> {
    let plane = x.h * x.w;
    let groups = x.groups();
    let word = |n: usize, g: usize, p: usize| -> u32 {
        let v = if g < groups {
            x.vec4((n * groups + g) * plane + p)
        } else {
            [0.0; 4]
        };
        let bytes: [i8; 4] = std::array::from_fn(|l| {
            if g * 4 + l < x.c {
                q.byte(g * 4 + l, v[l])
            } else {
                q.pad_byte(g * 4 + l)
            }
        });
        pack_i8x4(&bytes)[0]
    };
    let words = if nibbles { groups.div_ceil(2) } else { groups };
    let mut out = Vec::with_capacity(x.n * words * plane);
    for n in 0..x.n {
        for k in 0..words {
            for p in 0..plane {
                out.push(if nibbles {
                    nibbles_of(word(n, 2 * k, p), word(n, 2 * k + 1, p))
                } else {
                    word(n, k, p)
                });
            }
        }
    }
    out
}
