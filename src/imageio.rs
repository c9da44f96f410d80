//! Image decoding, format restoration and atomic encoding.

use std::path::Path;

use image::{DynamicImage, ImageFormat, Rgb32FImage};

use crate::error::{Error, Result};

/// File extensions refqsr reads and writes.
pub const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp"];

/// Whether `path` has an extension refqsr handles.
pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The encoder for an output path, from its extension.
pub fn output_format(path: &Path) -> Result<ImageFormat> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("png") => Ok(ImageFormat::Png),
        Some("jpg") | Some("jpeg") => Ok(ImageFormat::Jpeg),
        Some("webp") => Ok(ImageFormat::WebP),
        _ => Err(Error::image(
            path,
            "unsupported output extension (use .png, .jpg or .webp)",
        )),
    }
}

/// A decoded image with what its file said about it beyond the pixels.
pub struct Decoded {
    /// The pixels, already turned upright by the file's EXIF orientation.
    pub image: DynamicImage,
    /// The embedded ICC colour profile, if any (written back into PNG, JPEG and WebP outputs:
    /// refqsr works on the encoded values and does not convert colour spaces).
    pub icc: Option<Vec<u8>>,
}

/// Decode an image file (format from its content, not its name), upright.
pub fn read(path: &Path) -> Result<DynamicImage> {
    read_with_metadata(path).map(|d| d.image)
}

/// The decoder limits against decompression bombs: a file may claim any size, but refqsr
/// decodes at most this many pixels a side and allocates at most this much for one image.
pub fn limits() -> image::Limits {
    let mut l = image::Limits::default();
    l.max_image_width = Some(1 << 16);
    l.max_image_height = Some(1 << 16);
    l.max_alloc = Some(2 << 30);
    l
}

/// [`read`], keeping the ICC profile. EXIF orientation is applied, so a portrait phone photo
/// comes out portrait.
pub fn read_with_metadata(path: &Path) -> Result<Decoded> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    decode(reader, path)
}

/// Decode an image held in memory (`origin` names it in errors), as [`read_with_metadata`].
pub fn decode_bytes(bytes: &[u8], origin: &Path) -> Result<Decoded> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::io(origin, e))?;
    decode(reader, origin)
}

fn decode<R: std::io::BufRead + std::io::Seek>(
    mut reader: image::ImageReader<R>,
    path: &Path,
) -> Result<Decoded> {
    use image::ImageDecoder;
    reader.limits(limits());
    let bad = |e: image::ImageError| Error::image(path, format!("cannot decode: {e}"));
    let mut decoder = reader.into_decoder().map_err(bad)?;
    // Metadata that cannot be read is not worth failing an image for.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let icc = decoder.icc_profile().ok().flatten();
    let mut image = DynamicImage::from_decoder(decoder).map_err(bad)?;
    image.apply_orientation(orientation);
    Ok(Decoded { image, icc })
}

/// How hard the encoder works, as realesrgan-ncnn-vulkan's and upscayl-bin's `-c`: 0 (the
/// default) is the best picture, 100 the smallest file. JPEG quality is `100 - c` (at least
/// 1); PNG stays lossless and `c` picks the zlib effort (0 fast, 1-50 balanced, 51-100
/// best); WebP output is lossless (the image crate has no lossy WebP encoder), so `c` does
/// not change it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compression(pub u8);

impl Compression {
    fn jpeg_quality(self) -> u8 {
        if self.0 == 0 {
            95
        } else {
            100u8.saturating_sub(self.0).max(1)
        }
    }

    fn png(self) -> image::codecs::png::CompressionType {
        use image::codecs::png::CompressionType;
        match self.0 {
            0 => CompressionType::Fast,
            1..=50 => CompressionType::Default,
            _ => CompressionType::Best,
        }
    }

    /// [`Compression::png`] for the `png` crate's streaming encoder (the same levels).
    fn png_stream(self) -> png::Compression {
        match self.0 {
            0 => png::Compression::Fast,
            1..=50 => png::Compression::Balanced,
            _ => png::Compression::High,
        }
    }
}

/// Give the upscaled colour the input's channel layout and depth: alpha (upscaled bicubic),
/// grayscale and 16 bits per channel are kept.
pub fn restore_format(input: &DynamicImage, rgb: Rgb32FImage) -> DynamicImage {
    let color = input.color();
    let sixteen = color.bytes_per_pixel() / color.channel_count() >= 2;
    let (w, h) = rgb.dimensions();
    let mut rgb = rgb;
    for v in rgb.iter_mut() {
        *v = v.clamp(0.0, 1.0);
    }
    let out = if color.has_alpha() {
        let rgba = input.to_rgba32f();
        let alpha = image::ImageBuffer::<image::Luma<f32>, Vec<f32>>::from_fn(
            rgba.width(),
            rgba.height(),
            |x, y| image::Luma([rgba.get_pixel(x, y)[3]]),
        );
        let alpha = image::imageops::resize(&alpha, w, h, image::imageops::FilterType::CatmullRom);
        let joined = image::Rgba32FImage::from_fn(w, h, |x, y| {
            let c = rgb.get_pixel(x, y);
            image::Rgba([c[0], c[1], c[2], alpha.get_pixel(x, y)[0].clamp(0.0, 1.0)])
        });
        DynamicImage::ImageRgba32F(joined)
    } else {
        DynamicImage::ImageRgb32F(rgb)
    };
    match (color.has_color(), color.has_alpha(), sixteen) {
        (true, false, false) => DynamicImage::ImageRgb8(out.to_rgb8()),
        (true, true, false) => DynamicImage::ImageRgba8(out.to_rgba8()),
        (true, false, true) => DynamicImage::ImageRgb16(out.to_rgb16()),
        (true, true, true) => DynamicImage::ImageRgba16(out.to_rgba16()),
        (false, false, false) => DynamicImage::ImageLuma8(out.to_luma8()),
        (false, true, false) => DynamicImage::ImageLumaA8(out.to_luma_alpha8()),
        (false, false, true) => DynamicImage::ImageLuma16(out.to_luma16()),
        (false, true, true) => DynamicImage::ImageLumaA16(out.to_luma_alpha16()),
    }
}

/// Encode `img` to `path` through a temporary file in the same folder, renamed into place
/// only once it is complete: a failure never leaves a partial file behind.
pub fn write(img: &DynamicImage, path: &Path, format: ImageFormat) -> Result<()> {
    write_with(img, path, format, Compression::default(), None)
}

/// [`write`] with an encoder effort and an ICC profile to embed.
pub fn write_with(
    img: &DynamicImage,
    path: &Path,
    format: ImageFormat,
    compression: Compression,
    icc: Option<&[u8]>,
) -> Result<()> {
    use image::ImageEncoder;
    // JPEG holds neither alpha nor 16 bits; WebP (lossless) holds 8-bit RGB(A).
    let converted;
    let img = match format {
        ImageFormat::Jpeg if img.color().has_color() => {
            converted = DynamicImage::ImageRgb8(img.to_rgb8());
            &converted
        }
        ImageFormat::Jpeg => {
            converted = DynamicImage::ImageLuma8(img.to_luma8());
            &converted
        }
        ImageFormat::WebP if img.color().has_alpha() => {
            converted = DynamicImage::ImageRgba8(img.to_rgba8());
            &converted
        }
        ImageFormat::WebP => {
            converted = DynamicImage::ImageRgb8(img.to_rgb8());
            &converted
        }
        _ => img,
    };
    let failed = |e: image::ImageError| Error::image(path, format!("cannot encode: {e}"));
    // An encoder that cannot embed a profile still writes the picture.
    fn with_icc<E: ImageEncoder>(mut e: E, icc: Option<&[u8]>) -> E {
        if let Some(p) = icc {
            let _ = e.set_icc_profile(p.to_vec());
        }
        e
    }
    atomic_write(path, |w| match format {
        ImageFormat::Jpeg => img
            .write_with_encoder(with_icc(
                image::codecs::jpeg::JpegEncoder::new_with_quality(w, compression.jpeg_quality()),
                icc,
            ))
            .map_err(failed),
        ImageFormat::Png => img
            .write_with_encoder(with_icc(
                image::codecs::png::PngEncoder::new_with_quality(
                    w,
                    compression.png(),
                    image::codecs::png::FilterType::Adaptive,
                ),
                icc,
            ))
            .map_err(failed),
        ImageFormat::WebP => img
            .write_with_encoder(with_icc(
                image::codecs::webp::WebPEncoder::new_lossless(w),
                icc,
            ))
            .map_err(failed),
        _ => img.write_to(w, format).map_err(failed),
    })
}

/// Write an 8-bit RGB PNG of `width` x `height` row by row: `fill` gets a sink taking the
/// next whole rows, in order, and the encoder compresses them as they come, so the image is
/// never held whole. Atomic like [`write`]: a failure in `fill` or a short image leaves no
/// file.
pub fn write_png_rows(
    path: &Path,
    width: u32,
    height: u32,
    compression: Compression,
    icc: Option<&[u8]>,
    fill: impl FnOnce(&mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()>,
) -> Result<()> {
    let failed = |e: png::EncodingError| Error::image(path, format!("cannot encode: {e}"));
    atomic_write(path, |w| {
        let mut info = png::Info::with_size(width, height);
        info.color_type = png::ColorType::Rgb;
        info.bit_depth = png::BitDepth::Eight;
        info.icc_profile = icc.map(|p| std::borrow::Cow::Owned(p.to_vec()));
        let mut encoder = png::Encoder::with_info(w, info).map_err(failed)?;
        encoder.set_compression(compression.png_stream());
        let mut writer = encoder.write_header().map_err(failed)?;
        let mut stream = writer.stream_writer().map_err(failed)?;
        let row = width as usize * 3;
        let mut written = 0usize;
        fill(&mut |rows: &[u8]| {
            if rows.len() % row != 0 || written + rows.len() / row > height as usize {
                return Err(Error::image(path, "rows do not fit the image"));
            }
            std::io::Write::write_all(&mut stream, rows).map_err(|e| Error::io(path, e))?;
            written += rows.len() / row;
            Ok(())
        })?;
        if written != height as usize {
            return Err(Error::image(
                path,
                format!("{written} of {height} rows were produced"),
            ));
        }
        stream.finish().map_err(failed)?;
        writer.finish().map_err(failed)
    })
}

/// Write `path` through a temporary file in the same folder, renamed into place only once
/// `fill` has succeeded and the data is on disk: a failure never leaves a partial file.
pub fn atomic_write(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<()>,
) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| Error::image(path, "output path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.refqsr-{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        let file = std::fs::File::create(&tmp).map_err(|e| Error::io(path, e))?;
        let mut w = std::io::BufWriter::new(file);
        fill(&mut w)?;
        let file = w
            .into_inner()
            .map_err(|e| Error::io(path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(path, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
