//! CPU twin of `shaders/cost_volume.wgsl` (RefER's cost volume, RefQSR Eq. 5).

use crate::quant::pack::dot4_i8;

/// E `[n][i][j]` = sum over groups of `dot4I8Packed(q[n][i][g], r[n][j][g])`. Integer sums
/// (wrapping, as in WGSL) do not depend on the order, so the tiling of the shader need not be
/// mirrored to match it bit for bit.
pub fn cost_volume(q: &[u32], r: &[u32], batch: usize, cells: usize, groups: usize) -> Vec<i32> {
    let mut e = Vec::with_capacity(batch * cells * cells);
    for n in 0..batch {
        for i in 0..cells {
            let qi = &q[(n * cells + i) * groups..][..groups];
            for j in 0..cells {
                let rj = &r[(n * cells + j) * groups..][..groups];
                e.push(
                    qi.iter()
                        .zip(rj)
                        .fold(0i32, |s, (&a, &b)| s.wrapping_add(dot4_i8(a, b))),
                );
            }
        }
    }
    e
}
