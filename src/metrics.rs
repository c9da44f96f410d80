//! Image quality as super-resolution papers report it: PSNR and SSIM on the BT.601 luma (Y)
//! channel, with `shave` border pixels ignored, on 8-bit images (what is saved and compared).

use image::Rgb32FImage;

/// A single-channel image of f64 values in [0, 255].
#[derive(Debug, Clone)]
pub struct Plane {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f64>,
}

impl Plane {
    fn at(&self, x: usize, y: usize) -> f64 {
        self.data[y * self.width + x]
    }

    /// The plane without `shave` pixels on each side.
    pub fn shave(&self, shave: usize) -> Plane {
        let (w, h) = (
            self.width.saturating_sub(2 * shave),
            self.height.saturating_sub(2 * shave),
        );
        let data = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| self.at(x + shave, y + shave))
            .collect();
        Plane {
            width: w,
            height: h,
            data,
        }
    }
}

/// BT.601 luma of an RGB image in [0, 1], as MATLAB's `rgb2ycbcr` (Y in [16, 235]), after
/// rounding the image to 8 bits as a saved result would be.
pub fn luma(img: &Rgb32FImage) -> Plane {
    let q = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as f64 / 255.0;
    Plane {
        width: img.width() as usize,
        height: img.height() as usize,
        data: img
            .pixels()
            .map(|p| {
                let [r, g, b] = p.0.map(q);
                16.0 + 65.481 * r + 128.553 * g + 24.966 * b
            })
            .collect(),
    }
}

/// PSNR in dB for values in [0, 255] (infinite for identical planes).
pub fn psnr(a: &Plane, b: &Plane) -> f64 {
    assert_eq!(
        (a.width, a.height),
        (b.width, b.height),
        "PSNR of differently sized planes"
    );
    let mse = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        / a.data.len() as f64;
    10.0 * (255.0 * 255.0 / mse).log10()
}

/// PSNR in dB of the pixels `inside` selects, and of the others (`NaN` where a side is empty).
pub fn psnr_split(a: &Plane, b: &Plane, inside: &dyn Fn(usize, usize) -> bool) -> (f64, f64) {
    assert_eq!(
        (a.width, a.height),
        (b.width, b.height),
        "PSNR of differently sized planes"
    );
    let mut se = [(0f64, 0usize); 2];
    for (i, (x, y)) in a.data.iter().zip(&b.data).enumerate() {
        let side = usize::from(!inside(i % a.width, i / a.width));
        se[side].0 += (x - y) * (x - y);
        se[side].1 += 1;
    }
    let db = |(s, n): (f64, usize)| {
        if n == 0 {
            f64::NAN
        } else {
            10.0 * (255.0 * 255.0 / (s / n as f64)).log10()
        }
    };
    (db(se[0]), db(se[1]))
}

/// SSIM with an 11x11 Gaussian window (sigma 1.5), constants (0.01 * 255)^2 and
/// (0.03 * 255)^2, averaged over the positions where the window fits (Wang et al. 2004, as
/// MATLAB, BasicSR and scikit-image with `gaussian_weights=True` compute it).
pub fn ssim(a: &Plane, b: &Plane) -> f64 {
    assert_eq!(
        (a.width, a.height),
        (b.width, b.height),
        "SSIM of differently sized planes"
    );
    const R: usize = 5;
    let (w, h) = (a.width, a.height);
    if w <= 2 * R || h <= 2 * R {
        return f64::NAN;
    }
    let g: Vec<f64> = (0..=2 * R)
        .map(|i| (-((i as f64 - R as f64).powi(2)) / (2.0 * 1.5 * 1.5)).exp())
        .collect();
    let norm: f64 = g.iter().sum();
    let g: Vec<f64> = g.iter().map(|v| v / norm).collect();
    // Separable filtering, valid region only.
    let filter = |f: &dyn Fn(usize, usize) -> f64| -> Vec<f64> {
        let cols: Vec<f64> = (0..h)
            .flat_map(|y| (0..w - 2 * R).map(move |x| (x, y)))
            .map(|(x, y)| (0..=2 * R).map(|k| g[k] * f(x + k, y)).sum())
            .collect();
        let cw = w - 2 * R;
        (0..h - 2 * R)
            .flat_map(|y| (0..cw).map(move |x| (x, y)))
            .map(|(x, y)| (0..=2 * R).map(|k| g[k] * cols[(y + k) * cw + x]).sum())
            .collect()
    };
    let mu_a = filter(&|x, y| a.at(x, y));
    let mu_b = filter(&|x, y| b.at(x, y));
    let aa = filter(&|x, y| a.at(x, y) * a.at(x, y));
    let bb = filter(&|x, y| b.at(x, y) * b.at(x, y));
    let ab = filter(&|x, y| a.at(x, y) * b.at(x, y));
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let n = mu_a.len();
    (0..n)
        .map(|i| {
            let (ma, mb) = (mu_a[i], mu_b[i]);
            let (va, vb, cov) = (aa[i] - ma * ma, bb[i] - mb * mb, ab[i] - ma * mb);
            ((2.0 * ma * mb + c1) * (2.0 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
        })
        .sum::<f64>()
        / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_psnr_scores_each_side_alone() {
        // errors of 1 level on the left half and 4 levels on the right half: 48.13 and
        // 36.09 dB by the definition, and the whole plane in between
        let (w, h) = (8usize, 4usize);
        let a = Plane {
            width: w,
            height: h,
            data: vec![100.0; w * h],
        };
        let b = Plane {
            data: (0..w * h)
                .map(|i| if i % w < 4 { 101.0 } else { 96.0 })
                .collect(),
            ..a.clone()
        };
        let (left, right) = psnr_split(&a, &b, &|x, _| x < 4);
        assert!((left - 48.1308).abs() < 1e-3, "{left}");
        assert!((right - 36.0902).abs() < 1e-3, "{right}");
        let whole = psnr(&a, &b);
        assert!(right < whole && whole < left);
        let (all, none) = psnr_split(&a, &b, &|_, _| true);
        assert_eq!(all, whole);
        assert!(none.is_nan());
    }

    fn synthetic() -> (Plane, Plane) {
        let (w, h) = (40usize, 32usize);
        let a: Vec<f64> = (0..h)
            .flat_map(|y| {
                (0..w).map(move |x| 128.0 + 60.0 * (x as f64 * 0.3).sin() * (y as f64 * 0.2).cos())
            })
            .collect();
        let b: Vec<f64> = a
            .iter()
            .enumerate()
            .map(|(i, v)| v + 10.0 * (((i % w) * (i / w)) as f64 * 0.01).sin())
            .collect();
        (
            Plane {
                width: w,
                height: h,
                data: a,
            },
            Plane {
                width: w,
                height: h,
                data: b,
            },
        )
    }

    #[test]
    fn psnr_and_ssim_match_scikit_image() {
        // Reference values from scikit-image 0.26 on the same planes:
        //   structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
        //                         use_sample_covariance=False, data_range=255)
        //   peak_signal_noise_ratio(a, b, data_range=255)
        let (a, b) = synthetic();
        assert!(
            (ssim(&a, &b) - 0.9832065529950831).abs() < 1e-9,
            "{}",
            ssim(&a, &b)
        );
        assert!(
            (psnr(&a, &b) - 31.5398227757901).abs() < 1e-9,
            "{}",
            psnr(&a, &b)
        );
        assert_eq!(ssim(&a, &a), 1.0);
        assert!(psnr(&a, &a).is_infinite());
    }

    #[test]
    fn luma_follows_bt601() {
        let img = Rgb32FImage::from_raw(2, 1, vec![1.0, 1.0, 1.0, 0.0, 0.0, 0.0]).unwrap();
        let y = luma(&img);
        assert!((y.data[0] - 235.0).abs() < 1e-9 && (y.data[1] - 16.0).abs() < 1e-9);
        assert_eq!(y.shave(0).data.len(), 2);
    }
}
