//! CPU twin of `shaders/im2col_int8.wgsl`.

/// The K x K neighbourhood gather of packed words `[n][icg][h][w]`; outside the image, group
/// `ic` reads `pads[ic]`.
pub fn im2col_int8(
    src: &[u32],
    batch: usize,
    icg: usize,
    h: usize,
    w: usize,
    k: usize,
    pads: &[u32],
) -> Vec<u32> {
    let (plane, taps, r) = (h * w, k * k, (k / 2) as isize);
    let mut dst = vec![0xdead_beef; batch * taps * icg * plane];
    for n in 0..batch {
        for ic in 0..icg {
            for p in 0..plane {
                let (y, x) = ((p / w) as isize, (p % w) as isize);
                for tap in 0..taps {
                    let (yy, xx) = (y + (tap / k) as isize - r, x + (tap % k) as isize - r);
                    let inside = yy >= 0 && yy < h as isize && xx >= 0 && xx < w as isize;
                    dst[((n * taps + tap) * icg + ic) * plane + p] = if inside {
                        src[(n * icg + ic) * plane + yy as usize * w + xx as usize]
                    } else {
                        pads[ic]
                    };
                }
            }
        }
    }
    dst
}
