//! CPU twin of `shaders/conv_int8.wgsl`: exact, so GPU and CPU agree bit for bit.

use crate::kernels::gemm_int8::PackedGemmInt8;
use crate::quant::pack::dot4_i8;

/// `M[(n * ocg + g) * h * w + p] = corr[g] + sum over taps and input groups` of the packed
/// dot products, for packed `a[(n * icg + ic) * h * w + p]` and `pad` outside the image; `p`
/// is a 3x3 product from [`PackedGemmInt8::conv`].
pub fn conv_int8(
    a: &[u32],
    p: &PackedGemmInt8,
    batch: usize,
    h: usize,
    w: usize,
    pad: u32,
) -> Vec<[i32; 4]> {
    let icg = p.icg / 9;
    assert_eq!(a.len(), batch * icg * h * w, "input size does not match");
    let mut m = vec![[i32::MIN; 4]; batch * p.ocg * h * w];
    for n in 0..batch {
        for g in 0..p.ocg {
            for y in 0..h {
                for x in 0..w {
                    let mut acc = [0i32; 4];
                    for ic in 0..icg {
                        for tap in 0..9 {
                            let (yy, xx) = (y as isize + tap / 3 - 1, x as isize + tap % 3 - 1);
                            let inside = yy >= 0 && yy < h as isize && xx >= 0 && xx < w as isize;
                            let v = if inside {
                                a[((n * icg + ic) * h + yy as usize) * w + xx as usize]
                            } else {
                                pad
                            };
                            let wd = p.words(0, g, tap as usize * icg + ic);
                            for l in 0..4 {
                                acc[l] = acc[l].wrapping_add(dot4_i8(wd[l], v));
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
