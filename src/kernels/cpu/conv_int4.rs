//! CPU twin of `shaders/conv_int4.wgsl`: exact, so GPU and CPU agree bit for bit.

use super::conv_int8::RowInput;
use crate::kernels::gemm_int8::PackedGemmInt8;
use crate::quant::pack::{dot4_i8, widen};

/// `M[(n * ocg + g) * h * w + p] = corr[g] + sum over taps and input words` of the dot
/// products of the two byte words of each nibble word (see [`widen`]), for nibble-packed
/// `a[(n * icw + iw) * h * w + p]` and `pads[iw]` outside the image; `p` is a K x K product from
/// [`PackedGemmInt8::conv`] over channels padded to a multiple of 8.
pub fn conv_int4(
    a: &[u32],
    p: &PackedGemmInt8,
    batch: usize,
    h: usize,
    w: usize,
    k: usize,
    pads: &[u32],
) -> Vec<[i32; 4]> {
    let taps = k * k;
    let icw = p.icg / taps / 2;
    assert_eq!(a.len(), batch * icw * h * w, "input size does not match");
    let input = RowInput {
        a,
        words: icw,
        h,
        w,
        k,
        pads,
    };
    let mut m = vec![[i32::MIN; 4]; batch * p.ocg * h * w];
    for n in 0..batch {
        for g in 0..p.ocg {
            for y in 0..h {
                for x in 0..w {
                    let mut acc = [0i32; 4];
                    for iw in 0..icw {
                        for tap in 0..taps {
                            let (low, high) = widen(input.word(n, iw, y, x, tap));
                            let wl = p.words(0, g, tap * 2 * icw + 2 * iw);
                            let wh = p.words(0, g, tap * 2 * icw + 2 * iw + 1);
                            for l in 0..4 {
                                acc[l] =
                                    acc[l].wrapping_add(dot4_i8(wl[l], low) + dot4_i8(wh[l], high));
                            }
                        }
                    }
                    m[(n * p.ocg + g) * h * w + y * w + x] =
                        std::array::from_fn(|l| acc[l].wrapping_add(p.corr[g][l]));
                }
            }
        }
    }
    m
}
