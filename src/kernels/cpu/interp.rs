//! CPU twin of `shaders/interp.wgsl`.

use super::Tensor;

pub fn interp(x: &Tensor, f: usize) -> Tensor {
    let mut out = Tensor::poisoned(x.n, x.c, x.h * f, x.w * f);
    for n in 0..x.n {
        for g in 0..x.groups() {
            for y in 0..out.h {
                for xx in 0..out.w {
                    let v = x.vec4(x.vec_index(n, g, y / f, xx / f));
                    let i = out.vec_index(n, g, y, xx);
                    out.set_vec4(i, v);
                }
            }
        }
    }
    out
}
