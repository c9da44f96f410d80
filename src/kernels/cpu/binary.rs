//! CPU twin of `shaders/binary.wgsl`.

use super::{mask_lanes, Tensor};
use crate::model::BinaryKind;

/// The right-hand operand of a binary op.
pub enum Operand<'a> {
    Tensor(&'a Tensor),
    Scalar(f32),
    PerChannel(&'a [f32]),
}

pub fn binary(a: &Tensor, b: Operand<'_>, kind: BinaryKind) -> Tensor {
    let mut out = Tensor::poisoned(a.n, a.c, a.h, a.w);
    let plane = a.h * a.w;
    let groups = a.groups();
    for i in 0..a.data.len() / 4 {
        let g = (i / plane) % groups;
        let x = a.vec4(i);
        let y: [f32; 4] = match &b {
            Operand::Tensor(t) => t.vec4(i),
            Operand::Scalar(s) => [*s; 4],
            Operand::PerChannel(v) => per_channel_group(v, g),
        };
        let r: [f32; 4] = std::array::from_fn(|l| match kind {
            BinaryKind::Add => x[l] + y[l],
            BinaryKind::Sub => x[l] - y[l],
            BinaryKind::Mul => x[l] * y[l],
            BinaryKind::Div => x[l] / y[l],
            BinaryKind::RSub => y[l] - x[l],
            BinaryKind::Max => x[l].max(y[l]),
            BinaryKind::Min => x[l].min(y[l]),
        });
        out.set_vec4(i, mask_lanes(r, g, a.c));
    }
    out
}

/// Group `g` of a per-channel vector as the launcher uploads it (padding lanes = 1, so a
/// division never makes NaN in them).
pub fn per_channel_group(v: &[f32], g: usize) -> [f32; 4] {
    std::array::from_fn(|l| v.get(g * 4 + l).copied().unwrap_or(1.0))
}
