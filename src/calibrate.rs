//! `refqsr calibrate`: run the float model on patches of calibration images, record the input
//! distribution of every quantized convolution, and search its bounds at every bit-width
//! (see [`crate::quant::calib`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::exec::{GpuModel, Plan};
use crate::gpu::Context;
use crate::model::{Graph, Op, ValueId};
use crate::quant::calib::{self, Calibration, Histogram, LayerBounds, BITS, FORMAT};

/// Side of the square calibration patches (input pixels); smaller images give one patch of
/// their own size.
pub const PATCH: usize = 96;
/// Patches per image, on a regular grid.
pub const PATCHES_PER_IMAGE: usize = 9;

/// What `calibrate` found, and the images it could not use.
pub struct Outcome {
    pub calibration: Calibration,
    pub skipped: Vec<(PathBuf, Error)>,
}

/// One patch: which image, and its top-left corner and size.
struct Patch {
    image: usize,
    x: usize,
    y: usize,
    size: (usize, usize),
}

/// Calibrate `graph` on every image under `dir`; `progress(done, total)` is called per patch
/// and pass.
pub fn calibrate(
    ctx: Arc<Context>,
    graph: &Graph,
    dir: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Outcome> {
    let mut images = Vec::new();
    let mut skipped = Vec::new();
    for f in crate::batch::images(dir)? {
        match crate::imageio::read(&f) {
            Ok(img) => images.push((f, img.to_rgb32f())),
            Err(e) => skipped.push((f, e)),
        }
    }
    if images.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no readable png, jpg or webp images to calibrate on",
            dir.display()
        )));
    }
    let patches: Vec<Patch> = images
        .iter()
        .enumerate()
        .flat_map(|(i, (_, img))| grid(i, img.width() as usize, img.height() as usize))
        .collect();

    let graph = &crate::quant::prepare(graph.clone());
    let body = calib::body_convs(graph);
    let inputs: Vec<ValueId> = body.iter().map(|&j| graph.nodes[j].inputs[0]).collect();
    let weights: Vec<Vec<f64>> = body
        .iter()
        .map(|&j| match &graph.nodes[j].op {
            Op::Conv(c) => calib::channel_weights(c),
            _ => unreachable!("body_convs lists convolutions"),
        })
        .collect();
    let model = GpuModel::new(ctx, graph.clone())?;
    let mut plans: Vec<((usize, usize), Plan)> = Vec::new();
    let total = 2 * patches.len();
    let mut done = 0;
    progress(0, total);

    // Runs the float model on every patch and hands each body layer's input to `visit`. It
    // runs twice: once for each layer's range, which the histograms need before their first
    // value, then to fill them; keeping every feature map instead would take hundreds of MB.
    let mut each = |visit: &mut dyn FnMut(usize, usize, &[f32])| -> Result<()> {
        for p in &patches {
            let (w, h) = p.size;
            if !plans.iter().any(|(s, _)| *s == p.size) {
                plans.push((p.size, model.plan_keeping(1, h, w, &inputs)?));
            }
            let plan = &plans.iter().find(|(s, _)| *s == p.size).unwrap().1;
            let img = &images[p.image].1;
            // C4HW with one channel group: pixel i's lanes at 4 i..4 i + 4
            let mut c4 = vec![0f32; h * w * 4];
            for (i, px) in c4.chunks_mut(4).enumerate() {
                let v = img.get_pixel((p.x + i % w) as u32, (p.y + i / w) as u32);
                px[..3].copy_from_slice(&v.0);
            }
            plan.run(&c4)?;
            for (l, &v) in inputs.iter().enumerate() {
                let data = plan.read_value(v)?;
                visit(l, h * w, &data);
            }
            done += 1;
            progress(done, total);
        }
        Ok(())
    };
    let channels: Vec<usize> = inputs.iter().map(|&v| graph.values[v].channels).collect();
    // C4HW element i: group (i / 4 / plane), lane i % 4.
    let channel_of = |i: usize, plane: usize| (i / 4 / plane) * 4 + i % 4;

    let mut range = vec![(0f32, 0f32); body.len()];
    each(&mut |l, plane, data| {
        for (i, &x) in data.iter().enumerate() {
            if channel_of(i, plane) < channels[l] {
                range[l] = (range[l].0.min(x), range[l].1.max(x));
            }
        }
    })?;
    let mut hists: Vec<Histogram> = range.iter().map(|&(a, b)| Histogram::new(a, b)).collect();
    let mut sums: Vec<Vec<(f64, f64)>> = channels.iter().map(|&c| vec![(0.0, 0.0); c]).collect();
    each(&mut |l, plane, data| {
        for (i, &x) in data.iter().enumerate() {
            let c = channel_of(i, plane);
            if c < channels[l] {
                hists[l].add(x, weights[l][c]);
                sums[l][c].0 += x as f64;
                sums[l][c].1 += 1.0;
            }
        }
    })?;

    let layers = body
        .iter()
        .enumerate()
        .map(|(l, &j)| LayerBounds {
            name: graph.nodes[j].name.clone(),
            in_ch: channels[l],
            min: range[l].0,
            max: range[l].1.max(range[l].0 + f32::MIN_POSITIVE),
            bounds: BITS
                .map(|b| (b, calib::search_bounds(&hists[l], b)))
                .collect(),
            mean: sums[l].iter().map(|&(s, n)| (s / n) as f32).collect(),
        })
        .collect();
    Ok(Outcome {
        calibration: Calibration {
            format: FORMAT.into(),
            model: graph.name.clone(),
            images: images
                .iter()
                .map(|(p, _)| {
                    p.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                })
                .collect(),
            patches: patches.len(),
            layers,
        },
        skipped,
    })
}

/// Up to [`PATCHES_PER_IMAGE`] patches of [`PATCH`] pixels spread evenly over an image.
fn grid(image: usize, width: usize, height: usize) -> Vec<Patch> {
    let (pw, ph) = (PATCH.min(width), PATCH.min(height));
    let n = (PATCHES_PER_IMAGE as f64).sqrt() as usize;
    let at = |len: usize, p: usize, i: usize| {
        if n == 1 {
            0
        } else {
            (len - p) * i / (n - 1)
        }
    };
    let mut out: Vec<Patch> = Vec::new();
    for iy in 0..n {
        for ix in 0..n {
            let (x, y) = (at(width, pw, ix), at(height, ph, iy));
            if !out.iter().any(|p| p.x == x && p.y == y) {
                out.push(Patch {
                    image,
                    x,
                    y,
                    size: (pw, ph),
                });
            }
        }
    }
    out
}

/// The RefQSR modes `calibrate` fits RefER for.
pub const REFQSR_MODES: &str = "refqsr:8-5,refqsr:8-4,refqsr:8-3,refqsr:4-3,refqsr:4-2";

/// Fit RefQSR (ClustBlock and RefER for every mode of [`REFQSR_MODES`]) for `graph`, whose
/// integer modes are calibrated by `calib`, on the images under `dir`.
pub fn calibrate_refqsr(
    ctx: Arc<Context>,
    graph: &Graph,
    calib: &Calibration,
    dir: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(crate::refqsr::Params, Vec<crate::refqsr::fit::ReferFit>)> {
    let mut images = Vec::new();
    for f in crate::batch::images(dir)? {
        // unreadable files were reported by the calibration itself
        if let Ok(img) = crate::imageio::read(&f) {
            images.push(img.to_rgb32f());
        }
    }
    if images.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no readable png, jpg or webp images to calibrate on",
            dir.display()
        )));
    }
    let modes = crate::quant::Mode::parse_list(REFQSR_MODES)?;
    let prepared = crate::quant::prepare(graph.clone());
    crate::refqsr::fit::fit(&ctx, &prepared, calib, &images, &modes, progress)
}
