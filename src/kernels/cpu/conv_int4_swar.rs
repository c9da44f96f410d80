//! CPU twin of `shaders/conv_int4_swar.wgsl`: the same wrapping 32-bit pair arithmetic, so
//! GPU and CPU agree bit for bit (and both equal `conv_int4`).

use super::conv_int8::RowInput;
use crate::kernels::conv_int4_swar::PackedSwar;

/// The sums `M[(n * ocg + g) * h * w + p]` of `p` over nibble-packed
/// `a[(n * icw + iw) * h * w + p]`, reading `pads[iw]` outside word `iw`.
pub fn conv_int4_swar(
    a: &[u32],
    p: &PackedSwar,
    batch: usize,
    h: usize,
    w: usize,
    pads: &[u32],
) -> Vec<[i32; 4]> {
    let (k, icw) = (p.k, p.icw);
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
                        for tap in 0..k * k {
                            let u = input.word(n, iw, y, x, tap) ^ 0x8888_8888;
                            for (q, shift) in [0, 8, 4, 12].into_iter().enumerate() {
                                let xq = (((u >> shift) & 0x000f_000f) as i32) - 0x0008_0008;
                                let wq = p.pair(tap, iw, q, g);
                                for l in 0..4 {
                                    acc[l] = acc[l].wrapping_add(wq[l].wrapping_mul(xq));
                                }
                            }
                        }
                    }
                    m[(n * p.ocg + g) * h * w + y * w + x] = std::array::from_fn(|l| {
                        let low = (acc[l] << 16) >> 16;
                        (acc[l].wrapping_sub(low) >> 16).wrapping_add(p.corr[g][l])
                    });
                }
            }
        }
    }
    m
}
