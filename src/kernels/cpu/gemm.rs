//! CPU twin of `shaders/gemm.wgsl`.

use super::conv::{finish, mat_vec};
use super::Tensor;
use crate::kernels::gemm::PackedGemm;

/// M[((n * P + pos) * ocg + g) * tiles + t] = sum over input groups, in ascending order, of
/// U[pos][g][ic] V[((n * P + pos) * vgroups + ic) * tiles + t]; with the epilogue applied when
/// the product has one (then `residual` is read at the same index). V rows hold `vgroups`
/// channel groups, of which the product reads the first `icg`.
pub fn gemm(
    v: &[[f32; 4]],
    vgroups: usize,
    p: &PackedGemm,
    batch: usize,
    tiles: usize,
    residual: Option<&[f32]>,
) -> Vec<[f32; 4]> {
    let positions = p.positions;
    assert!(vgroups >= p.icg, "V rows narrower than the product's input");
    assert_eq!(
        v.len(),
        batch * positions * vgroups * tiles,
        "input size does not match"
    );
    let mut m = vec![[f32::NAN; 4]; batch * positions * p.ocg * tiles];
    for n in 0..batch {
        for pos in 0..positions {
            for g in 0..p.ocg {
                for t in 0..tiles {
                    let mut acc = [0f32; 4];
                    for ic in 0..p.icg {
                        let s = mat_vec(
                            p.mat(pos, g, ic),
                            &v[((n * positions + pos) * vgroups + ic) * tiles + t],
                        );
                        for l in 0..4 {
                            acc[l] += s[l];
                        }
                    }
                    let i = ((n * positions + pos) * p.ocg + g) * tiles + t;
                    m[i] = match &p.epilogue {
                        None => acc,
                        Some(e) => {
                            let r = residual
                                .map(|r| [r[4 * i], r[4 * i + 1], r[4 * i + 2], r[4 * i + 3]]);
                            finish(e, p.oc, acc, g, r)
                        }
                    };
                }
            }
        }
    }
    m
}

/// A 1x1 convolution through [`gemm`] (one position, pixels as columns).
pub fn pointwise(x: &Tensor, p: &PackedGemm, residual: Option<&Tensor>) -> Tensor {
    assert_eq!(
        (p.positions, x.groups()),
        (1, p.icg),
        "not a 1x1 product for this input"
    );
    let v: Vec<[f32; 4]> = x
        .data
        .chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect();
    let m = gemm(&v, p.icg, p, x.n, x.h * x.w, residual.map(|r| &r.data[..]));
    Tensor {
        n: x.n,
        c: p.oc,
        h: x.h,
        w: x.w,
        data: m.into_iter().flatten().collect(),
    }
}
