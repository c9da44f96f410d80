//! CPU twin of `shaders/unary.wgsl`.

use super::{activate, mask_lanes, Tensor};
use crate::model::Activation;

pub fn unary(x: &Tensor, act: &Activation) -> Tensor {
    let mut out = Tensor::poisoned(x.n, x.c, x.h, x.w);
    let plane = x.h * x.w;
    let groups = x.groups();
    let (leaky, slopes) = match act {
        Activation::Leaky(s) => (*s, &[][..]),
        Activation::PRelu(s) => (0.0, &s[..]),
        _ => (0.0, &[][..]),
    };
    for i in 0..x.data.len() / 4 {
        let g = (i / plane) % groups;
        let v = x.vec4(i);
        let y = std::array::from_fn(|l| {
            let slope = slopes.get(g * 4 + l).copied().unwrap_or(0.0);
            activate(v[l], act.code(), leaky, slope)
        });
        out.set_vec4(i, mask_lanes(y, g, x.c));
    }
    out
}
