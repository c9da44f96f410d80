//! Cutting an image into equal windows with a halo, and merging the results.
//!
//! The image is extended by `margin` pixels on each side by mirroring (reflect-101, repeated
//! for margins wider than the image); beyond that the network's own zero padding applies.
//! Windows into the extended image all have the same size, so one plan serves them all and
//! they batch into single dispatches. Each window is responsible for a core: the pixels at
//! least `halo` (the network's receptive-field radius) from any window edge that is not the
//! extended image's edge. Cores cover the image; where they overlap (the last window along an
//! axis is shifted back to end at the border rather than being ragged) the overlap is computed
//! twice from identical inputs and merging is a plain overwrite. So the output never depends
//! on the tile size: a window's core pixels see exactly what they would see in one window
//! spanning the whole extended image.

use image::Rgb32FImage;

/// One window along one axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First pixel of the window (negative inside the mirrored margin).
    pub start: isize,
    /// The core, in image pixels.
    pub core: (usize, usize),
}

/// One window of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    pub x: Span,
    pub y: Span,
}

/// The windows covering an image.
#[derive(Debug, Clone)]
pub struct Grid {
    pub width: usize,
    pub height: usize,
    /// Window size (the network's input size).
    pub window_w: usize,
    pub window_h: usize,
    pub halo: usize,
    pub margin: usize,
    pub tiles: Vec<Tile>,
}

/// Windows along one axis of `len` pixels: cores of at most `tile` pixels, `halo` each side,
/// image extended by `margin`. Returns the window size and the spans.
fn spans(len: usize, tile: usize, halo: usize, margin: usize) -> (usize, Vec<Span>) {
    let (len_i, m, h) = (len as isize, margin as isize, halo as isize);
    let extended = len + 2 * margin;
    if extended <= tile + 2 * halo {
        return (
            extended,
            vec![Span {
                start: -m,
                core: (0, len),
            }],
        );
    }
    // As few windows as cores of at most `tile` allow, then the smallest window size that
    // lets that many cover the image (edge cores are `size - halo - margin` wide, inner ones
    // `size - 2 halo`), so windows are balanced rather than one full and one mostly overlap.
    let n = (len + 2 * margin - 2 * halo).div_ceil(tile).max(2);
    let size = (len + 2 * margin + 2 * halo * (n - 1)).div_ceil(n);
    let s = size as isize;
    let mut out = vec![Span {
        start: -m,
        core: (0, (s - h - m) as usize),
    }];
    loop {
        let done = out.last().expect("first span").core.1 as isize;
        if done >= len_i {
            break;
        }
        let start = done - h;
        if start + s >= len_i + m {
            let start = len_i + m - s;
            out.push(Span {
                start,
                core: ((start + h) as usize, len),
            });
            break;
        }
        out.push(Span {
            start,
            core: (done as usize, (start + s - h) as usize),
        });
    }
    (size, out)
}

impl Grid {
    /// Windows with cores of about `tile` x `tile` covering a `width` x `height` image.
    pub fn new(width: usize, height: usize, tile: usize, halo: usize, margin: usize) -> Grid {
        assert!(width > 0 && height > 0 && tile > 0);
        let (window_w, xs) = spans(width, tile, halo, margin);
        let (window_h, ys) = spans(height, tile, halo, margin);
        let tiles = ys
            .iter()
            .flat_map(|&y| xs.iter().map(move |&x| Tile { x, y }))
            .collect();
        Grid {
            width,
            height,
            window_w,
            window_h,
            halo,
            margin,
            tiles,
        }
    }

    /// The network's input size: (height, width).
    pub fn input_size(&self) -> (usize, usize) {
        (self.window_h, self.window_w)
    }

    /// Write window `t` into `dst` (one C4HW batch item of 3 channels).
    pub fn extract(&self, img: &Rgb32FImage, t: Tile, dst: &mut [f32]) {
        let raw = img.as_raw();
        self.extract_with(t, dst, |s| [raw[s], raw[s + 1], raw[s + 2]]);
    }

    /// [`Grid::extract`] from 8-bit RGB, converted as `image` converts to f32 (`v / 255`), so
    /// the windows are those of the f32 image: the input need not be held in f32.
    pub fn extract_rgb8(&self, img: &image::RgbImage, t: Tile, dst: &mut [f32]) {
        let raw = img.as_raw();
        let f = |v: u8| v as f32 / 255.0;
        self.extract_with(t, dst, |s| [f(raw[s]), f(raw[s + 1]), f(raw[s + 2])]);
    }

    /// Fill window `t` from `pixel(i)`, `i` the offset of an RGB pixel in the image's raw data.
    fn extract_with(&self, t: Tile, dst: &mut [f32], pixel: impl Fn(usize) -> [f32; 3]) {
        let (ih, iw) = self.input_size();
        assert_eq!(dst.len(), ih * iw * 4);
        for y in 0..ih {
            let sy = mirror(t.y.start + y as isize, self.height);
            for x in 0..iw {
                let sx = mirror(t.x.start + x as isize, self.width);
                let d = (y * iw + x) * 4;
                dst[d..d + 3].copy_from_slice(&pixel((sy * self.width + sx) * 3));
                dst[d + 3] = 0.0;
            }
        }
    }

    /// Every window of `img`, one C4HW batch item each, in tile order.
    pub fn extract_all(&self, img: &Rgb32FImage) -> Vec<f32> {
        let (ih, iw) = self.input_size();
        let mut out = vec![0f32; self.tiles.len() * ih * iw * 4];
        for (t, dst) in self.tiles.iter().zip(out.chunks_mut(ih * iw * 4)) {
            self.extract(img, *t, dst);
        }
        out
    }

    /// Copy the core of an upscaled window (one C4HW batch item, `scale` times the window)
    /// into `out`.
    pub fn merge(&self, out: &mut Rgb32FImage, t: Tile, scale: usize, src: &[f32]) {
        let ow = out.width() as usize;
        let raw: &mut [f32] = out;
        let y0 = t.y.core.0 * scale;
        self.merge_with(t, scale, src, |y, x, p| {
            let d = ((y0 + y) * ow + x) * 3;
            raw[d..d + 3].copy_from_slice(p);
        });
    }

    /// The tiles in rows: each run of tiles sharing a vertical span (tiles are row-major).
    pub fn tile_rows(&self) -> impl Iterator<Item = &[Tile]> {
        self.tiles.chunk_by(|a, b| a.y == b.y)
    }

    /// [`Grid::merge`] into an 8-bit RGB band holding the output rows of `t`'s row of tiles
    /// (`band_w` pixels wide, starting at output row `t.y.core.0 * scale`), rounded as `image`
    /// converts f32 to 8 bits, so the band's rows are those of the merged f32 image.
    pub fn merge_rgb8_band(
        &self,
        band: &mut [u8],
        band_w: usize,
        t: Tile,
        scale: usize,
        src: &[f32],
    ) {
        let to8 = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
        self.merge_with(t, scale, src, |y, x, p| {
            let d = (y * band_w + x) * 3;
            band[d] = to8(p[0]);
            band[d + 1] = to8(p[1]);
            band[d + 2] = to8(p[2]);
        });
    }

    /// Hand each core pixel of an upscaled window (one C4HW batch item, `scale` times the
    /// window) to `put(row within the core, output column, rgb)`.
    fn merge_with(
        &self,
        t: Tile,
        scale: usize,
        src: &[f32],
        mut put: impl FnMut(usize, usize, &[f32]),
    ) {
        let (ih, iw) = self.input_size();
        let sw = iw * scale;
        assert_eq!(src.len(), ih * scale * sw * 4);
        let (ox, oy) = (
            (t.x.core.0 as isize - t.x.start) as usize * scale,
            (t.y.core.0 as isize - t.y.start) as usize * scale,
        );
        for y in 0..(t.y.core.1 - t.y.core.0) * scale {
            for x in 0..(t.x.core.1 - t.x.core.0) * scale {
                let s = ((y + oy) * sw + x + ox) * 4;
                put(y, t.x.core.0 * scale + x, &src[s..s + 3]);
            }
        }
    }
}

/// Windows merged by weights that fall off linearly towards every window edge inside the
/// image, over the overlap of two windows (`2 halo` input pixels): where the halo is shorter
/// than the network's reach (RefQSR's patches), each window's output is least accurate near
/// its edges, and neighbouring windows may run at different precisions, so a hard cut at the
/// core's edge leaves a visible step. Each output pixel is the weighted mean of the windows
/// covering it; a core pixel is at least `halo` inside its window, so its weight is at least
/// one half, and pixels beyond the reach of any neighbour keep their window's value exactly.
pub struct Feathered<'a> {
    grid: &'a Grid,
    scale: usize,
    width: usize,
    height: usize,
    /// Weighted sums (RGB) and the summed weights, per output pixel.
    sum: Vec<f32>,
    weight: Vec<f32>,
}

impl<'a> Feathered<'a> {
    /// An empty `scale`-times output of `grid`'s image.
    pub fn new(grid: &'a Grid, scale: usize) -> Feathered<'a> {
        let (width, height) = (grid.width * scale, grid.height * scale);
        Feathered {
            grid,
            scale,
            width,
            height,
            sum: vec![0.0; width * height * 3],
            weight: vec![0.0; width * height],
        }
    }

    /// Add the upscaled window `t` (one C4HW batch item, `scale` times the window).
    pub fn add(&mut self, t: Tile, src: &[f32]) {
        let (grid, scale) = (self.grid, self.scale);
        let (ih, iw) = grid.input_size();
        let sw = iw * scale;
        assert_eq!(src.len(), ih * scale * sw * 4);
        let wx = ramps(t.x, iw, grid.width, grid.halo, grid.margin, scale);
        let wy = ramps(t.y, ih, grid.height, grid.halo, grid.margin, scale);
        let x0 = t.x.start * scale as isize;
        let y0 = t.y.start * scale as isize;
        for (y, &ry) in wy.iter().enumerate() {
            let oy = y0 + y as isize;
            if ry == 0.0 || oy < 0 || oy >= self.height as isize {
                continue;
            }
            for (x, &rx) in wx.iter().enumerate() {
                let ox = x0 + x as isize;
                if rx == 0.0 || ox < 0 || ox >= self.width as isize {
                    continue;
                }
                let w = rx * ry;
                let d = oy as usize * self.width + ox as usize;
                let s = (y * sw + x) * 4;
                for c in 0..3 {
                    self.sum[d * 3 + c] += w * src[s + c];
                }
                self.weight[d] += w;
            }
        }
    }

    /// The merged image.
    pub fn finish(self) -> Rgb32FImage {
        let mut out = self.sum;
        for (p, &w) in out.chunks_mut(3).zip(&self.weight) {
            debug_assert!(w > 0.0, "every output pixel is in some window's core");
            for v in p {
                *v /= w;
            }
        }
        Rgb32FImage::from_raw(self.width as u32, self.height as u32, out)
            .expect("the buffer has the image's size")
    }
}

/// The weight of each output pixel of a window along one axis (`size` input pixels over an
/// image `len` long): 1, falling linearly to 0 at each window edge that lies inside the image
/// over `2 halo` input pixels (measured at the pixels' centres).
fn ramps(s: Span, size: usize, len: usize, halo: usize, margin: usize, scale: usize) -> Vec<f32> {
    let ramp = (2 * halo * scale) as f32;
    let first = s.start == -(margin as isize);
    let last = s.start + size as isize == (len + margin) as isize;
    (0..size * scale)
        .map(|o| {
            let mut w = 1f32;
            if ramp > 0.0 {
                if !first {
                    w = w.min((o as f32 + 0.5) / ramp);
                }
                if !last {
                    w = w.min(((size * scale - o) as f32 - 0.5) / ramp);
                }
            }
            w
        })
        .collect()
}

/// Reflect-101 index into `0..n` for any `i` (periodic, so any margin works).
pub fn mirror(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    (if m >= n as isize { period - m } else { m }) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_reflects_without_repeating_the_edge() {
        let got: Vec<usize> = (-4..8).map(|i| mirror(i, 4)).collect();
        assert_eq!(got, vec![2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1]);
        assert!((-50..50).all(|i| mirror(i, 1) == 0));
        assert!((-50..50).all(|i| mirror(i, 3) < 3));
    }

    /// Window `k` of `grid` upscaled by `scale`, each pixel `value(k, output x, output y)`.
    fn window_output(
        grid: &Grid,
        k: usize,
        scale: usize,
        value: impl Fn(usize, isize, isize) -> f32,
    ) -> Vec<f32> {
        let (ih, iw) = grid.input_size();
        let t = grid.tiles[k];
        let mut out = vec![f32::NAN; ih * scale * iw * scale * 4];
        for y in 0..ih * scale {
            for x in 0..iw * scale {
                let (ox, oy) = (
                    t.x.start * scale as isize + x as isize,
                    t.y.start * scale as isize + y as isize,
                );
                let p = (y * iw * scale + x) * 4;
                out[p..p + 3].fill(value(k, ox, oy));
                out[p + 3] = -1.0;
            }
        }
        out
    }

    #[test]
    fn feathering_agreeing_windows_changes_nothing() {
        for (w, h, halo, scale) in [
            (150, 110, 3, 4),
            (97, 41, 3, 2),
            (20, 20, 3, 4),
            (60, 33, 0, 3),
        ] {
            let grid = Grid::new(w, h, 48, halo, 0);
            let mut f = Feathered::new(&grid, scale);
            let truth = |_, x: isize, y: isize| (x * 7 + y * 13) as f32 / 1000.0;
            for k in 0..grid.tiles.len() {
                f.add(grid.tiles[k], &window_output(&grid, k, scale, truth));
            }
            let out = f.finish();
            for (x, y, p) in out.enumerate_pixels() {
                let want = truth(0, x as isize, y as isize);
                assert!(
                    (p[0] - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{w}x{h} at {x},{y}"
                );
            }
        }
    }

    #[test]
    fn feathering_keeps_lone_pixels_and_averages_at_the_core_edge() {
        let (scale, halo) = (4, 3);
        let grid = Grid::new(150, 60, 48, halo, 0);
        let mut f = Feathered::new(&grid, scale);
        // window k says k everywhere
        for k in 0..grid.tiles.len() {
            f.add(
                grid.tiles[k],
                &window_output(&grid, k, scale, |k, _, _| k as f32),
            );
        }
        let out = f.finish();
        let (_, iw) = grid.input_size();
        let covering = |ox: usize, oy: usize| -> Vec<usize> {
            (0..grid.tiles.len())
                .filter(|&k| {
                    let t = grid.tiles[k];
                    let inside = |s: Span, o: usize, n: usize| {
                        let o = o as isize;
                        o >= s.start * scale as isize && o < (s.start + n as isize) * scale as isize
                    };
                    inside(t.x, ox, iw) && inside(t.y, oy, grid.input_size().0)
                })
                .collect()
        };
        let row = 100; // inside the first row of windows' cores, beyond the second's reach
        assert_eq!(grid.tiles.len(), 6, "3 x 2 windows");
        for x in 0..150 * scale {
            let c = covering(x, row);
            let v = out.get_pixel(x as u32, row as u32)[0];
            if c.len() == 1 {
                assert_eq!(v, c[0] as f32, "a pixel one window covers keeps its value");
            } else {
                assert!(
                    v > c[0] as f32 && v < c[c.len() - 1] as f32,
                    "{x}: {v} {c:?}"
                );
            }
        }
        // where two cores meet the windows weigh the same
        let edge = grid.tiles[0].x.core.1 * scale;
        let mid = (out.get_pixel(edge as u32 - 1, row as u32)[0]
            + out.get_pixel(edge as u32, row as u32)[0])
            / 2.0;
        assert!((mid - 0.5).abs() < 1e-6, "{mid}");
    }

    #[test]
    fn cores_cover_the_image_and_keep_the_halo() {
        for len in [1, 2, 7, 33, 64, 100, 257] {
            for tile in [1, 3, 8, 32, 500] {
                for (halo, margin) in [(0, 0), (2, 0), (5, 2), (21, 21), (21, 4)] {
                    let (size, spans) = spans(len, tile, halo, margin);
                    let mut covered = vec![false; len];
                    for s in &spans {
                        assert!(s.start >= -(margin as isize));
                        assert!(s.start + size as isize <= (len + margin) as isize);
                        assert!(s.core.0 < s.core.1 && s.core.1 <= len);
                        // a core pixel is `halo` inside the window unless that window edge
                        // is the extended image's edge
                        let first = s.core.0 as isize;
                        let last = s.core.1 as isize - 1;
                        assert!(first - s.start >= halo as isize || s.start == -(margin as isize));
                        assert!(
                            s.start + size as isize - 1 - last >= halo as isize
                                || s.start + size as isize == (len + margin) as isize
                        );
                        covered[s.core.0..s.core.1]
                            .iter_mut()
                            .for_each(|c| *c = true);
                    }
                    assert!(
                        covered.iter().all(|&c| c),
                        "len {len} tile {tile} halo {halo} margin {margin}"
                    );
                }
            }
        }
    }
}
