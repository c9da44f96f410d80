//! Quality of the border treatments: SPAN x4 PSNR-Y on the shipped photos (bicubic-downscaled
//! x4) over the whole image (4-pixel shave) and over the outer 16-pixel band, for several
//! mirrored-border widths (0 = the network's own zero padding). Backs `DEFAULT_MIRROR`:
//! `cargo bench --bench border`.

use image::imageops::{self, FilterType};
fn luma(p: &image::Rgb<f32>) -> f64 {
    let [r, g, b] = p.0.map(|v| v.clamp(0.0, 1.0) as f64);
    (16.0 + 65.481 * r + 128.553 * g + 24.966 * b) / 255.0
}
fn psnr_region(
    a: &image::Rgb32FImage,
    b: &image::Rgb32FImage,
    shave: u32,
    band: Option<u32>,
) -> f64 {
    let (w, h) = a.dimensions();
    let mut se = 0.0;
    let mut n = 0.0;
    for y in shave..h - shave {
        for x in shave..w - shave {
            if let Some(bd) = band {
                let d = x.min(y).min(w - 1 - x).min(h - 1 - y);
                if d >= bd {
                    continue;
                }
            }
            let e = luma(a.get_pixel(x, y)) - luma(b.get_pixel(x, y));
            se += e * e;
            n += 1.0;
        }
    }
    10.0 * (1.0 / (se / n)).log10()
}
fn main() {
    let ctx = refqsr::gpu::Context::new(None).unwrap();
    for m in [0usize, 2, 4, 8, 21] {
        let mut line = format!("mirror {m:2}:");
        for img in ["astronaut", "coffee", "chelsea"] {
            let hr = image::open(format!("assets/images/{img}.png"))
                .unwrap()
                .to_rgb32f();
            let (w, h) = (hr.width() / 4 * 4, hr.height() / 4 * 4);
            let hr = imageops::crop_imm(&hr, 0, 0, w, h).to_image();
            let lr = imageops::resize(&hr, w / 4, h / 4, FilterType::CatmullRom);
            let g = refqsr::upscaler::load_graph(None, Some(4)).unwrap();
            let up = refqsr::Upscaler::with_graph(
                ctx.clone(),
                g,
                &refqsr::Options {
                    mirror: Some(m),
                    ..Default::default()
                },
            )
            .unwrap();
            let sr = up.upscale_rgb(&lr, &mut |_, _| {}).unwrap();
            line += &format!(
                "  {img} all {:.3} border16 {:.3}",
                psnr_region(&sr, &hr, 4, None),
                psnr_region(&sr, &hr, 0, Some(16))
            );
        }
        println!("{line}");
    }
}
