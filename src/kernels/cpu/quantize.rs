//! CPU twin of `shaders/quantize.wgsl`.

use super::Tensor;
use crate::quant::pack::pack_i8x4;
use crate::quant::Quantizer;

/// Packed bytes of `x` (C4HW), one word per pixel and channel group.
pub fn quantize(x: &Tensor, q: &Quantizer) -> Vec<u32> {
    let zero_byte = (-q.zero_point()) as i8;
    (0..x.data.len() / 4)
        .map(|i| {
            let g = (i / (x.h * x.w)) % x.groups();
            let v = x.vec4(i);
            let bytes: [i8; 4] = std::array::from_fn(|l| {
                if g * 4 + l < x.c {
                    q.byte(v[l])
                } else {
                    zero_byte
                }
            });
            pack_i8x4(&bytes)[0]
        })
        .collect()
}
