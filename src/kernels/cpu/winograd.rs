//! CPU twins of the Winograd transform shaders (`winograd_input.wgsl`,
//! `winograd_output.wgsl`), with the same data layouts and transform order; the products in
//! between are the `gemm` twin's.

use super::conv::finish;
use super::gemm::gemm;
use super::Tensor;
use crate::kernels::winograd::{tiles, PackedWinograd, POS, TILE};

type V4 = [f32; 4];

fn add(a: V4, b: V4) -> V4 {
    std::array::from_fn(|i| a[i] + b[i])
}
fn sub(a: V4, b: V4) -> V4 {
    std::array::from_fn(|i| a[i] - b[i])
}
fn mul(s: f32, a: V4) -> V4 {
    a.map(|v| s * v)
}

/// `bt` of the shader.
fn bt(d: [V4; 6]) -> [V4; 6] {
    [
        add(sub(mul(4.0, d[0]), mul(5.0, d[2])), d[4]),
        add(add(sub(mul(-4.0, d[1]), mul(4.0, d[2])), d[3]), d[4]),
        add(sub(sub(mul(4.0, d[1]), mul(4.0, d[2])), d[3]), d[4]),
        add(add(sub(mul(-2.0, d[1]), d[2]), mul(2.0, d[3])), d[4]),
        add(sub(sub(mul(2.0, d[1]), d[2]), mul(2.0, d[3])), d[4]),
        add(sub(mul(4.0, d[1]), mul(5.0, d[3])), d[5]),
    ]
}

/// `at` of the shader.
fn at(m: [V4; 6]) -> [V4; 4] {
    [
        add(add(add(add(m[0], m[1]), m[2]), m[3]), m[4]),
        sub(add(sub(m[1], m[2]), mul(2.0, m[3])), mul(2.0, m[4])),
        add(add(add(m[1], m[2]), mul(4.0, m[3])), mul(4.0, m[4])),
        add(
            sub(add(sub(m[1], m[2]), mul(8.0, m[3])), mul(8.0, m[4])),
            m[5],
        ),
    ]
}

/// Step 1: V[((n * 36 + pos) * icg + ic) * tiles + t].
pub fn winograd_input(x: &Tensor) -> Vec<V4> {
    let mut v = vec![[f32::NAN; 4]; x.n * POS * x.groups() * tiles(x.h, x.w).1];
    winograd_input_into(x, &mut v, x.groups(), 0);
    v
}

/// Step 1 into a slice of a wider V: V[((n * 36 + pos) * vgroups + g0 + ic) * tiles + t], the
/// other channel groups left as they are (the shader's `vgroups` and `g0`).
pub fn winograd_input_into(x: &Tensor, v: &mut [V4], vgroups: usize, g0: usize) {
    let (tx, t_all) = tiles(x.h, x.w);
    let icg = x.groups();
    assert!(g0 + icg <= vgroups, "input groups past the end of V rows");
    assert_eq!(
        v.len(),
        x.n * POS * vgroups * t_all,
        "V size does not match"
    );
    for n in 0..x.n {
        for ic in 0..icg {
            for t in 0..t_all {
                let y0 = (t / tx * TILE) as isize - 1;
                let x0 = (t % tx * TILE) as isize - 1;
                let px = |yy: isize, xx: isize| -> V4 {
                    if yy >= 0 && yy < x.h as isize && xx >= 0 && xx < x.w as isize {
                        x.vec4(x.vec_index(n, ic, yy as usize, xx as usize))
                    } else {
                        [0.0; 4]
                    }
                };
                let rows: [[V4; 6]; 6] = std::array::from_fn(|r| {
                    bt(std::array::from_fn(|c| {
                        px(y0 + r as isize, x0 + c as isize)
                    }))
                });
                for col in 0..6 {
                    let c = bt(std::array::from_fn(|r| rows[r][col]));
                    for (i, ci) in c.iter().enumerate() {
                        v[((n * POS + i * 6 + col) * vgroups + g0 + ic) * t_all + t] = *ci;
                    }
                }
            }
        }
    }
}

/// Step 3: the output tiles, with the epilogue.
pub fn winograd_output(
    m: &[V4],
    p: &PackedWinograd,
    batch: usize,
    h: usize,
    w: usize,
    residual: Option<&Tensor>,
) -> Tensor {
    let (tx, t_all) = tiles(h, w);
    let (ocg, oc) = (p.ocg(), p.oc());
    let mut out = Tensor::poisoned(batch, oc, h, w);
    for n in 0..batch {
        for g in 0..ocg {
            for t in 0..t_all {
                let at_pos = |pos: usize| m[((n * POS + pos) * ocg + g) * t_all + t];
                let rows: [[V4; 4]; 6] =
                    std::array::from_fn(|r| at(std::array::from_fn(|c| at_pos(r * 6 + c))));
                let cols: [[V4; 4]; 4] =
                    std::array::from_fn(|c| at(std::array::from_fn(|r| rows[r][c])));
                let (y0, x0) = (t / tx * TILE, t % tx * TILE);
                for (r, y) in (y0..(y0 + TILE).min(h)).enumerate() {
                    for (c, x) in (x0..(x0 + TILE).min(w)).enumerate() {
                        let i = out.vec_index(n, g, y, x);
                        let res = residual.map(|t| t.vec4(i));
                        out.set_vec4(i, finish(&p.epilogue, oc, cols[c][r], g, res));
                    }
                }
            }
        }
    }
    out
}

/// The whole Winograd convolution, as the GPU runs it.
pub fn winograd(x: &Tensor, p: &PackedWinograd, residual: Option<&Tensor>) -> Tensor {
    assert_eq!(
        x.groups(),
        p.icg(),
        "input channels do not match the convolution"
    );
    let v = winograd_input(x);
    let m = gemm(&v, p.icg(), &p.gemm, x.n, tiles(x.h, x.w).1, None);
    winograd_output(&m, p, x.n, x.h, x.w, residual)
}
