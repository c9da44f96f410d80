//! CPU twin of `shaders/conv_int8.wgsl`: exact, so GPU and CPU agree bit for bit. Also the
//! input side shared by the twins of every row-tiled integer kernel ([`RowInput`]).

use crate::kernels::gemm_int8::PackedGemmInt8;
use crate::quant::pack::dot4_i8;

/// The packed input of a row-tiled integer convolution: `words` per pixel,
/// `a[((n * words + iw) * h + y) * w + x]`, and word `iw` reads `pads[iw]` outside the image.
pub(crate) struct RowInput<'a> {
    pub a: &'a [u32],
    pub words: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub pads: &'a [u32],
}

impl RowInput<'_> {
    /// Word `iw` of image `n` at `tap` of the K x K window centred on (`y`, `x`).
    pub fn word(&self, n: usize, iw: usize, y: usize, x: usize, tap: usize) -> u32 {
        let r = (self.k / 2) as isize;
        let yy = y as isize + (tap / self.k) as isize - r;
        let xx = x as isize + (tap % self.k) as isize - r;
        if yy >= 0 && yy < self.h as isize && xx >= 0 && xx < self.w as isize {
            self.a[((n * self.words + iw) * self.h + yy as usize) * self.w + xx as usize]
        } else {
            self.pads[iw]
        }
    }
}

/// `M[(n * ocg + g) * h * w + p] = corr[g] + sum over taps and input groups` of the packed
/// dot products, for packed `a[(n * icg + ic) * h * w + p]` and `pads[ic]` outside the image; `p`
/// is a 3x3 product from [`PackedGemmInt8::conv`].
pub fn conv_int8(
    a: &[u32],
    p: &PackedGemmInt8,
    batch: usize,
    h: usize,
    w: usize,
    pads: &[u32],
) -> Vec<[i32; 4]> {
    let icg = p.icg / 9;
    assert_eq!(a.len(), batch * icg * h * w, "input size does not match");
    let input = RowInput {
        a,
        words: icg,
        h,
        w,
        k: 3,
        pads,
    };
    let mut m = vec![[i32::MIN; 4]; batch * p.ocg * h * w];
    for n in 0..batch {
        for g in 0..p.ocg {
            for y in 0..h {
                for x in 0..w {
                    let mut acc = [0i32; 4];
                    for ic in 0..icg {
                        for tap in 0..9 {
                            let v = input.word(n, ic, y, x, tap);
                            let wd = p.words(0, g, tap * icg + ic);
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
