//! One upscale job as a user asks for it: a file or a folder in, a file or a folder out, the
//! output format and compression, the final size, test-time augmentation, threads and GPUs.
//!
//! `refqsr upscale` and the realesrgan-ncnn-vulkan / upscayl-bin command line both build a
//! [`Job`] and run it here, so both take one code path. Images flow through a pipeline:
//! `load` threads decode, one worker per [`Upscaler`] (one per GPU id) runs the network, `save`
//! threads encode. A failed image is reported and the others go on; every output appears
//! complete (atomic rename) or not at all.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};

use image::{DynamicImage, ImageFormat};

use crate::error::{Error, Result};
use crate::imageio::{self, Compression};
use crate::upscaler::Upscaler;

/// The size of the written image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Size {
    /// What the network gives: the input times the model's scale.
    #[default]
    Model,
    /// The input times this factor (resampled from the model's output when they differ).
    Scale(u32),
    /// This width, the height keeping the aspect ratio.
    Width(u32),
    /// Exactly this width and height.
    Exact(u32, u32),
}

impl Size {
    /// The output size for a `w` x `h` input through a x`model` network.
    pub fn target(self, w: u32, h: u32, model: u32) -> (u32, u32) {
        let mul = |a: u32, b: u32| a.saturating_mul(b);
        match self {
            Size::Model => (mul(w, model), mul(h, model)),
            Size::Scale(s) => (mul(w, s), mul(h, s)),
            Size::Width(tw) => {
                let th = (h as u64 * tw as u64 + w as u64 / 2) / w.max(1) as u64;
                (tw, th.clamp(1, u32::MAX as u64) as u32)
            }
            Size::Exact(tw, th) => (tw, th),
        }
    }
}

/// What to upscale and how to write it.
#[derive(Debug, Clone)]
pub struct Job {
    /// An image, or a folder of them (searched recursively).
    pub input: PathBuf,
    /// The output image, or the output folder (created) when `input` is a folder.
    pub output: PathBuf,
    /// The format of folder outputs (named `stem.EXT`); for a file output, used only when the
    /// output's extension names no format. `None`: keep each input's extension.
    pub format: Option<ImageFormat>,
    pub compression: Compression,
    pub size: Size,
    /// Test-time augmentation (eight flips and transposes averaged).
    pub tta: bool,
    /// Decoding threads.
    pub load_threads: usize,
    /// Encoding threads.
    pub save_threads: usize,
    /// Leave images whose output already exists (a finished output: outputs appear only by
    /// atomic rename), so an interrupted job resumes where it stopped.
    pub skip_existing: bool,
    /// `(i, n)`: only the images of shard `i` of `n` (see [`shard_of`]).
    pub shard: Option<(usize, usize)>,
}

/// The shard (of `n`) an image belongs to: a hash of its path relative to the job's input,
/// so shards are disjoint and complete, the same on every machine, and an image keeps its
/// shard when others are added to the folder. Slurm job arrays, Kubernetes indexed jobs or
/// GNU parallel run shard `i` of `n` each.
pub fn shard_of(relative: &Path, n: usize) -> usize {
    // FNV-1a over the path's bytes with `/` separators, whatever the platform
    let text = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/");
    let h = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    (h % n.max(1) as u64) as usize
}

/// Parse `I/N` (0 <= I < N).
pub fn parse_shard(text: &str) -> Result<(usize, usize)> {
    let bad = || {
        Error::Invalid(format!(
            "invalid shard `{text}`: I/N with 0 <= I < N, for example 0/4"
        ))
    };
    let (i, n) = text.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

impl Job {
    /// A job with the defaults: model-sized output, the output's own format, one thread each.
    pub fn new(input: impl Into<PathBuf>, output: impl Into<PathBuf>) -> Job {
        Job {
            input: input.into(),
            output: output.into(),
            format: None,
            compression: Compression::default(),
            size: Size::Model,
            tta: false,
            load_threads: 1,
            save_threads: 1,
            skip_existing: false,
            shard: None,
        }
    }
}

/// The file extension refqsr writes for a format.
pub fn extension(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "jpg",
        ImageFormat::WebP => "webp",
        _ => "png",
    }
}

/// One image of a job: where it comes from, where it goes, in which format.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub src: PathBuf,
    pub dst: PathBuf,
    pub format: ImageFormat,
}

/// The images of `job`, in a stable order. A folder input needs a folder output (created when
/// missing); a file input writes the output file, or `stem.EXT` inside an existing folder.
pub fn items(job: &Job) -> Result<Vec<Item>> {
    let input = &job.input;
    if input.is_dir() {
        if job.output.is_file() {
            return Err(Error::Invalid(format!(
                "{} is a folder but {} is a file: input and output must both be files or both folders",
                input.display(),
                job.output.display()
            )));
        }
        return crate::batch::collect(input, &job.output)?
            .into_iter()
            .filter(|(src, _)| {
                job.shard
                    .is_none_or(|(i, n)| shard_of(src.strip_prefix(input).unwrap_or(src), n) == i)
            })
            .map(|(src, dst)| {
                let (dst, format) = match job.format {
                    Some(f) => (dst.with_extension(extension(f)), f),
                    None => {
                        let f = imageio::output_format(&dst)?;
                        (dst, f)
                    }
                };
                Ok(Item { src, dst, format })
            })
            .collect();
    }
    if !input.exists() {
        return Err(Error::io(input, std::io::ErrorKind::NotFound.into()));
    }
    let dst = if job.output.is_dir() {
        let stem = input.file_stem().unwrap_or(input.as_os_str());
        let ext = match job.format {
            Some(f) => extension(f),
            None => input.extension().and_then(|e| e.to_str()).unwrap_or("png"),
        };
        job.output.join(stem).with_extension(ext)
    } else {
        job.output.clone()
    };
    let format = match (imageio::output_format(&dst), job.format) {
        (Ok(f), _) => f,
        (Err(_), Some(f)) => f,
        (Err(e), None) => return Err(e),
    };
    Ok(vec![Item {
        src: input.clone(),
        dst,
        format,
    }])
}

/// What a job tells its caller as it goes. Called from the job's threads.
pub trait Events: Sync {
    /// Tiles of `item` done so far (starts at 0 of `total`, ends at `total` of `total`).
    fn progress(&self, _item: &Item, _done: usize, _total: usize) {}
    /// Something the upscale had to do differently, such as an out-of-memory retry with
    /// smaller tiles.
    fn note(&self, _item: &Item, _message: &str) {}
    /// The network's output is resampled to the asked-for size.
    fn resizing(&self, _item: &Item, _from: (u32, u32), _to: (u32, u32)) {}
    /// `item` is written, or failed with this error (nothing was written then).
    fn finished(&self, _item: &Item, _result: &Result<()>) {}
}

/// How a job went.
#[derive(Debug, Default)]
pub struct Summary {
    pub written: Vec<PathBuf>,
    pub failed: Vec<(PathBuf, Error)>,
    /// Inputs left alone because their output exists (`skip_existing`).
    pub skipped: Vec<PathBuf>,
}

impl Summary {
    /// One line per failure and the counts, for the end of a job.
    pub fn report(&self) -> String {
        let mut s = String::new();
        for (p, e) in &self.failed {
            s.push_str(&format!("  {}: {e}\n", p.display()));
        }
        s.push_str(&format!(
            "{} written, {} failed, {} skipped (output exists)",
            self.written.len(),
            self.failed.len(),
            self.skipped.len()
        ));
        s
    }
}

/// The largest image side each output format can hold.
fn max_side(format: ImageFormat) -> u32 {
    match format {
        ImageFormat::WebP => 16383,
        ImageFormat::Jpeg => 65535,
        _ => u32::MAX,
    }
}

/// Refuse, before any GPU work, an output the format cannot hold.
fn check_output(item: &Item, (w, h): (u32, u32)) -> Result<()> {
    let max = max_side(item.format);
    if w == 0 || h == 0 || w > max || h > max {
        return Err(Error::image(
            &item.dst,
            format!(
                "a {w}x{h} output does not fit {} (at most {max} pixels a side): pick another format or a smaller size",
                extension(item.format)
            ),
        ));
    }
    Ok(())
}

type Loaded = (usize, Result<imageio::Decoded>);
type Upscaled = (usize, Result<(DynamicImage, Option<Vec<u8>>)>);

/// Run `job` on `upscalers` (one worker each; several on one adapter are allowed). Failures
/// of single images are in the summary; an error is returned only when the job cannot start.
pub fn run(job: &Job, upscalers: &[&Upscaler], events: &dyn Events) -> Result<Summary> {
    if upscalers.is_empty() {
        return Err(Error::Invalid("a job needs at least one upscaler".into()));
    }
    let all = items(job)?;
    let (done, items): (Vec<Item>, Vec<Item>) = all
        .into_iter()
        .partition(|it| job.skip_existing && it.dst.is_file());
    let results: Mutex<Vec<Option<Result<()>>>> =
        Mutex::new((0..items.len()).map(|_| None).collect());
    let finish = |i: usize, r: Result<()>| {
        events.finished(&items[i], &r);
        results.lock().expect("results")[i] = Some(r);
    };
    let next = AtomicUsize::new(0);
    let (load_tx, load_rx) = mpsc::sync_channel::<Loaded>(upscalers.len() + 1);
    let (save_tx, save_rx) = mpsc::sync_channel::<Upscaled>(job.save_threads.max(1));
    let load_rx = Mutex::new(load_rx);
    let save_rx = Mutex::new(save_rx);
    std::thread::scope(|scope| {
        for _ in 0..job.load_threads.max(1) {
            let tx = load_tx.clone();
            let (items, next) = (&items, &next);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                if tx
                    .send((i, imageio::read_with_metadata(&item.src)))
                    .is_err()
                {
                    break;
                }
            });
        }
        drop(load_tx);
        for up in upscalers {
            let tx = save_tx.clone();
            let (items, load_rx, finish) = (&items, &load_rx, &finish);
            scope.spawn(move || loop {
                let msg = load_rx.lock().expect("load queue").recv();
                let Ok((i, decoded)) = msg else { break };
                let item = &items[i];
                // Ok(None): written here (streamed); Ok(Some(..)): for the save threads.
                let out = decoded.and_then(|d| {
                    let (w, h) = (d.image.width(), d.image.height());
                    let target = job.size.target(w, h, up.scale());
                    check_output(item, target)?;
                    let mut progress = |done, total| events.progress(item, done, total);
                    let result = upscale(job, up, item, &d, target, &mut progress, events);
                    for n in up.take_notes() {
                        events.note(item, &n);
                    }
                    result.map_err(|e| match e {
                        Error::Invalid(m) => Error::image(&item.src, m),
                        other => other,
                    })
                });
                match out {
                    Ok(Some(o)) => {
                        if tx.send((i, Ok(o))).is_err() {
                            break;
                        }
                    }
                    Ok(None) => finish(i, Ok(())),
                    Err(e) => finish(i, Err(e)),
                }
            });
        }
        drop(save_tx);
        for _ in 0..job.save_threads.max(1) {
            let (items, save_rx, finish) = (&items, &save_rx, &finish);
            scope.spawn(move || loop {
                let msg = save_rx.lock().expect("save queue").recv();
                let Ok((i, out)) = msg else { break };
                let item = &items[i];
                let r = out.and_then(|(img, icc)| {
                    crate::batch::prepare(&item.dst)?;
                    imageio::write_with(
                        &img,
                        &item.dst,
                        item.format,
                        job.compression,
                        icc.as_deref(),
                    )
                });
                finish(i, r);
            });
        }
    });
    let mut summary = Summary {
        skipped: done.into_iter().map(|it| it.src).collect(),
        ..Summary::default()
    };
    for (item, r) in items.iter().zip(results.into_inner().expect("results")) {
        match r {
            Some(Ok(())) => summary.written.push(item.dst.clone()),
            Some(Err(e)) => summary.failed.push((item.src.clone(), e)),
            None => summary.failed.push((
                item.src.clone(),
                Error::Invalid("not processed (a worker stopped)".into()),
            )),
        }
    }
    Ok(summary)
}

/// Upscale one decoded image to `target`. 8-bit RGB to PNG at the model's size streams band
/// by band into the file (`None`: written; a 24000x16000 PNG is 1.1 GB in 8 bits, 4.4 in
/// f32); other 8-bit RGB is held in 8 bits; TTA averages in f32, and alpha, gray and 16-bit go
/// through f32 to keep their format. The rest is resampled to `target` when the model's
/// scale differs and handed back for the save threads.
fn upscale(
    job: &Job,
    up: &Upscaler,
    item: &Item,
    d: &imageio::Decoded,
    target: (u32, u32),
    progress: &mut dyn FnMut(usize, usize),
    events: &dyn Events,
) -> Result<Option<(DynamicImage, Option<Vec<u8>>)>> {
    let rgb8 = d
        .image
        .as_rgb8()
        .filter(|_| !job.tta && up.can_stream(&d.image));
    let model = Size::Model.target(d.image.width(), d.image.height(), up.scale());
    if let (Some(rgb), ImageFormat::Png, true) = (rgb8, item.format, target == model) {
        crate::batch::prepare(&item.dst)?;
        imageio::write_png_rows(
            &item.dst,
            target.0,
            target.1,
            job.compression,
            d.icc.as_deref(),
            |sink| up.upscale_rgb8_rows(rgb, progress, sink),
        )?;
        return Ok(None);
    }
    let img = match rgb8 {
        Some(rgb) => DynamicImage::ImageRgb8(up.upscale_rgb8(rgb, progress)?),
        None => up.upscale_image_with(&d.image, job.tta, progress)?,
    };
    let from = (img.width(), img.height());
    let img = if from != target {
        events.resizing(item, from, target);
        img.resize_exact(target.0, target.1, image::imageops::FilterType::CatmullRom)
    } else {
        img
    };
    Ok(Some((img, d.icc.clone())))
}

/// Where realesrgan-ncnn-vulkan and upscayl-bin find model NAME in folder DIR for scale S:
/// `DIR/NAME-xS.param` if it exists, else `DIR/NAME.param`. A relative DIR that does not exist
/// is tried again next to the executable, as they do.
pub fn find_model(dir: &Path, name: &str, scale: u32) -> Result<PathBuf> {
    let mut dirs = vec![dir.to_path_buf()];
    if dir.is_relative() {
        if let Some(exe_dir) = std::env::current_exe()
            .ok()
            .and_then(|e| e.canonicalize().ok())
            .and_then(|e| e.parent().map(Path::to_path_buf))
        {
            dirs.push(exe_dir.join(dir));
        }
    }
    for d in &dirs {
        for file in [format!("{name}-x{scale}.param"), format!("{name}.param")] {
            let p = d.join(file);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let tried: Vec<String> = dirs
        .iter()
        .map(|d| d.join(format!("{name}.param")).display().to_string())
        .collect();
    Err(Error::Invalid(format!(
        "model `{name}` not found: no {name}-x{scale}.param or {name}.param in {} (tried {})",
        dir.display(),
        tried.join(", ")
    )))
}
