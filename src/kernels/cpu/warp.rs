//! CPU twin of `shaders/warp.wgsl` (RefER's alignment error, RefQSR Eqs. 6-7 at inference).

use crate::kernels::refer_prep::pooled;

/// `tap` of the shader: neighbours of `t` clamped to [0, last] along one axis, and the weight
/// of the second.
fn tap(t: f32, last: usize) -> (usize, usize, f32) {
    let c = t.max(0.0).min(last as f32);
    let f = c.floor();
    let lo = f as usize;
    (lo, (lo + 1).min(last), c - f)
}

fn lerp(a: f32, b: f32, t: f32) -> f32 {
    a + (b - a) * t
}

/// D = `fq` - `fr` warped by the cell matches `idx` `[n][cell]`, for `batch` windows of
/// `channels` x `h` x `w` features (C4HW), with the shader's operation order.
pub fn warp(
    fq: &[f32],
    fr: &[f32],
    idx: &[u32],
    batch: usize,
    channels: usize,
    h: usize,
    w: usize,
) -> Vec<f32> {
    const THIRD: f32 = 1.0 / 3.0;
    let (ph, pw) = pooled(h as u32, w as u32);
    let (ph, pw) = (ph as usize, pw as usize);
    let (groups, plane, cells) = (channels.div_ceil(4), h * w, ph * pw);
    let mut out = vec![f32::NAN; batch * groups * plane * 4];
    for n in 0..batch {
        let flow = |cx: usize, cy: usize| -> [f32; 2] {
            let j = (idx[n * cells + cy * pw + cx] as usize).min(cells - 1);
            let dx = (j % pw) as i32 - cx as i32;
            let dy = (j / pw) as i32 - cy as i32;
            [3.0 * dx as f32, 3.0 * dy as f32]
        };
        for p in 0..plane {
            let (x, y) = ((p % w) as f32, (p / w) as f32);
            // (x + 0.5) / 3 - 0.5, in the shader's exact form
            let (u0, u1, ua) = tap((x - 1.0) * THIRD, pw - 1);
            let (v0, v1, va) = tap((y - 1.0) * THIRD, ph - 1);
            let f: [f32; 2] = std::array::from_fn(|k| {
                let top = lerp(flow(u0, v0)[k], flow(u1, v0)[k], ua);
                let bottom = lerp(flow(u0, v1)[k], flow(u1, v1)[k], ua);
                lerp(top, bottom, va)
            });
            let (x0, x1, ax) = tap(x + f[0], w - 1);
            let (y0, y1, ay) = tap(y + f[1], h - 1);
            for g in 0..groups {
                let base = (n * groups + g) * plane;
                let at = |yy: usize, xx: usize, l: usize| fr[(base + yy * w + xx) * 4 + l];
                for l in 0..4 {
                    let upper = lerp(at(y0, x0, l), at(y0, x1, l), ax);
                    let lower = lerp(at(y1, x0, l), at(y1, x1, l), ax);
                    out[(base + p) * 4 + l] = fq[(base + p) * 4 + l] - lerp(upper, lower, ay);
                }
            }
        }
    }
    out
}
