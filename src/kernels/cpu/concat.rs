//! CPU twin of `shaders/concat.wgsl`.

use super::Tensor;

pub fn concat(inputs: &[&Tensor]) -> Tensor {
    let f = inputs[0];
    let channels: usize = inputs.iter().map(|t| t.c).sum();
    let mut out = Tensor::poisoned(f.n, channels, f.h, f.w);
    out.data.fill(0.0);
    for n in 0..f.n {
        let mut off = 0;
        for t in inputs {
            for c in 0..t.c {
                for y in 0..f.h {
                    for x in 0..f.w {
                        out.set(n, off + c, y, x, t.get(n, c, y, x));
                    }
                }
            }
            off += t.c;
        }
    }
    out
}
