//! The paper's evaluation on any folder of HR images: each image is cropped to a multiple of
//! the scale, downscaled with antialiased bicubic (Catmull-Rom, as MATLAB's `imresize`),
//! upscaled in each mode and scored with PSNR and SSIM on Y with `scale` pixels shaved, next
//! to the mode's BitOPs and FQR on the same LR sizes.

use std::path::{Path, PathBuf};

use image::imageops::{self, FilterType};

use crate::error::{Error, Result};
use crate::gpu::Context;
use crate::metrics::{luma, psnr, psnr_split, ssim};
use crate::quant::{Bounds, Mode};
use crate::refqsr::Ablation;
use crate::upscaler::load_graph;
use crate::{Options, Upscaler};

/// One line of the table: a mode averaged over the images.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub mode: Mode,
    /// How the quantization bounds were chosen (`None` for fp32).
    pub bounds: Option<Bounds>,
    pub psnr_y: f64,
    pub ssim_y: f64,
    /// Whole network, 10^9 BitOPs per image (mean over the images).
    pub bitops_g: f64,
    /// Quantized body alone, 10^9 BitOPs per image.
    pub bitops_body_g: f64,
    pub fqr: f64,
    pub images: usize,
    /// RefQSR: the ablation this row runs (`None` = the method itself).
    pub ablation: Option<Ablation>,
    /// RefQSR: share of patches that were references.
    pub ref_share: Option<f64>,
    /// RefQSR: ClustBlock's own 10^9 BitOPs per image.
    pub clust_bitops_g: Option<f64>,
    /// PSNR-Y of each image, in file order (the names are [`Report::images`]).
    pub per_image: Vec<f64>,
    /// The largest per-image PSNR-Y loss against fp32, and on which image (when fp32 ran).
    pub worst_vs_fp32: Option<(f64, String)>,
    /// Mean over the images of PSNR-Y on a [`SEAM_BAND`]-pixel band along the borders of
    /// RefQSR's patch grid minus PSNR-Y on the rest: patch seams show as a negative figure
    /// in RefQSR modes beyond what the same band costs w8a8.
    pub seam_db: f64,
    /// Mean over the images of PSNR-Y against the fp32 output (when fp32 ran; not for fp32
    /// itself), each image capped at [`MAX_FIDELITY_DB`]: how faithfully a mode computes the
    /// model, which the PSNR against HR hides where the model itself strays from the photo.
    pub vs_fp32_y: Option<f64>,
}

/// The cap of [`Row::vs_fp32_y`] on one image (identical outputs would score infinity).
pub const MAX_FIDELITY_DB: f64 = 100.0;

/// Width (output pixels) of the band along RefQSR's patch borders that [`Row::seam_db`]
/// scores: half on each side of a border.
pub const SEAM_BAND: usize = 4;

/// One mode on one image (summed over images, then divided).
#[derive(Debug, Clone, Copy, Default)]
struct Score {
    psnr: f64,
    vs_fp32: f64,
    ssim: f64,
    seam: f64,
    bitops: f64,
    bitops_body: f64,
    fqr: f64,
    ref_share: f64,
    clust_bitops: f64,
}

impl std::ops::AddAssign for Score {
    fn add_assign(&mut self, o: Score) {
        self.psnr += o.psnr;
        self.vs_fp32 += o.vs_fp32;
        self.ssim += o.ssim;
        self.seam += o.seam;
        self.bitops += o.bitops;
        self.bitops_body += o.bitops_body;
        self.fqr += o.fqr;
        self.ref_share += o.ref_share;
        self.clust_bitops += o.clust_bitops;
    }
}

/// What `evaluate` found.
pub struct Report {
    pub rows: Vec<Row>,
    /// Files that could not be evaluated, with why.
    pub skipped: Vec<(PathBuf, Error)>,
    /// Integer modes that fell back to fp32 on this adapter, with why.
    pub warnings: Vec<String>,
    pub model: String,
    pub scale: u32,
    /// The adapter and driver.
    pub adapter: String,
    /// The images scored, in order (file names).
    pub images: Vec<String>,
}

/// Evaluate every mode (integer modes once per entry of `bounds`) on every image under
/// `hr_dir` (recursively, sorted), with the model and adapter of `opts`;
/// `progress(done, total)` is called per image.
pub fn evaluate(
    opts: &Options,
    hr_dir: &Path,
    modes: &[Mode],
    bounds: &[Bounds],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Report> {
    let graph = load_graph(opts.model.as_deref(), opts.scale)?;
    let ctx = Context::new(opts.adapter.as_deref())?;
    let mut variants: Vec<(Mode, Option<Bounds>, Option<Ablation>)> = Vec::new();
    for &m in modes {
        if m.is_integer() {
            for &b in bounds {
                variants.push((m, Some(b), None));
                if matches!(m, Mode::RefQsr { .. }) {
                    variants.extend(Ablation::ALL.iter().map(|&a| (m, Some(b), Some(a))));
                }
            }
        } else {
            variants.push((m, None, None));
        }
    }
    let ups = variants
        .iter()
        .map(|&(mode, b, ablation)| {
            let o = Options {
                mode,
                bounds: b.unwrap_or_default(),
                ablation: ablation.unwrap_or_default(),
                ..opts.clone()
            };
            Upscaler::with_graph(ctx.clone(), graph.clone(), &o)
        })
        .collect::<Result<Vec<_>>>()?;
    let warnings = ups
        .iter()
        .filter_map(|u| u.fallback().map(String::from))
        .collect();
    let files = crate::batch::images(hr_dir)?;
    if files.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no png, jpg or webp images",
            hr_dir.display()
        )));
    }
    let s = graph.scale();
    let mut sums = vec![Score::default(); ups.len()];
    let mut per_image: Vec<Vec<f64>> = vec![Vec::new(); ups.len()];
    let (mut images, mut skipped, mut names) = (0usize, Vec::new(), Vec::new());
    let fp32 = variants.iter().position(|v| v.0 == Mode::Fp32);
    progress(0, files.len());
    for (i, path) in files.iter().enumerate() {
        match score(&ups, fp32, path, s) {
            Ok(scores) => {
                images += 1;
                names.push(
                    path.strip_prefix(hr_dir)
                        .unwrap_or(path)
                        .to_string_lossy()
                        .into_owned(),
                );
                for ((acc, each), sc) in sums.iter_mut().zip(&mut per_image).zip(scores) {
                    each.push(sc.psnr);
                    *acc += sc;
                }
            }
            Err(e) => skipped.push((path.clone(), e)),
        }
        progress(i + 1, files.len());
    }
    if images == 0 {
        return Err(Error::Invalid(format!(
            "{}: none of the images could be evaluated",
            hr_dir.display()
        )));
    }
    let n = images as f64;
    let worst = |each: &[f64]| {
        let f = &per_image[fp32?];
        f.iter()
            .zip(each)
            .zip(&names)
            .map(|((a, b), name)| (a - b, name.clone()))
            .max_by(|a, b| a.0.total_cmp(&b.0))
    };
    let rows = variants
        .iter()
        .zip(sums)
        .zip(&per_image)
        .map(|((&(mode, bounds, ablation), sum), each)| Row {
            mode,
            bounds,
            ablation,
            ref_share: matches!(mode, Mode::RefQsr { .. }).then_some(sum.ref_share / n),
            clust_bitops_g: matches!(mode, Mode::RefQsr { .. }).then_some(sum.clust_bitops / n),
            psnr_y: sum.psnr / n,
            ssim_y: sum.ssim / n,
            bitops_g: sum.bitops / n,
            bitops_body_g: sum.bitops_body / n,
            fqr: sum.fqr / n,
            images,
            worst_vs_fp32: worst(each),
            per_image: each.clone(),
            seam_db: sum.seam / n,
            vs_fp32_y: (fp32.is_some() && mode != Mode::Fp32).then_some(sum.vs_fp32 / n),
        })
        .collect();
    Ok(Report {
        rows,
        skipped,
        warnings,
        model: graph.name.clone(),
        scale: s,
        adapter: ctx.describe(),
        images: names,
    })
}

/// The score of each upscaler on one image; `fp32` is the index of the fp32 one, if any,
/// which the others' outputs are also compared with.
fn score(ups: &[Upscaler], fp32: Option<usize>, path: &Path, s: u32) -> Result<Vec<Score>> {
    let hr = crate::imageio::read(path)?.to_rgb32f();
    let (w, h) = (hr.width() / s * s, hr.height() / s * s);
    if w < 2 * s || h < 2 * s {
        return Err(Error::image(path, format!("too small to evaluate at x{s}")));
    }
    let hr = imageops::crop_imm(&hr, 0, 0, w, h).to_image();
    let lr = imageops::resize(&hr, w / s, h / s, FilterType::CatmullRom);
    let shave = s as usize;
    let hr_y = luma(&hr).shave(shave);
    let in_band = seam_band(((w / s) as usize, (h / s) as usize), s as usize, shave);
    let run = |up: &Upscaler| {
        let sr = up.upscale_rgb(&lr, &mut |_, _| {}).map_err(|e| match e {
            Error::Invalid(m) => Error::image(path, m),
            other => other,
        })?;
        Ok::<_, Error>(luma(&sr).shave(shave))
    };
    let reference = fp32.map(|i| run(&ups[i])).transpose()?;
    ups.iter()
        .enumerate()
        .map(|(i, up)| {
            let own;
            let sr_y = match &reference {
                Some(r) if fp32 == Some(i) => r,
                _ => {
                    own = run(up)?;
                    &own
                }
            };
            let vs_fp32 = reference
                .as_ref()
                .map_or(0.0, |r| psnr(sr_y, r).min(MAX_FIDELITY_DB));
            let (lw, lh) = ((w / s) as usize, (h / s) as usize);
            let (bitops, bitops_body, fqr, ref_share, clust_bitops) = match up.last_refqsr_run() {
                Some(r) => (
                    r.bitops_g + r.clust_bitops_g,
                    r.bitops_body_g,
                    r.fqr,
                    r.references as f64 / r.patches as f64,
                    r.clust_bitops_g,
                ),
                None => {
                    let c = up.cost(lw, lh).expect("cost of a uniform mode");
                    (c.bitops_g, c.bitops_body_g, c.fqr, 1.0, 0.0)
                }
            };
            let (band, rest) = psnr_split(sr_y, &hr_y, &in_band);
            Ok(Score {
                seam: if band.is_finite() && rest.is_finite() {
                    band - rest
                } else {
                    0.0
                },
                psnr: psnr(sr_y, &hr_y),
                vs_fp32,
                ssim: ssim(sr_y, &hr_y),
                bitops,
                bitops_body,
                fqr,
                ref_share,
                clust_bitops,
            })
        })
        .collect()
}

/// Whether output pixel (x, y) of the shaved plane lies in the [`SEAM_BAND`] along the inner
/// borders of RefQSR's patch grid over an `lr` (width, height) input at `scale`.
fn seam_band(lr: (usize, usize), scale: usize, shave: usize) -> impl Fn(usize, usize) -> bool {
    use crate::refqsr::{HALO, PATCH};
    let grid = crate::tile::Grid::new(lr.0, lr.1, PATCH, HALO, 0);
    // inner borders along one axis, in output pixels: where a core ends inside the image
    let borders = |core_end: &dyn Fn(&crate::tile::Tile) -> usize, len: usize| -> Vec<usize> {
        let mut b: Vec<usize> = grid
            .tiles
            .iter()
            .map(|t| core_end(t) * scale)
            .filter(|&e| e > 0 && e < len * scale)
            .collect();
        b.sort_unstable();
        b.dedup();
        b
    };
    let xs = borders(&|t| t.x.core.1, lr.0);
    let ys = borders(&|t| t.y.core.1, lr.1);
    let half = SEAM_BAND / 2;
    move |x: usize, y: usize| {
        let near =
            |v: usize, borders: &[usize]| borders.iter().any(|&b| v + half >= b && v < b + half);
        near(x + shave, &xs) || near(y + shave, &ys)
    }
}

/// The table in the shape of the paper's Table 2 (RefQSR rows add their reference share and
/// ClustBlock's BitOPs, and the Table 5 ablations).
pub fn markdown(rows: &[Row], scale: u32) -> String {
    let mut t = format!("| mode (x{scale}) | bounds | PSNR-Y (dB) | worst image vs fp32 (dB) | PSNR-Y against the fp32 output (dB) | border band - rest (dB) | SSIM-Y | BitOPs (G) | body BitOPs (G) | FQR | references | clustering BitOPs (G) | images |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let mode = match r.ablation {
            Some(a) => format!("{} {}", r.mode, a.name()),
            None => r.mode.to_string(),
        };
        t += &format!(
            "| {} | {} | {:.3} | {} | {} | {:.3} | {:.4} | {:.1} | {:.2} | {:.2} | {} | {} | {} |\n",
            mode,
            r.bounds.map_or("-".into(), |b| b.to_string()),
            r.psnr_y,
            match &r.worst_vs_fp32 {
                Some((d, name)) if r.mode != Mode::Fp32 => format!("{:.3} ({name})", -d),
                _ => "-".into(),
            },
            r.vs_fp32_y.map_or("-".into(), |x| format!("{x:.2}")),
            r.seam_db,
            r.ssim_y,
            r.bitops_g,
            r.bitops_body_g,
            r.fqr,
            r.ref_share
                .map_or("-".into(), |x| format!("{:.0}%", 100.0 * x)),
            r.clust_bitops_g.map_or("-".into(), |x| format!("{x:.3}")),
            r.images
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seam_band_follows_the_patch_borders() {
        // 150 LR pixels in 48-pixel patches with a 3-pixel halo: 54-pixel windows, edge
        // cores of 51 and an inner one of 48 (51 + 48 + 51), so inner borders at LR 51 and
        // 99, output 204 and 396
        let (lr, s, shave) = ((150, 150), 4, 4);
        let band = seam_band(lr, s, shave);
        let side = lr.0 * s - 2 * shave;
        let columns: Vec<usize> = (0..side)
            .filter(|&x| band(x, 0) && band(x, side - 1))
            .collect();
        // a column in the band is in it at every row; each border gives SEAM_BAND columns
        for &x in &columns {
            assert!((0..side).all(|y| band(x, y)));
        }
        let half = SEAM_BAND / 2;
        let want: Vec<usize> = [204, 396]
            .iter()
            .flat_map(|b| b - half - shave..b + half - shave)
            .collect();
        assert_eq!(columns, want);
        // same along y, by symmetry of the grid
        let rows: Vec<usize> = (0..side)
            .filter(|&y| band(0, y) && band(side - 1, y))
            .collect();
        assert_eq!(rows, want);
        // one patch: no inner border, no band
        let one = seam_band((40, 30), s, shave);
        assert!((0..150).all(|x| (0..110).all(|y| !one(x, y))));
    }
}
