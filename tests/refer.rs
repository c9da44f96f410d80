//! RefER's four kernels (refer_prep, cost_volume, argmax, warp: RefQSR Eqs. 4-7 at inference)
//! against their CPU twins on random inputs: integer outputs bit for bit, the float ones
//! within the named tolerances below. Output buffers are poisoned first, so that an element a
//! kernel skips cannot pass.

mod common;

use common::{ctx, launch, Rng};
use refqsr::gpu::Context;
use refqsr::kernels::cpu::{self, Tensor};
use refqsr::kernels::{argmax, cost_volume, refer_prep, warp};

/// Share of `refer_prep` codes that must equal the twin's; the others may be one step off (the
/// driver's sqrt and division may round the last ulp of the float mean differently).
const PREP_SAME: f64 = 0.995;
/// Largest difference of `warp` from its twin, relative to the data range (fused
/// multiply-adds move the sample position by an ulp).
const WARP_TOL: f32 = 1e-5;
/// Poison of code words: four codes of -128, which symmetric codes (at most 127 in magnitude)
/// never produce.
const CODE_POISON: u32 = 0x8080_8080;

/// A pool buffer for `words` 32-bit outputs, every word of it (the pool may round the size
/// up) set to `poison`.
fn poisoned(ctx: &Context, words: usize, poison: u32) -> wgpu::Buffer {
    let b = ctx.acquire(words.max(1) as u64 * 4);
    let fill = vec![poison; (b.size() / 4) as usize];
    ctx.queue.write_buffer(&b, 0, bytemuck::cast_slice(&fill));
    b
}

fn read_words(ctx: &Context, b: &wgpu::Buffer, words: usize) -> Vec<u32> {
    bytemuck::cast_slice(&ctx.read(b, words as u64 * 4).unwrap()).to_vec()
}

fn read_f32(ctx: &Context, b: &wgpu::Buffer, n: usize) -> Vec<f32> {
    ctx.read(b, n as u64 * 4).unwrap()
}

/// The signed codes of packed words, lane k of a word from bits 8k..8k+8.
fn lanes(words: &[u32]) -> Vec<i8> {
    words
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .map(|b| b as i8)
        .collect()
}

fn cells_of(h: usize, w: usize) -> (usize, usize) {
    (h.div_ceil(3), w.div_ceil(3))
}

/// Eq. 4 from its definition, in f64 on the channels of `x`: codes `[n][cell][channel]`.
fn eq4(x: &Tensor, bits: u32, clip: f32) -> Vec<i32> {
    let (ph, pw) = cells_of(x.h, x.w);
    let qmax = ((1 << (bits - 1)) - 1) as f64;
    let mut out = Vec::new();
    for n in 0..x.n {
        for cell in 0..ph * pw {
            let (cy, cx) = (cell / pw, cell % pw);
            let pixels: Vec<(usize, usize)> = (3 * cy..(3 * cy + 3).min(x.h))
                .flat_map(|y| (3 * cx..(3 * cx + 3).min(x.w)).map(move |xx| (y, xx)))
                .collect();
            let mut mean = vec![0f64; x.c];
            for &(y, xx) in &pixels {
                let norm = (0..x.c)
                    .map(|c| (x.get(n, c, y, xx) as f64).powi(2))
                    .sum::<f64>()
                    .sqrt()
                    .max(1e-12);
                for (c, m) in mean.iter_mut().enumerate() {
                    *m += x.get(n, c, y, xx) as f64 / norm / pixels.len() as f64;
                }
            }
            out.extend(
                mean.iter()
                    .map(|m| (m * qmax / clip as f64).round().clamp(-qmax, qmax) as i32),
            );
        }
    }
    out
}

#[test]
fn refer_prep_matches_its_twin_within_one_code() {
    let ctx = ctx();
    let mut rng = Rng::fresh("refer_prep");
    // (batch, channels, h, w): whole and partial edge cells, single-pixel and single-row
    // windows, channel counts off multiples of 4
    let shapes = [
        (2, 48, 9, 12),
        (3, 13, 7, 11),
        (2, 3, 1, 1),
        (2, 5, 4, 17),
        (1, 64, 10, 8),
        (4, 1, 5, 2),
    ];
    let (mut total, mut off) = (0usize, 0usize);
    for bits in 2..=8u32 {
        for (case, (batch, c, h, w)) in shapes.into_iter().enumerate() {
            let label = format!("{bits} bits, n{batch} c{c} {h}x{w}");
            let clip = rng.uniform(0.1, 0.8);
            let mut x = rng.tensor(batch, c, h, w);
            if case == 0 {
                // a zero pixel: the norm's floor must keep it at zero, not NaN
                for ch in 0..c {
                    x.set(1, ch, 4, 5, 0.0);
                }
            }
            let want = cpu::refer_prep(&x.data, batch, c, h, w, bits, clip);
            let (ph, pw) = cells_of(h, w);
            let groups = c.div_ceil(4);
            assert_eq!(want.len(), batch * ph * pw * groups, "{label}: twin length");

            // the twin against the definition: lanes past the channels are 0, the others
            // within one step of the f64 codes (ties may round either way)
            let exact = eq4(&x, bits, clip);
            let twin = lanes(&want);
            for (k, &t) in twin.iter().enumerate() {
                let (cellv, lane) = (k / (groups * 4), k % (groups * 4));
                if lane < c {
                    let e = exact[cellv * c + lane];
                    assert!(
                        (t as i32 - e).abs() <= 1,
                        "{label}: twin code {t} vs Eq. 4 {e} at lane {k}"
                    );
                } else {
                    assert_eq!(t, 0, "{label}: twin padding lane {k}");
                }
            }

            let src = ctx.upload("features", &x.data);
            let dst = poisoned(&ctx, want.len(), CODE_POISON);
            let d = refer_prep::dispatch(
                &ctx,
                "prep",
                &src,
                &dst,
                batch as u32,
                c as u32,
                h as u32,
                w as u32,
                bits,
                clip,
            )
            .unwrap();
            launch(&ctx, vec![d]);
            let got = lanes(&read_words(&ctx, &dst, want.len()));
            ctx.release(dst);
            for (k, (&g, &t)) in got.iter().zip(&twin).enumerate() {
                assert!(
                    (g as i32 - t as i32).abs() <= 1,
                    "{label}: GPU code {g} vs twin {t} at lane {k}"
                );
                if k % (groups * 4) >= c {
                    assert_eq!(g, 0, "{label}: GPU padding lane {k}");
                }
            }
            off += got.iter().zip(&twin).filter(|(g, t)| g != t).count();
            total += twin.len();
        }
    }
    eprintln!("refer_prep: {off} of {total} codes one step off the twin");
    assert!(
        (total - off) as f64 >= PREP_SAME * total as f64,
        "{off} of {total} codes differ from the twin"
    );
}

/// `n` random code words, every byte in -128..=127.
fn words(rng: &mut Rng, n: usize) -> Vec<u32> {
    (0..n).map(|_| rng.next_u64() as u32).collect()
}

#[test]
fn cost_volume_matches_its_twin_bit_for_bit() {
    let ctx = ctx();
    let mut rng = Rng::fresh("cost_volume");
    // (batch, cells, groups): one cell; cell counts below, at and past the 16 x 16 tile;
    // group counts below, at and past the 16-word staging chunk
    let shapes = [
        (1, 1, 1),
        (2, 17, 3),
        (3, 35, 12),
        (2, 16, 16),
        (1, 100, 17),
        (2, 49, 33),
    ];
    for (case, (batch, cells, groups)) in shapes.into_iter().enumerate() {
        let n = batch * cells * groups;
        // the first case at the extreme: every byte -128
        let (q, r) = if case == 0 {
            (vec![0x8080_8080; n], vec![0x8080_8080; n])
        } else {
            (words(&mut rng, n), words(&mut rng, n))
        };
        let label = format!("n{batch} P{cells} G{groups}");
        let (qb, rb) = (ctx.upload("q", &q), ctx.upload("r", &r));
        // once against a separate reference, once against the query itself (the same buffer
        // in both bindings)
        for (own, rbuf, rwords) in [(false, &rb, &r), (true, &qb, &q)] {
            let want = cpu::cost_volume(&q, rwords, batch, cells, groups);
            let e = poisoned(&ctx, want.len(), i32::MIN as u32);
            let d = cost_volume::dispatch(
                &ctx,
                "cost",
                &qb,
                rbuf,
                &e,
                batch as u32,
                cells as u32,
                groups as u32,
            )
            .unwrap();
            launch(&ctx, vec![d]);
            let got: Vec<i32> = read_words(&ctx, &e, want.len())
                .into_iter()
                .map(|v| v as i32)
                .collect();
            ctx.release(e);
            let bad = got.iter().zip(&want).filter(|(g, w)| g != w).count();
            assert_eq!(
                bad,
                0,
                "{label}, self {own}: {bad} of {} differ",
                want.len()
            );
            if own {
                // a cell with itself: a sum of squares
                for i in 0..batch * cells {
                    assert!(want[i * cells + i % cells] >= 0);
                }
            }
        }
    }
}

#[test]
fn argmax_matches_its_twin_and_takes_the_first_of_ties() {
    let ctx = ctx();
    let mut rng = Rng::fresh("argmax");
    // (batch, cells): rows shorter than, equal to and longer than the 64 invocations of a
    // workgroup, and more rows than one grid dimension holds (80 000 > 65 535)
    let shapes = [
        (3, 1),
        (2, 5),
        (1, 64),
        (2, 65),
        (1, 130),
        (2, 300),
        (40_000, 2),
    ];
    for (batch, cells) in shapes {
        // what the rows hold: anything, a few values (ties everywhere), all equal, all the
        // smallest i32, and equal but for a tie of two maxima at the very end
        for kind in ["random", "few", "equal", "min", "late"] {
            let len = batch * cells * cells;
            let level = rng.next_u64() as i32;
            let e: Vec<i32> = (0..len)
                .map(|k| match kind {
                    "random" => rng.next_u64() as i32,
                    "few" => rng.below(5) as i32 - 2,
                    "equal" => level,
                    "min" => i32::MIN,
                    _ if cells >= 2 && k % cells >= cells - 2 => 7,
                    _ => 3,
                })
                .collect();
            let want = cpu::argmax(&e, batch, cells);
            // the twin against the definition: the first position of the row's maximum
            for (r, row) in e.chunks(cells).enumerate() {
                let top = *row.iter().max().unwrap();
                let first = row.iter().position(|&v| v == top).unwrap() as u32;
                assert_eq!(want[r], first, "{kind} n{batch} P{cells}: twin, row {r}");
            }
            if matches!(kind, "equal" | "min") {
                assert!(want.iter().all(|&j| j == 0));
            }
            let eb = ctx.upload("e", &e);
            let idx = poisoned(&ctx, want.len(), u32::MAX);
            let d =
                argmax::dispatch(&ctx, "argmax", &eb, &idx, batch as u32, cells as u32).unwrap();
            launch(&ctx, vec![d]);
            let got = read_words(&ctx, &idx, want.len());
            ctx.release(idx);
            let bad = got.iter().zip(&want).filter(|(g, w)| g != w).count();
            assert_eq!(
                bad,
                0,
                "{kind} n{batch} P{cells}: {bad} of {} rows differ",
                want.len()
            );
        }
    }
}

/// Run `warp` on the GPU.
#[allow(clippy::too_many_arguments)]
fn gpu_warp(
    ctx: &Context,
    fq: &[f32],
    fr: &[f32],
    idx: &[u32],
    batch: usize,
    c: usize,
    h: usize,
    w: usize,
) -> Vec<f32> {
    let (a, b, i) = (
        ctx.upload("fq", fq),
        ctx.upload("fr", fr),
        ctx.upload("idx", idx),
    );
    let dst = poisoned(ctx, fq.len(), f32::NAN.to_bits());
    let d = warp::dispatch(
        ctx,
        "warp",
        &a,
        &b,
        &i,
        &dst,
        batch as u32,
        c as u32,
        h as u32,
        w as u32,
    )
    .unwrap();
    launch(ctx, vec![d]);
    let got = read_f32(ctx, &dst, fq.len());
    ctx.release(dst);
    got
}

fn range(sets: &[&[f32]]) -> f32 {
    sets.iter()
        .flat_map(|s| s.iter())
        .fold(0f32, |m, v| m.max(v.abs()))
}

#[test]
fn warp_matches_its_twin() {
    let ctx = ctx();
    let mut rng = Rng::fresh("warp");
    // (batch, channels, h, w): partial edge cells, a single pixel, single-column and
    // single-row cell grids, channel counts off multiples of 4
    let shapes = [
        (2, 48, 9, 12),
        (3, 13, 7, 11),
        (2, 5, 1, 1),
        (2, 3, 20, 31),
        (1, 16, 4, 2),
        (2, 8, 2, 23),
    ];
    for (batch, c, h, w) in shapes {
        let label = format!("n{batch} c{c} {h}x{w}");
        let (fq, fr) = (rng.tensor(batch, c, h, w), rng.tensor(batch, c, h, w));
        let (ph, pw) = cells_of(h, w);
        let idx: Vec<u32> = (0..batch * ph * pw)
            .map(|_| rng.below(ph * pw) as u32)
            .collect();
        let want = cpu::warp(&fq.data, &fr.data, &idx, batch, c, h, w);
        assert!(want.iter().all(|v| v.is_finite()), "{label}: twin");
        let got = gpu_warp(&ctx, &fq.data, &fr.data, &idx, batch, c, h, w);
        let d = common::max_abs_diff(&got, &want);
        let r = range(&[&fq.data, &fr.data, &want]);
        eprintln!("warp {label}: max diff {d:.2e} of range {r:.2}");
        assert!(d <= WARP_TOL * r, "{label}: differs by {d} (range {r})");
    }
}

#[test]
fn warp_by_self_matches_is_the_plain_difference() {
    let ctx = ctx();
    let mut rng = Rng::fresh("warp identity");
    for (batch, c, h, w) in [(2, 13, 10, 14), (1, 4, 3, 3), (3, 6, 8, 1)] {
        let (fq, fr) = (rng.tensor(batch, c, h, w), rng.tensor(batch, c, h, w));
        let (ph, pw) = cells_of(h, w);
        let idx: Vec<u32> = (0..batch * ph * pw)
            .map(|i| (i % (ph * pw)) as u32)
            .collect();
        let diff: Vec<f32> = fq.data.iter().zip(&fr.data).map(|(a, b)| a - b).collect();
        let twin = cpu::warp(&fq.data, &fr.data, &idx, batch, c, h, w);
        let got = gpu_warp(&ctx, &fq.data, &fr.data, &idx, batch, c, h, w);
        for (who, d) in [("twin", &twin), ("GPU", &got)] {
            let e = common::max_abs_diff(d, &diff);
            assert!(e <= 1e-6, "{who}, n{batch} c{c} {h}x{w}: off by {e}");
        }
    }
}

#[test]
fn warp_undoes_a_three_pixel_shift_in_the_interior() {
    let ctx = ctx();
    let mut rng = Rng::fresh("warp shift");
    let (batch, c, h, w) = (2, 6, 16, 19);
    let (ph, pw) = cells_of(h, w);
    // shifts in cells (3 pixels each): right, down, left and down, two right and up
    for (sx, sy) in [(1isize, 0isize), (0, 1), (-1, 1), (2, -1)] {
        let label = format!("shift ({sx}, {sy}) cells");
        let fq = rng.tensor(batch, c, h, w);
        // Fr(x, y) = Fq(x - 3 sx, y - 3 sy) where that exists, noise elsewhere
        let mut fr = rng.tensor(batch, c, h, w);
        for n in 0..batch {
            for y in 0..h as isize {
                for x in 0..w as isize {
                    let (qx, qy) = (x - 3 * sx, y - 3 * sy);
                    if qx >= 0 && qy >= 0 && qx < w as isize && qy < h as isize {
                        for ch in 0..c {
                            let v = fq.get(n, ch, qy as usize, qx as usize);
                            fr.set(n, ch, y as usize, x as usize, v);
                        }
                    }
                }
            }
        }
        // each cell matched with the cell the shift takes it to, or with itself at the edge
        let target = |cx: usize, cy: usize| -> Option<usize> {
            let (tx, ty) = (cx as isize + sx, cy as isize + sy);
            (tx >= 0 && ty >= 0 && tx < pw as isize && ty < ph as isize)
                .then(|| ty as usize * pw + tx as usize)
        };
        let idx: Vec<u32> = (0..batch * ph * pw)
            .map(|k| {
                let cell = k % (ph * pw);
                target(cell % pw, cell / pw).unwrap_or(cell) as u32
            })
            .collect();
        let twin = cpu::warp(&fq.data, &fr.data, &idx, batch, c, h, w);
        let got = gpu_warp(&ctx, &fq.data, &fr.data, &idx, batch, c, h, w);
        // interior: every cell the flow interpolation may touch (those within one of x / 3,
        // y / 3) is shifted, and the shifted pixel lies in the window
        let mut interior = 0;
        for y in 0..h {
            for x in 0..w {
                let near = |v: usize, last: usize| v.saturating_sub(1)..=(v + 1).min(last);
                let shifted = near(y / 3, ph - 1)
                    .all(|cy| near(x / 3, pw - 1).all(|cx| target(cx, cy).is_some()));
                let (tx, ty) = (x as isize + 3 * sx, y as isize + 3 * sy);
                let inside = tx >= 0 && ty >= 0 && tx < w as isize && ty < h as isize;
                if !(shifted && inside) {
                    continue;
                }
                interior += 1;
                for n in 0..batch {
                    for g in 0..c.div_ceil(4) {
                        let at = fq.vec_index(n, g, y, x) * 4;
                        for (who, d) in [("twin", &twin), ("GPU", &got)] {
                            assert_eq!(
                                &d[at..at + 4],
                                &[0.0; 4],
                                "{label}, {who}: D at n{n} g{g} ({x}, {y})"
                            );
                        }
                    }
                }
            }
        }
        assert!(interior >= 20, "{label}: only {interior} interior pixels");
    }
}

#[test]
fn refer_chain_in_one_submission_matches_the_twins_step_by_step() {
    // prep (query and reference) -> cost volume -> argmax -> warp recorded together, each
    // step's GPU output checked against the twin of the GPU's own input to it, so that an
    // allowed one-code difference in prep cannot cascade into a false failure downstream.
    let ctx = ctx();
    let mut rng = Rng::fresh("refer chain");
    let (batch, c, h, w, bits, clip) = (2usize, 20usize, 13, 17, 8, 0.5);
    let (ph, pw) = cells_of(h, w);
    let (cells, groups) = (ph * pw, c.div_ceil(4));
    let fq = rng.tensor(batch, c, h, w);
    // the reference: the query moved by 4 pixels, plus a little noise
    let mut fr = rng.tensor(batch, c, h, w);
    for n in 0..batch {
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let v = fq.get(n, ch, y, (x + 4) % w) + 0.1 * fr.get(n, ch, y, x);
                    fr.set(n, ch, y, x, v);
                }
            }
        }
    }
    let (qf, rf) = (ctx.upload("fq", &fq.data), ctx.upload("fr", &fr.data));
    let words = batch * cells * groups;
    let (qc, rc) = (
        poisoned(&ctx, words, CODE_POISON),
        poisoned(&ctx, words, CODE_POISON),
    );
    let e = poisoned(&ctx, batch * cells * cells, i32::MIN as u32);
    let idx = poisoned(&ctx, batch * cells, u32::MAX);
    let dst = poisoned(&ctx, fq.data.len(), f32::NAN.to_bits());
    let (b, cu, hu, wu) = (batch as u32, c as u32, h as u32, w as u32);
    let launches = vec![
        refer_prep::dispatch(&ctx, "q", &qf, &qc, b, cu, hu, wu, bits, clip).unwrap(),
        refer_prep::dispatch(&ctx, "r", &rf, &rc, b, cu, hu, wu, bits, clip).unwrap(),
        cost_volume::dispatch(&ctx, "e", &qc, &rc, &e, b, cells as u32, groups as u32).unwrap(),
        argmax::dispatch(&ctx, "m", &e, &idx, b, cells as u32).unwrap(),
        warp::dispatch(&ctx, "d", &qf, &rf, &idx, &dst, b, cu, hu, wu).unwrap(),
    ];
    launch(&ctx, launches);
    let got_q = read_words(&ctx, &qc, words);
    let got_r = read_words(&ctx, &rc, words);
    let got_e: Vec<i32> = read_words(&ctx, &e, batch * cells * cells)
        .into_iter()
        .map(|v| v as i32)
        .collect();
    let got_idx = read_words(&ctx, &idx, batch * cells);
    let got_d = read_f32(&ctx, &dst, fq.data.len());
    for buf in [qc, rc, e, idx, dst] {
        ctx.release(buf);
    }
    for (who, x, got) in [("query", &fq, &got_q), ("reference", &fr, &got_r)] {
        let want = cpu::refer_prep(&x.data, batch, c, h, w, bits, clip);
        let far = lanes(got)
            .iter()
            .zip(lanes(&want))
            .filter(|(g, t)| (**g as i32 - *t as i32).abs() > 1)
            .count();
        assert_eq!(far, 0, "{who} codes more than one step off the twin");
    }
    assert_eq!(
        got_e,
        cpu::cost_volume(&got_q, &got_r, batch, cells, groups),
        "cost volume"
    );
    assert_eq!(got_idx, cpu::argmax(&got_e, batch, cells), "argmax");
    let want_d = cpu::warp(&fq.data, &fr.data, &got_idx, batch, c, h, w);
    let d = common::max_abs_diff(&got_d, &want_d);
    let r = range(&[&fq.data, &fr.data, &want_d]);
    assert!(d <= WARP_TOL * r, "warp differs by {d} (range {r})");
}
