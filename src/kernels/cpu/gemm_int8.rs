//! CPU twin of `shaders/gemm_int8.wgsl`: exact, so GPU and CPU agree bit for bit.

use crate::kernels::gemm_int8::PackedGemmInt8;
use crate::quant::pack::dot4_i8;

/// M[((n * P + pos) * ocg + g) * tiles + t] = corr[g] + sum over input groups of the packed
/// dot products, for packed activations `a[((n * P + pos) * icg + ic) * tiles + t]`.
pub fn gemm_int8(a: &[u32], p: &PackedGemmInt8, batch: usize, tiles: usize) -> Vec<[i32; 4]> {
    let positions = p.positions;
    assert_eq!(
        a.len(),
        batch * positions * p.icg * tiles,
        "input size does not match"
    );
    let mut m = vec![[i32::MIN; 4]; batch * positions * p.ocg * tiles];
    for n in 0..batch {
        for pos in 0..positions {
            for g in 0..p.ocg {
                for t in 0..tiles {
                    let mut acc = [0i32; 4];
                    for ic in 0..p.icg {
                        let x = a[((n * positions + pos) * p.icg + ic) * tiles + t];
                        let w = p.words(pos, g, ic);
                        for l in 0..4 {
                            acc[l] = acc[l].wrapping_add(dot4_i8(w[l], x));
                        }
                    }
                    m[((n * positions + pos) * p.ocg + g) * tiles + t] =
                        std::array::from_fn(|l| acc[l].wrapping_add(p.corr[g][l]));
                }
            }
        }
    }
    m
}
