//! CPU twin of `shaders/pixel_shuffle.wgsl`.

use super::Tensor;

pub fn pixel_shuffle(x: &Tensor, r: usize) -> Tensor {
    let c = x.c / (r * r);
    let mut out = Tensor::poisoned(x.n, c, x.h * r, x.w * r);
    out.data.fill(0.0);
    for n in 0..x.n {
        for ch in 0..c {
            for y in 0..out.h {
                for xx in 0..out.w {
                    let sc = ch * r * r + (y % r) * r + xx % r;
                    out.set(n, ch, y, xx, x.get(n, sc, y / r, xx / r));
                }
            }
        }
    }
    out
}
