//! The CPU convolutions the calibration's autodiff runs on: "same"-padded, stride-1, square
//! kernels over planar `[n][c][h][w]` f32 data, forward and weight gradient (the input
//! gradient is the forward convolution by the flipped kernel).
//!
//! Why not candle's own: its tiled im2col writes every patch element with a stride of the
//! tile's width and took about 40% of a learning step of `refqsr calibrate` on SPAN x4, more
//! than the GEMMs themselves, and it computes a weight gradient as a convolution with a kernel
//! the size of the image. Here each im2col row (one input channel at one kernel offset) is a
//! shifted copy of whole image rows, written in order into a buffer each thread keeps, and one
//! GEMM per tile of rows (the `gemm` crate, which candle itself multiplies with) writes
//! straight into the output. Images run in parallel; a single image parallelises inside its
//! GEMMs instead.

use std::cell::RefCell;

use gemm::Parallelism;
use rayon::prelude::*;

/// Output pixels per im2col tile: 432 patch rows (48 channels, 3x3) of 2048 f32 are 3.5 MB,
/// which stays in the caches of the machines calibration runs on, and a 40x40 crop (the
/// calibration's) is one tile.
const TILE_PIXELS: usize = 2048;

thread_local! {
    static COLUMNS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The shape of a planar batch: images, channels, height, width.
pub(super) type Dims = (usize, usize, usize, usize);

/// `y[b][o][y][x] = sum over c, ky, kx of w[o][c][ky][kx] x[b][c][y + ky - k/2][x + kx - k/2]`,
/// zero outside the image: `x` is `dims`, `weights` `[o][c][k][k]`, the result `[n][o][h][w]`.
pub(super) fn forward(x: &[f32], dims: Dims, weights: &[f32], o: usize, k: usize) -> Vec<f32> {
    let (n, c, h, w) = dims;
    let (hw, kk) = (h * w, c * k * k);
    assert_eq!(x.len(), n * c * hw, "convolution input of the wrong size");
    assert_eq!(
        weights.len(),
        o * kk,
        "convolution weights of the wrong size"
    );
    let mut y = vec![0f32; n * o * hw];
    let inner = parallelism(n);
    y.par_chunks_mut(o * hw.max(1))
        .zip(x.par_chunks(c * hw.max(1)))
        .for_each(|(y, x)| {
            for (y0, rows) in tiles(h, w) {
                with_columns(x, (c, h, w), k, y0, rows, |cols| {
                    let px = rows * w;
                    // SAFETY: dst is the o x px block of `y` starting at pixel y0 * w of each
                    // output plane (row stride hw, inside `y` since y0 * w + px <= hw); lhs is
                    // `weights` as o x kk row-major; rhs is `cols` as kk x px row-major.
                    unsafe {
                        gemm::gemm(
                            o,
                            px,
                            kk,
                            y.as_mut_ptr().add(y0 * w),
                            1,
                            hw as isize,
                            false,
                            weights.as_ptr(),
                            1,
                            kk as isize,
                            cols.as_ptr(),
                            1,
                            px as isize,
                            0.0,
                            1.0,
                            false,
                            false,
                            false,
                            inner,
                        )
                    }
                })
            }
        });
    y
}

/// The gradient of [`forward`]'s weights, `[o][c][k][k]`, for the output gradient `g`
/// (`[n][o][h][w]`) and the input `x` (`dims`).
pub(super) fn weight_grad(x: &[f32], dims: Dims, g: &[f32], o: usize, k: usize) -> Vec<f32> {
    let (n, c, h, w) = dims;
    let (hw, kk) = (h * w, c * k * k);
    assert_eq!(x.len(), n * c * hw, "convolution input of the wrong size");
    assert_eq!(
        g.len(),
        n * o * hw,
        "convolution gradient of the wrong size"
    );
    let inner = parallelism(n);
    let per_image = |(x, g): (&[f32], &[f32])| {
        let mut dw = vec![0f32; o * kk];
        for (y0, rows) in tiles(h, w) {
            with_columns(x, (c, h, w), k, y0, rows, |cols| {
                let px = rows * w;
                // SAFETY: dst is `dw`, o x kk row-major; lhs the o x px block of `g` from
                // pixel y0 * w of each plane (row stride hw); rhs is `cols` (kk x px
                // row-major) read as its px x kk transpose.
                unsafe {
                    gemm::gemm(
                        o,
                        kk,
                        px,
                        dw.as_mut_ptr(),
                        1,
                        kk as isize,
                        true,
                        g.as_ptr().add(y0 * w),
                        1,
                        hw as isize,
                        cols.as_ptr(),
                        px as isize,
                        1,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        inner,
                    )
                }
            })
        }
        dw
    };
    x.par_chunks(c * hw.max(1))
        .zip(g.par_chunks(o * hw.max(1)))
        .map(per_image)
        .reduce(
            || vec![0f32; o * kk],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        )
}

/// `[i][o][k][k]` from `[o][i][k][k]`, each kernel turned by 180 degrees: the weights whose
/// forward convolution of an output gradient is the input gradient.
pub(super) fn flipped(weights: &[f32], o: usize, i: usize, k: usize) -> Vec<f32> {
    let mut f = vec![0f32; weights.len()];
    for (n, &w) in weights.iter().enumerate() {
        let (oc, ic, ky, kx) = (n / (i * k * k), n / (k * k) % i, n / k % k, n % k);
        f[((ic * o + oc) * k + (k - 1 - ky)) * k + (k - 1 - kx)] = w;
    }
    f
}

/// Keeps the memory the calibration frees for its next step. Each learning step allocates
/// and frees the same tensors of one to a few MB; glibc hands blocks that large back to the
/// system and takes them again zeroed, which cost 17% of a step of `refqsr calibrate` on SPAN
/// x4 in the kernel clearing pages. Blocks up to 32 MiB (glibc's largest threshold) now come
/// from the heap, and its top is trimmed only past 1 GiB free. Process-wide, once.
pub(super) fn reuse_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: mallopt only changes glibc's allocation thresholds; it is called once, and
        // memory already allocated is unaffected.
        ONCE.call_once(|| unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        });
    }
}

/// One image's GEMMs run in parallel only when there are fewer images than threads.
fn parallelism(images: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if images < threads {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// (first row, rows) of the tiles of an `h` x `w` plane.
fn tiles(h: usize, w: usize) -> impl Iterator<Item = (usize, usize)> {
    let rows = (TILE_PIXELS / w.max(1)).clamp(1, h.max(1));
    (0..h).step_by(rows).map(move |y0| (y0, rows.min(h - y0)))
}

/// Calls `f` with the im2col matrix of rows `y0..y0 + rows` of one image `x` (`c` x `h` x
/// `w`): row `(ch * k + ky) * k + kx` holds input channel `ch` shifted by `(ky - k/2, kx -
/// k/2)`, zero outside the image, one column per output pixel of the tile.
fn with_columns(
    x: &[f32],
    (c, h, w): (usize, usize, usize),
    k: usize,
    y0: usize,
    rows: usize,
    f: impl FnOnce(&[f32]),
) {
    let pad = (k / 2) as isize;
    let px = rows * w;
    COLUMNS.with_borrow_mut(|cols| {
        cols.resize(c * k * k * px, 0.0);
        for (r, row) in cols.chunks_exact_mut(px).enumerate() {
            let (ch, ky, kx) = (r / (k * k), r / k % k, r % k);
            let (dy, dx) = (ky as isize - pad, kx as isize - pad);
            // the output columns whose source column x + dx is inside the image
            let x0 = (-dx).clamp(0, w as isize) as usize;
            let x1 = (w as isize - dx).clamp(x0 as isize, w as isize) as usize;
            let plane = &x[ch * h * w..][..h * w];
            for (out, line) in row.chunks_exact_mut(w).zip(y0..) {
                let sy = line as isize + dy;
                if sy < 0 || sy >= h as isize {
                    out.fill(0.0);
                    continue;
                }
                let src = &plane[sy as usize * w..][..w];
                out[..x0].fill(0.0);
                out[x0..x1].copy_from_slice(
                    &src[(x0 as isize + dx) as usize..(x1 as isize + dx) as usize],
                );
                out[x1..].fill(0.0);
            }
        }
        f(&cols[..c * k * k * px]);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The convolution straight from its definition, in f64.
    fn direct(x: &[f32], (n, c, h, w): Dims, wt: &[f32], o: usize, k: usize) -> Vec<f64> {
        let p = (k / 2) as isize;
        let mut y = vec![0f64; n * o * h * w];
        for b in 0..n {
            for oc in 0..o {
                for yy in 0..h {
                    for xx in 0..w {
                        let mut s = 0f64;
                        for ic in 0..c {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let sy = yy as isize + ky as isize - p;
                                    let sx = xx as isize + kx as isize - p;
                                    if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                                        continue;
                                    }
                                    s += wt[((oc * c + ic) * k + ky) * k + kx] as f64
                                        * x[((b * c + ic) * h + sy as usize) * w + sx as usize]
                                            as f64;
                                }
                            }
                        }
                        y[((b * o + oc) * h + yy) * w + xx] = s;
                    }
                }
            }
        }
        y
    }

    fn random(rng: &mut rand::rngs::StdRng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// Shapes that exercise one and several tiles, a partial last tile, 1x1, 3x3 and 5x5
    /// kernels, planes narrower than the padding and one image (the GEMM's own threads).
    const SHAPES: [(Dims, usize, usize); 6] = [
        ((2, 3, 5, 7), 4, 3),
        ((1, 4, 70, 33), 5, 3),
        ((3, 2, 9, 300), 3, 3),
        ((2, 6, 4, 4), 2, 1),
        ((1, 2, 6, 2), 3, 5),
        ((5, 3, 1, 1), 2, 3),
    ];

    #[test]
    fn the_forward_convolution_is_the_definition() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for (dims @ (n, c, h, w), o, k) in SHAPES {
            let x = random(&mut rng, n * c * h * w);
            let wt = random(&mut rng, o * c * k * k);
            let want = direct(&x, dims, &wt, o, k);
            let got = forward(&x, dims, &wt, o, k);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (*g as f64 - w).abs() < 1e-4,
                    "{dims:?} k{k}: {g} against {w}"
                );
            }
        }
    }

    #[test]
    fn the_gradients_are_those_of_the_definition() {
        // against the definition's derivatives: dL/dw and dL/dx of L = sum(g * y)
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        for (dims @ (n, c, h, w), o, k) in SHAPES {
            let x = random(&mut rng, n * c * h * w);
            let wt = random(&mut rng, o * c * k * k);
            let g = random(&mut rng, n * o * h * w);
            let p = (k / 2) as isize;
            let (mut dw, mut dx) = (vec![0f64; wt.len()], vec![0f64; x.len()]);
            for b in 0..n {
                for oc in 0..o {
                    for yy in 0..h {
                        for xx in 0..w {
                            let gy = g[((b * o + oc) * h + yy) * w + xx] as f64;
                            for ic in 0..c {
                                for ky in 0..k {
                                    for kx in 0..k {
                                        let sy = yy as isize + ky as isize - p;
                                        let sx = xx as isize + kx as isize - p;
                                        if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize
                                        {
                                            continue;
                                        }
                                        let xi = ((b * c + ic) * h + sy as usize) * w + sx as usize;
                                        let wi = ((oc * c + ic) * k + ky) * k + kx;
                                        dw[wi] += gy * x[xi] as f64;
                                        dx[xi] += gy * wt[wi] as f64;
                                    }
                                }
                            }
                        }
                    }
                }
            }
            let got_dw = weight_grad(&x, dims, &g, o, k);
            for (a, b) in got_dw.iter().zip(&dw) {
                assert!(
                    (*a as f64 - b).abs() < 1e-3,
                    "{dims:?} k{k} dw: {a} against {b}"
                );
            }
            let got_dx = forward(&g, (n, o, h, w), &flipped(&wt, o, c, k), c, k);
            for (a, b) in got_dx.iter().zip(&dx) {
                assert!(
                    (*a as f64 - b).abs() < 1e-4,
                    "{dims:?} k{k} dx: {a} against {b}"
                );
            }
        }
    }
}
