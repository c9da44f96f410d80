//! Cutting an image into equal tiles with a mirrored halo, and merging the results.
//!
//! Every tile has the same core size (the image size where the image is smaller), so one plan
//! serves them all and tiles can be batched into a single dispatch. Instead of ragged
//! remainder tiles, the last tile along an axis is shifted back to end at the image edge and
//! overlaps its neighbour; the overlap is computed twice with identical inputs, so merging is
//! a plain overwrite. Each tile is read with a halo of at least the network's receptive-field
//! radius, taken from the image mirrored at its borders (reflect-101, repeated for halos wider
//! than the image), so the output never depends on the tile size.

use image::Rgb32FImage;

/// A tile's core: the pixels it is responsible for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    pub x: usize,
    pub y: usize,
}

/// The tiles covering an image.
#[derive(Debug, Clone)]
pub struct Grid {
    pub width: usize,
    pub height: usize,
    /// Core size of every tile.
    pub tile_w: usize,
    pub tile_h: usize,
    pub halo: usize,
    pub tiles: Vec<Tile>,
}

impl Grid {
    /// Tiles of at most `tile` x `tile` covering a `width` x `height` image.
    pub fn new(width: usize, height: usize, tile: usize, halo: usize) -> Grid {
        assert!(width > 0 && height > 0 && tile > 0);
        // As many tiles as `tile` needs, then shrunk to share the length evenly.
        let even = |len: usize| len.div_ceil(len.div_ceil(tile));
        let (tile_w, tile_h) = (even(width), even(height));
        let starts = |len: usize, t: usize| -> Vec<usize> {
            (0..len.div_ceil(t)).map(|i| (i * t).min(len - t)).collect()
        };
        let xs = starts(width, tile_w);
        let ys = starts(height, tile_h);
        let tiles = ys
            .iter()
            .flat_map(|&y| xs.iter().map(move |&x| Tile { x, y }))
            .collect();
        Grid {
            width,
            height,
            tile_w,
            tile_h,
            halo,
            tiles,
        }
    }

    /// Size of a tile with its halo: the network's input size.
    pub fn input_size(&self) -> (usize, usize) {
        (self.tile_h + 2 * self.halo, self.tile_w + 2 * self.halo)
    }

    /// Write tile `t` with its halo into `dst` (one C4HW batch item of 3 channels).
    pub fn extract(&self, img: &Rgb32FImage, t: Tile, dst: &mut [f32]) {
        let (ih, iw) = self.input_size();
        assert_eq!(dst.len(), ih * iw * 4);
        let h = self.halo as isize;
        let raw = img.as_raw();
        for y in 0..ih {
            let sy = mirror(t.y as isize + y as isize - h, self.height);
            for x in 0..iw {
                let sx = mirror(t.x as isize + x as isize - h, self.width);
                let s = (sy * self.width + sx) * 3;
                let d = (y * iw + x) * 4;
                dst[d..d + 3].copy_from_slice(&raw[s..s + 3]);
                dst[d + 3] = 0.0;
            }
        }
    }

    /// Copy the core of an upscaled tile (one C4HW batch item, `scale` times the input size)
    /// into `out`.
    pub fn merge(&self, out: &mut Rgb32FImage, t: Tile, scale: usize, src: &[f32]) {
        let (ih, iw) = self.input_size();
        let (sh, sw) = (ih * scale, iw * scale);
        assert_eq!(src.len(), sh * sw * 4);
        let ow = out.width() as usize;
        let raw: &mut [f32] = out;
        let off = self.halo * scale;
        for y in 0..self.tile_h * scale {
            let dy = t.y * scale + y;
            for x in 0..self.tile_w * scale {
                let s = ((y + off) * sw + x + off) * 4;
                let d = (dy * ow + t.x * scale + x) * 3;
                raw[d..d + 3].copy_from_slice(&src[s..s + 3]);
            }
        }
    }
}

/// Reflect-101 index into `0..n` for any `i` (periodic, so any halo width works).
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

    #[test]
    fn grid_covers_every_pixel_with_equal_tiles() {
        for (w, h, t) in [(10, 7, 3), (5, 5, 8), (1, 1, 4), (17, 2, 16), (64, 33, 32)] {
            let g = Grid::new(w, h, t, 2);
            let mut covered = vec![0u32; w * h];
            for tile in &g.tiles {
                assert!(tile.x + g.tile_w <= w && tile.y + g.tile_h <= h);
                for y in tile.y..tile.y + g.tile_h {
                    for x in tile.x..tile.x + g.tile_w {
                        covered[y * w + x] += 1;
                    }
                }
            }
            assert!(covered.iter().all(|&c| c >= 1), "{w}x{h} tile {t}");
        }
    }
}
