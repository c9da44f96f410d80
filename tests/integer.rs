//! The integer product (`gemm_int8.wgsl`) against its CPU twin, bit for bit, and the zero-point
//! folding of src/quant checked end to end on the twin.

mod common;

use common::{ctx, launch, Rng};
use refqsr::kernels::cpu::gemm_int8;
use refqsr::kernels::gemm_int8::{GpuGemmInt8, PackedGemmInt8};
use refqsr::kernels::int_store::Store;
use refqsr::quant::pack::pack_i8x4;
use refqsr::quant::{weight_quantizers, ActQuant, Quantizer};

/// Codes of `n` values drawn at random in -128..=127 (never all zero).
fn codes(rng: &mut Rng, n: usize) -> Vec<i8> {
    (0..n).map(|_| (rng.next_u64() % 256) as u8 as i8).collect()
}

/// Pack `[n][pos][c][t]` codes into the kernel's `[n][pos][ic][t]` words.
fn pack_columns(v: &[i8], outer: usize, channels: usize, tiles: usize) -> Vec<u32> {
    let icg = channels.div_ceil(4);
    let mut out = vec![0u32; outer * icg * tiles];
    for o in 0..outer {
        for ic in 0..icg {
            for t in 0..tiles {
                let four: Vec<i8> = (0..4)
                    .map(|l| {
                        if 4 * ic + l < channels {
                            v[(o * channels + 4 * ic + l) * tiles + t]
                        } else {
                            0
                        }
                    })
                    .collect();
                out[(o * icg + ic) * tiles + t] = pack_i8x4(&four)[0];
            }
        }
    }
    out
}

/// Byte words `[n][icg][plane]` (`icg` even) as nibble words `[n][icg / 2][plane]`: groups
/// 2w and 2w + 1 in word w.
fn nibble_columns(bytes: &[u32], batch: usize, icg: usize, plane: usize) -> Vec<u32> {
    use refqsr::quant::pack::nibbles_of;
    let mut a = Vec::with_capacity(bytes.len() / 2);
    for n in 0..batch {
        for wd in 0..icg / 2 {
            for p in 0..plane {
                let word = |g: usize| bytes[(n * icg + g) * plane + p];
                a.push(nibbles_of(word(2 * wd), word(2 * wd + 1)));
            }
        }
    }
    a
}

#[test]
fn int8_gemm_matches_its_twin_bit_for_bit() {
    let ctx = ctx();
    let mut rng = Rng::fresh("int8 gemm");
    // (positions, in, out, tiles, batch): channel counts off multiples of 4 and 16, column
    // counts off multiples of 8, several uniform slices (192 in x 36 positions), extreme codes.
    for (positions, in_ch, out_ch, tiles, batch) in [
        (1, 48, 48, 37, 1),
        (3, 5, 7, 9, 2),
        (36, 192, 20, 11, 1),
        (2, 1024, 8, 3, 1),
        (1, 4, 3, 1, 1),
    ] {
        let w = codes(&mut rng, positions * out_ch * in_ch);
        let corr: Vec<i32> = (0..out_ch)
            .map(|_| (rng.next_u64() % 200_000) as i32 - 100_000)
            .collect();
        let packed = PackedGemmInt8::new(positions, in_ch, out_ch, &w, &corr);
        let act = codes(&mut rng, batch * positions * in_ch * tiles);
        let a = pack_columns(&act, batch * positions, in_ch, tiles);
        let want = gemm_int8(&a, &packed, batch, tiles);

        let gpu = GpuGemmInt8::new(&ctx, packed.clone()).unwrap();
        let a_buf = ctx.upload("a", &a);
        let bytes = (want.len() * 16) as u64;
        let m = ctx.acquire(bytes);
        ctx.queue
            .write_buffer(&m, 0, bytemuck::cast_slice(&vec![i32::MIN; want.len() * 4]));
        launch(
            &ctx,
            gpu.dispatch(
                &ctx,
                "test",
                &a_buf,
                &m,
                &Store::Sums,
                batch as u32,
                tiles as u32,
            ),
        );
        let got: Vec<i32> = bytemuck::cast_slice(&ctx.read(&m, bytes).unwrap()).to_vec();
        let want: Vec<i32> = want.into_iter().flatten().collect();
        assert!(
            want.iter().all(|&v| v != i32::MIN),
            "twin left an element unwritten"
        );
        let bad = got.iter().zip(&want).filter(|(g, w)| g != w).count();
        assert_eq!(
            bad,
            0,
            "P{positions} {in_ch}->{out_ch} x{tiles} n{batch}: {bad} of {} differ",
            want.len()
        );
        ctx.release(m);
    }
}

#[test]
fn folded_zero_points_reproduce_the_quantized_convolution() {
    // A 1x1 convolution of Eq. 1-quantized activations by per-channel quantized weights, once
    // in float on the dequantized values and once as the integer product of stored codes plus
    // the folded correction, rescaled: the two must agree to float rounding.
    let mut rng = Rng::fresh("zero-point folding");
    let (in_ch, out_ch, tiles) = (24, 10, 13);
    for bits in [8, 6, 4, 2] {
        let wf = rng.vec(out_ch * in_ch, -1.0, 1.0);
        let wq = weight_quantizers(&wf, out_ch, 8);
        let wcodes: Vec<i8> = wf
            .iter()
            .enumerate()
            .map(|(i, &v)| wq[i / in_ch].code(v).clamp(-128, 127) as i8)
            .collect();
        let aq = Quantizer::new(-0.7, 2.3, bits);
        let xf = rng.vec(in_ch * tiles, -1.0, 3.0);
        // stored codes shifted to signed bytes: t = (code - lo) - 128, so code = t + z
        let z = aq.lo() + 128;
        let t: Vec<i8> = xf
            .iter()
            .map(|&v| (aq.stored(v) as i32 - 128) as i8)
            .collect();
        let corr: Vec<i32> = (0..out_ch)
            .map(|o| {
                z * (0..in_ch)
                    .map(|i| wcodes[o * in_ch + i] as i32)
                    .sum::<i32>()
            })
            .collect();
        let packed = PackedGemmInt8::new(1, in_ch, out_ch, &wcodes, &corr);
        let m = gemm_int8(&pack_columns(&t, 1, in_ch, tiles), &packed, 1, tiles);
        for o in 0..out_ch {
            for tt in 0..tiles {
                let int =
                    m[(o / 4) * tiles + tt][o % 4] as f64 * wq[o].step() as f64 * aq.step() as f64;
                let float: f64 = (0..in_ch)
                    .map(|i| {
                        (wcodes[o * in_ch + i] as f64 * wq[o].step() as f64)
                            * aq.quantize(xf[i * tiles + tt]) as f64
                    })
                    .sum();
                assert!(
                    (int - float).abs() <= 1e-4 * (1.0 + float.abs()),
                    "{bits} bits, channel {o}, column {tt}: {int} vs {float}"
                );
            }
        }
    }
}

fn read_u32(ctx: &refqsr::gpu::Context, b: &wgpu::Buffer, words: usize) -> Vec<u32> {
    bytemuck::cast_slice(&ctx.read(b, words as u64 * 4).unwrap()).to_vec()
}

/// `n` vec4<i32> sums.
fn read_sums(ctx: &refqsr::gpu::Context, b: &wgpu::Buffer, n: usize) -> Vec<[i32; 4]> {
    bytemuck::cast_slice(&ctx.read(b, n as u64 * 16).unwrap()).to_vec()
}

#[test]
fn quantize_matches_its_twin_bit_for_bit() {
    let ctx = ctx();
    let mut rng = Rng::fresh("quantize");
    for bits in 2..=8 {
        // per tensor, then one step and one code range per channel
        for (c, h, w, per_channel) in [
            (48, 5, 7, false),
            (3, 4, 4, false),
            (13, 1, 9, false),
            (48, 5, 7, true),
            (13, 1, 9, true),
        ] {
            let q: ActQuant = if per_channel {
                let n = 1i32 << bits;
                let lo: Vec<i32> = (0..c)
                    .map(|_| -((rng.next_u64() % n as u64) as i32))
                    .collect();
                let steps = rng.vec(c, 0.002, 0.4);
                ActQuant::per_channel(bits, &lo, &steps)
            } else {
                Quantizer::new(rng.uniform(-2.0, -0.1), rng.uniform(0.1, 3.0), bits).into()
            };
            let mut x = rng.tensor(2, c, h, w);
            let (plane, groups) = (h * w, c.div_ceil(4));
            // values past both bounds, and exactly on half steps (ties)
            for (i, v) in x.data.iter_mut().enumerate() {
                let ch = ((i / 4 / plane) % groups) * 4 + i % 4;
                match i % 5 {
                    0 => *v *= 4.0,
                    1 => *v = (((i / 5) % 9) as f32 - 4.0 + 0.5) * q.channel(ch.min(c - 1)).step(),
                    _ => {}
                }
            }
            for nibbles in [false, true] {
                if nibbles && bits > 4 {
                    continue;
                }
                let want = refqsr::kernels::cpu::quantize(&x, &q, nibbles);
                let src = ctx.upload("x", &x.data);
                let dst = ctx.acquire(want.len() as u64 * 4);
                ctx.queue.write_buffer(
                    &dst,
                    0,
                    bytemuck::cast_slice(&vec![0xdead_beefu32; want.len()]),
                );
                let d = refqsr::kernels::quantize::dispatch(
                    &ctx,
                    "q",
                    &q,
                    &src,
                    &dst,
                    2,
                    c as u32,
                    (h * w) as u32,
                    nibbles,
                )
                .unwrap();
                launch(&ctx, [d]);
                assert_eq!(
                    read_u32(&ctx, &dst, want.len()),
                    want,
                    "{bits} bits, {c}x{h}x{w}, nibbles {nibbles}, per channel {per_channel}"
                );
                ctx.release(dst);
            }
        }
    }
}

#[test]
fn integer_3x3_convolution_is_exact() {
    // quantize-free check of im2col + gemm_int8 against the definition: out[o][p] =
    // sum over taps inside the image of w * (byte + zero point).
    let ctx = ctx();
    let mut rng = Rng::fresh("int8 conv");
    let shapes: [(usize, usize, usize, usize, usize); 4] = [
        (48, 48, 9, 11, 3),
        (5, 7, 3, 2, 3),
        (12, 20, 4, 5, 1),
        (3, 48, 1, 1, 3),
    ];
    for (in_ch, out_ch, h, w, k) in shapes {
        let icg = in_ch.div_ceil(4);
        // each input channel's zero point: the padding byte is its negation
        let pad_byte: Vec<i8> = (0..in_ch)
            .map(|_| (-((rng.next_u64() % 200) as i32)).max(-128) as i8)
            .collect();
        let zero: Vec<i32> = pad_byte.iter().map(|&b| -(b as i32)).collect();
        let bytes: Vec<i8> = (0..in_ch * h * w)
            .map(|_| (rng.next_u64() % 256) as u8 as i8)
            .collect();
        let a = pack_columns(&bytes, 1, in_ch, h * w);
        let wc = codes(&mut rng, out_ch * in_ch * k * k);
        let corr: Vec<i32> = (0..out_ch)
            .map(|o| {
                (0..in_ch * k * k)
                    .map(|i| zero[i / (k * k)] * wc[o * in_ch * k * k + i] as i32)
                    .sum::<i32>()
            })
            .collect();
        let packed = PackedGemmInt8::conv(k, in_ch, out_ch, &wc, &corr);
        let pads: Vec<u32> = (0..icg)
            .map(|g| {
                pack_i8x4(&std::array::from_fn::<i8, 4, _>(|l| {
                    pad_byte[(4 * g + l).min(in_ch - 1)]
                }))[0]
            })
            .collect();

        // the definition
        let r = (k / 2) as isize;
        let mut want = vec![0i32; out_ch * h * w];
        for o in 0..out_ch {
            for y in 0..h as isize {
                for x in 0..w as isize {
                    let mut s = 0i32;
                    for i in 0..in_ch {
                        for tap in 0..k * k {
                            let (yy, xx) = (y + (tap / k) as isize - r, x + (tap % k) as isize - r);
                            if yy >= 0 && yy < h as isize && xx >= 0 && xx < w as isize {
                                let b = bytes[(i * h + yy as usize) * w + xx as usize] as i32;
                                s += wc[(o * in_ch + i) * k * k + tap] as i32 * (b + zero[i]);
                            }
                        }
                    }
                    want[(o * h + y as usize) * w + x as usize] = s;
                }
            }
        }
        let as_channels = |m: Vec<[i32; 4]>| -> Vec<i32> {
            (0..out_ch * h * w)
                .map(|i| m[(i / (h * w) / 4) * h * w + i % (h * w)][(i / (h * w)) % 4])
                .collect()
        };

        // the CPU twins
        let cols = refqsr::kernels::cpu::im2col_int8(&a, 1, icg, h, w, k, &pads);
        assert_eq!(
            as_channels(gemm_int8(&cols, &packed, 1, h * w)),
            want,
            "twins, {in_ch}->{out_ch} {h}x{w} k{k}"
        );

        // the GPU
        let src = ctx.upload("a", &a);
        let col_buf = ctx.acquire(cols.len() as u64 * 4);
        let m = ctx.acquire((out_ch.div_ceil(4) * h * w * 16) as u64);
        ctx.queue.write_buffer(
            &col_buf,
            0,
            bytemuck::cast_slice(&vec![0xdead_beefu32; cols.len()]),
        );
        let gpu = GpuGemmInt8::new(&ctx, packed).unwrap();
        let mut steps = vec![refqsr::kernels::im2col_int8::dispatch(
            &ctx, "c", &src, &col_buf, 1, icg as u32, h as u32, w as u32, k as u32, &pads,
        )
        .unwrap()];
        steps.extend(gpu.dispatch(&ctx, "c", &col_buf, &m, &Store::Sums, 1, (h * w) as u32));
        launch(&ctx, steps);
        assert_eq!(
            read_u32(&ctx, &col_buf, cols.len()),
            cols,
            "im2col {in_ch} {h}x{w} k{k}"
        );
        let got = read_sums(&ctx, &m, out_ch.div_ceil(4) * h * w);
        assert_eq!(
            as_channels(got),
            want,
            "GPU, {in_ch}->{out_ch} {h}x{w} k{k}"
        );
        ctx.release(col_buf);
        ctx.release(m);
    }
}

/// The float output of integer layer `p` on `x` (one image) by its CPU twins: quantize,
/// the integer sums, and the dequantizing store.
fn twin_floats(
    p: &refqsr::kernels::int_conv::PackedIntConv,
    x: &refqsr::kernels::cpu::Tensor,
) -> Vec<f32> {
    use refqsr::kernels::cpu;
    let sums = p.twin_sums(&cpu::quantize(x, &p.act, p.nibbles()), 1, x.h, x.w);
    let store = cpu::Store::Float {
        epilogue: &p.epilogue,
        scales: &p.scales,
        residual: None,
    };
    cpu::int_store(&sums, store, 1, p.out_ch, x.h, x.w)
        .into_iter()
        .map(f32::from_bits)
        .collect()
}

/// The GPU layer `p` on `x` (one image), written as floats (C4HW) into a NaN-poisoned output.
fn gpu_floats(
    ctx: &refqsr::gpu::Context,
    p: &refqsr::kernels::int_conv::PackedIntConv,
    x: &refqsr::kernels::cpu::Tensor,
) -> Vec<f32> {
    use refqsr::kernels::int_conv::{GpuIntConv, IntInput, IntOutput};
    let (h, w) = (x.h, x.w);
    let gpu = GpuIntConv::new(ctx, p.clone()).unwrap();
    let (nw, nc) = p.scratch_words(1, h * w);
    let src = ctx.upload("x", &x.data);
    let (packed_in, col_buf) = (
        ctx.acquire(nw as u64 * 4),
        ctx.acquire(nc.max(1) as u64 * 4),
    );
    let size = (p.out_ch.div_ceil(4) * h * w * 16) as u64;
    let dst = ctx.acquire(size);
    ctx.queue.write_buffer(
        &dst,
        0,
        bytemuck::cast_slice(&vec![f32::NAN; size as usize / 4]),
    );
    let steps = gpu
        .dispatch(
            ctx,
            "layer",
            IntInput::Float(&src),
            None,
            IntOutput::Float(&dst),
            [&packed_in, &col_buf],
            1,
            h as u32,
            w as u32,
        )
        .unwrap();
    launch(ctx, steps);
    let got = ctx.read(&dst, size).unwrap();
    for r in [&packed_in, &col_buf, &dst] {
        ctx.release(r.clone());
    }
    got
}

#[test]
fn per_channel_zero_points_fold_into_the_corrections_and_the_padding() {
    // Every channel with its own code range (all on one side of zero, or split): the GPU
    // layer (each 3x3 kernel, image borders included) must equal the definition, the float
    // convolution of the dequantized input (zero outside the image) by the dequantized
    // weights, to float rounding.
    use refqsr::kernels::int_conv::{IntKernel, PackedIntConv};
    use refqsr::model::{Activation, Conv, Epilogue};
    let ctx = ctx();
    let mut rng = Rng::fresh("per-channel zero points");
    let (h, w) = (5, 9);
    let mut seen = Vec::new();
    for (bits, in_ch) in [(8u32, 20usize), (6, 12), (4, 20), (4, 16), (3, 13)] {
        let n = 1i32 << bits;
        let conv = Conv {
            in_ch,
            out_ch: 12,
            k: 3,
            weights: rng.vec(12 * in_ch * 9, -1.0, 1.0),
            bias: rng.vec(12, -0.5, 0.5),
            act: Activation::None,
            epilogue: Epilogue::None,
        };
        // lo from 0 (all codes positive) to -(n - 1) (all negative), and between
        let lo: Vec<i32> = (0..in_ch as i32).map(|c| -((c * 7) % n)).collect();
        let steps = rng.vec(in_ch, 0.01, 0.2);
        let act = ActQuant::per_channel(bits, &lo, &steps);
        let p = PackedIntConv::new(&conv, bits.max(4), act.clone());
        // inputs over each channel's whole range and beyond
        let mut x = rng.tensor(1, in_ch, h, w);
        for c in 0..in_ch {
            let q = act.channel(c);
            for y in 0..h {
                for xx in 0..w {
                    let t = (x.get(0, c, y, xx) + 1.0) / 2.0;
                    x.set(0, c, y, xx, q.alpha - 0.1 + t * (q.beta - q.alpha + 0.2));
                }
            }
        }
        let mut want = vec![0f32; 12 * h * w];
        for o in 0..12 {
            for y in 0..h as isize {
                for xx in 0..w as isize {
                    let mut s = 0f64;
                    for c in 0..in_ch {
                        for tap in 0..9 {
                            let (yy, xs) = (y + tap as isize / 3 - 1, xx + tap as isize % 3 - 1);
                            if yy >= 0 && yy < h as isize && xs >= 0 && xs < w as isize {
                                let v = act.quantize(c, x.get(0, c, yy as usize, xs as usize));
                                let code = p.codes[(o * in_ch + c) * 9 + tap] as f64;
                                s += code * p.scales[o] as f64 / act.channel(c).step() as f64
                                    * v as f64;
                            }
                        }
                    }
                    want[(o * h + y as usize) * w + xx as usize] = (s + conv.bias[o] as f64) as f32;
                }
            }
        }
        seen.push(p.kernel);
        let got = gpu_floats(&ctx, &p, &x);
        let range = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for o in 0..12 {
            for i in 0..h * w {
                let g = got[((o / 4) * h * w + i) * 4 + o % 4];
                let e = want[o * h * w + i];
                assert!(
                    (g - e).abs() <= 1e-5 * range,
                    "{bits} bits, {in_ch} channels ({:?}): output {o} pixel {i}: {g} vs {e}",
                    p.kernel
                );
            }
        }
    }
    assert!(
        seen.contains(&IntKernel::Conv8) && seen.contains(&IntKernel::Conv4),
        "{seen:?}"
    );
}

#[test]
fn integer_convolution_layer_matches_its_twins_and_the_float_layer() {
    use refqsr::kernels::cpu;
    use refqsr::kernels::int_conv::PackedIntConv;
    use refqsr::model::{Activation, Graph, Op};
    let ctx = ctx();
    let mut rng = Rng::fresh("int conv layer");
    // A real SPAN body convolution (48 -> 48, 3x3, swish) on random activations in [-1, 1].
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/models");
    let g = Graph::load_ncnn(&dir.join("spanx4_ch48.param"), &dir.join("spanx4_ch48.bin")).unwrap();
    let conv = g
        .nodes
        .iter()
        .find_map(|n| match &n.op {
            Op::Conv(c) if c.k == 3 && c.in_ch == 48 && c.act == Activation::Swish => {
                Some(c.clone())
            }
            _ => None,
        })
        .unwrap();
    let (h, w) = (7, 13);
    let x = rng.tensor(1, 48, h, w);
    let float = cpu::conv(&x, &refqsr::kernels::conv::PackedConv::new(&conv), None);
    let range = float.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mut errors = Vec::new();
    for bits in [8, 6, 4] {
        let act = Quantizer::new(-1.0, 1.0, bits);
        let p = PackedIntConv::new(&conv, bits, act);
        // the twins, step by step
        let want = twin_floats(&p, &x);
        // the GPU
        let got = gpu_floats(&ctx, &p, &x);
        let d = common::max_abs_diff(&got, &want);
        assert!(
            d <= 2e-6 * range,
            "{bits} bits ({:?}): GPU vs twins {d}",
            p.kernel
        );
        // and the quantized layer approximates the float one, better with more bits
        let err = common::max_abs_diff(bytemuck::cast_slice(&want), &float.data) / range;
        errors.push(err);
    }
    eprintln!("max relative error of the integer layer, w8a8 / w6a6 / w4a4: {errors:?}");
    assert!(
        errors[0] < 0.04 && errors[0] < errors[1] && errors[1] < errors[2],
        "{errors:?}"
    );
}

#[test]
fn per_channel_steps_fold_into_the_weights_and_cut_the_input_error_on_uneven_channels() {
    // A 3x3 convolution on input channels whose magnitudes differ 100-fold, as SPAN's do. The
    // integer layer (its CPU twins, which the GPU matches bit for bit above) computes with its
    // weight codes times the output step, divided by each input channel's step: against the
    // float layer with exactly those weights, what is left is the input's rounding. With one
    // step per channel folded into the weights it must be small, and far below one step's.
    use refqsr::kernels::conv::PackedConv;
    use refqsr::kernels::cpu;
    use refqsr::kernels::int_conv::PackedIntConv;
    use refqsr::model::{Activation, Conv, Epilogue};
    let mut rng = Rng::fresh("per-channel folding");
    let conv = Conv {
        in_ch: 48,
        out_ch: 48,
        k: 3,
        weights: rng.vec(48 * 48 * 9, -0.2, 0.2),
        bias: rng.vec(48, -0.1, 0.1),
        act: Activation::None,
        epilogue: Epilogue::None,
    };
    let (h, w) = (9, 11);
    let scale: Vec<f32> = (0..48)
        .map(|_| 10f32.powf(rng.uniform(-1.3, 0.7)))
        .collect();
    let mut x = rng.tensor(1, 48, h, w);
    for (i, v) in x.data.iter_mut().enumerate() {
        *v *= scale[((i / 4 / (h * w)) % 12) * 4 + i % 4];
    }
    let rms =
        |a: &[f32]| (a.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / a.len() as f64).sqrt();
    let run = |p: &PackedIntConv| -> f64 {
        let y = twin_floats(p, &x);
        // the weights the integer layer stands for, from its codes alone
        let effective = Conv {
            weights: (p.codes.iter().enumerate())
                .map(|(i, &q)| {
                    q as f32 * p.scales[i / (48 * 9)] / p.act.channel((i / 9) % 48).step()
                })
                .collect(),
            ..conv.clone()
        };
        let float = cpu::conv(&x, &PackedConv::new(&effective), None);
        let e: Vec<f32> = y.iter().zip(&float.data).map(|(a, b)| a - b).collect();
        rms(&e) / rms(&float.data)
    };
    for bits in [8u32, 4] {
        let top = (1 << (bits - 1)) - 1;
        let max = scale.iter().fold(0f32, |m, s| m.max(*s));
        let one = run(&PackedIntConv::new(
            &conv,
            8,
            Quantizer::new(-max, max, bits),
        ));
        let steps: Vec<f32> = scale.iter().map(|s| s / top as f32).collect();
        let lo = -(1 << (bits - 1));
        let per = run(&PackedIntConv::new(
            &conv,
            8,
            ActQuant::per_channel(bits, &[lo], &steps),
        ));
        eprintln!("{bits} bits: input error relative to the output, one step {one:.5}, per channel {per:.5}");
        assert!(
            per < 0.5 * one,
            "{bits} bits: per channel {per} vs one step {one}"
        );
        assert!(bits < 8 || per < 0.005, "8 bits: per channel {per}");
    }
}

#[test]
fn int8_3x3_convolution_kernel_matches_its_twin_bit_for_bit() {
    use refqsr::kernels::conv_int8;
    use refqsr::kernels::cpu::conv_int8 as twin;
    let ctx = ctx();
    let mut rng = Rng::fresh("conv_int8");
    // (in, out, h, w, batch): widths off multiples of 8, 1-pixel images, output groups off
    // whole blocks (three blocks for 48), several input groups, a batch of 2.
    let shapes: [(usize, usize, usize, usize, usize); 5] = [
        (48, 48, 9, 13, 1),
        (5, 7, 3, 2, 2),
        (12, 20, 1, 1, 1),
        (16, 4, 7, 17, 1),
        (3, 48, 6, 8, 2),
    ];
    for (in_ch, out_ch, h, w, batch) in shapes {
        let icg = in_ch.div_ceil(4);
        let wc = codes(&mut rng, out_ch * in_ch * 9);
        let corr: Vec<i32> = (0..out_ch)
            .map(|_| (rng.next_u64() % 200_000) as i32 - 100_000)
            .collect();
        let packed = PackedGemmInt8::conv(3, in_ch, out_ch, &wc, &corr);
        assert!(conv_int8::applies(&packed, 3));
        let bytes = codes(&mut rng, batch * in_ch * h * w);
        let a = pack_columns(&bytes, batch, in_ch, h * w);
        let pads: Vec<u32> = (0..icg)
            .map(|_| (rng.next_u64() & 0xffff_ffff) as u32)
            .collect();
        let want = twin(&a, &packed, batch, h, w, &pads);
        assert!(want.iter().all(|v| v[0] != i32::MIN));
        // the twin agrees with im2col + gemm, the path it replaces
        let cols = refqsr::kernels::cpu::im2col_int8(&a, batch, icg, h, w, 3, &pads);
        assert_eq!(
            gemm_int8(&cols, &packed, batch, h * w),
            want,
            "twins {in_ch}->{out_ch}"
        );

        let gpu = GpuGemmInt8::new(&ctx, packed).unwrap();
        let src = ctx.upload("a", &a);
        let bytes_out = (want.len() * 16) as u64;
        let m = ctx.acquire(bytes_out);
        ctx.queue
            .write_buffer(&m, 0, bytemuck::cast_slice(&vec![i32::MIN; want.len() * 4]));
        let steps = conv_int8::dispatch(
            &ctx,
            "t",
            &gpu,
            &src,
            &m,
            &Store::Sums,
            batch as u32,
            h as u32,
            w as u32,
            &pads,
        )
        .unwrap();
        launch(&ctx, steps);
        let got = read_sums(&ctx, &m, want.len());
        let bad = got.iter().zip(&want).filter(|(g, w)| g != w).count();
        assert_eq!(bad, 0, "{in_ch}->{out_ch} {h}x{w} n{batch}: {bad} differ");
        ctx.release(m);
    }
}

#[test]
fn the_device_passes_the_integer_self_check() {
    let ctx = ctx();
    eprintln!("packed int8 dot product: {}", ctx.int_dot);
    refqsr::kernels::int_conv::self_check(&ctx).unwrap();
}

#[test]
fn integer_modes_approximate_the_float_model_and_improve_with_bits() {
    use refqsr::{Options, Upscaler};
    let ctx = ctx();
    let img = image::open(common::asset("images/chelsea.png"))
        .unwrap()
        .crop_imm(120, 60, 40, 32)
        .to_rgb32f();
    let run = |mode: &str| {
        let o = Options {
            mode: mode.parse().unwrap(),
            ..Options::default()
        };
        let graph = refqsr::upscaler::load_graph(None, Some(4)).unwrap();
        let up = Upscaler::with_graph(ctx.clone(), graph, &o).unwrap();
        assert_eq!(up.mode().to_string(), mode, "{:?}", up.fallback());
        up.upscale_rgb(&img, &mut |_, _| {}).unwrap()
    };
    let fp = refqsr::metrics::luma(&run("fp32"));
    let psnr = |m: &str| refqsr::metrics::psnr(&refqsr::metrics::luma(&run(m)), &fp);
    let (w8, w6, w4) = (psnr("w8a8"), psnr("w6a6"), psnr("w4a4"));
    eprintln!("PSNR-Y against fp32: w8a8 {w8:.2} dB, w6a6 {w6:.2}, w4a4 {w4:.2}");
    assert!(
        w8 > 38.0 && w8 > w6 && w6 > w4 && w4 > 20.0,
        "{w8} {w6} {w4}"
    );
}

#[test]
fn int4_convolution_kernel_matches_its_twin_bit_for_bit() {
    use refqsr::kernels::conv_int4;
    use refqsr::kernels::cpu::{conv_int4 as twin, conv_int8};
    use refqsr::kernels::int_conv::pad_in_channels;
    use refqsr::quant::pack::nibbles_of;
    let ctx = ctx();
    let mut rng = Rng::fresh("conv_int4");
    // (in, out, h, w, batch, k): channels off multiples of 8, output groups off whole blocks,
    // widths off multiples of 8, 1-pixel images, 1x1 and 3x3.
    let shapes: [(usize, usize, usize, usize, usize, usize); 6] = [
        (48, 48, 9, 13, 1, 3),
        (5, 7, 3, 2, 2, 3),
        (12, 20, 1, 1, 1, 3),
        (48, 48, 5, 11, 1, 1),
        (192, 12, 3, 9, 2, 1),
        (3, 48, 6, 8, 1, 3),
    ];
    for bits in 2..=4u32 {
        let half = 1i32 << (bits - 1);
        for (in_ch, out_ch, h, w, batch, k) in shapes {
            let cp = in_ch.next_multiple_of(8);
            // weights: any byte; zero in the padding channels, as PackedIntConv builds them
            let wc = pad_in_channels(
                &codes(&mut rng, out_ch * in_ch * k * k),
                out_ch,
                in_ch,
                k * k,
                cp,
            );
            let corr: Vec<i32> = (0..out_ch)
                .map(|_| (rng.next_u64() % 200_000) as i32 - 100_000)
                .collect();
            let packed = PackedGemmInt8::conv(k, cp, out_ch, &wc, &corr);
            assert!(conv_int4::applies(&packed, k));
            // activations: signed codes of `bits` bits, zero in the padding channels
            let acts: Vec<i8> = (0..batch * cp * h * w)
                .map(|i| {
                    let c = (i / (h * w)) % cp;
                    if c < in_ch {
                        (rng.next_u64() % (2 * half) as u64) as i8 - half as i8
                    } else {
                        0
                    }
                })
                .collect();
            let bytes = pack_columns(&acts, batch, cp, h * w);
            let a = nibble_columns(&bytes, batch, cp / 4, h * w);
            // one padding code per channel: words of bytes for the byte twins, nibbles here
            let pad_bytes: Vec<u32> = (0..cp / 4)
                .map(|_| {
                    let b = std::array::from_fn::<i8, 4, _>(|_| {
                        (rng.next_u64() % (2 * half) as u64) as i8 - half as i8
                    });
                    pack_i8x4(&b)[0]
                })
                .collect();
            let pads: Vec<u32> = (0..cp / 8)
                .map(|w| nibbles_of(pad_bytes[2 * w], pad_bytes[2 * w + 1]))
                .collect();
            let want = twin(&a, &packed, batch, h, w, k, &pads);
            assert!(want.iter().all(|v| v[0] != i32::MIN));
            // the twin agrees with the byte kernels' twins on the same codes
            let bytes_want = if k == 3 {
                conv_int8(&bytes, &packed, batch, h, w, &pad_bytes)
            } else {
                gemm_int8(&bytes, &packed, batch, h * w)
            };
            assert_eq!(bytes_want, want, "twins {bits} bits {in_ch}->{out_ch} k{k}");

            let gpu = GpuGemmInt8::new(&ctx, packed).unwrap();
            let src = ctx.upload("a", &a);
            let m = ctx.acquire((want.len() * 16) as u64);
            ctx.queue
                .write_buffer(&m, 0, bytemuck::cast_slice(&vec![i32::MIN; want.len() * 4]));
            let steps = conv_int4::dispatch(
                &ctx,
                "t",
                &gpu,
                &src,
                &m,
                &Store::Sums,
                batch as u32,
                h as u32,
                w as u32,
                k as u32,
                &pads,
            )
            .unwrap();
            launch(&ctx, steps);
            let got = read_sums(&ctx, &m, want.len());
            let bad = got.iter().zip(&want).filter(|(g, w)| g != w).count();
            assert_eq!(
                bad, 0,
                "{bits} bits {in_ch}->{out_ch} {h}x{w} n{batch} k{k}: {bad} differ"
            );
            ctx.release(m);
        }
    }
}

#[test]
fn integer_kernels_write_floats_and_next_layer_codes_like_their_twins() {
    // The fused epilogue of every integer kernel (conv_int8, conv_int4 at 1x1 and 3x3,
    // gemm_int8), with SPAN's gate reading a residual: floats within a named tolerance of the
    // twin, and the next layer's packed codes (bytes and nibbles) within one step of it,
    // nearly all identical (the float epilogue may round differently on the device).
    use refqsr::kernels::cpu;
    use refqsr::kernels::int_conv::{GpuIntConv, IntInput, IntKernel, IntOutput, PackedIntConv};
    use refqsr::model::{Activation, Conv, Epilogue};
    use refqsr::quant::pack::widen;
    const FLOAT_TOL: f32 = 1e-5; // relative to the output range
    let ctx = ctx();
    let mut rng = Rng::fresh("int store");
    let (h, w) = (6, 11);
    let mut kernels_seen = Vec::new();
    // per-channel input quantizers: random steps and code ranges
    let act = |rng: &mut Rng, ch: usize, bits: u32, per_channel: bool| -> ActQuant {
        if !per_channel {
            return Quantizer::new(-1.0, 1.0, bits).into();
        }
        let lo: Vec<i32> = (0..ch)
            .map(|_| -((rng.next_u64() % (1u64 << bits)) as i32))
            .collect();
        let steps: Vec<f32> = (rng.vec(ch, 0.1, 2.0).iter().zip(&lo))
            .map(|(s, lo)| s / (lo + (1 << bits) - 1).max(1) as f32)
            .collect();
        ActQuant::per_channel(bits, &lo, &steps)
    };
    for (in_ch, out_ch, k, a_bits, next_bits, per_channel) in [
        (48, 48, 3, 8, 8, false),
        (48, 20, 3, 4, 4, false),
        (12, 48, 1, 4, 8, false),
        (40, 12, 1, 6, 3, false),
        (48, 48, 3, 8, 8, true),
        (48, 20, 3, 4, 4, true),
        (12, 48, 1, 4, 8, true),
        (40, 12, 1, 6, 3, true),
    ] {
        let conv = Conv {
            in_ch,
            out_ch,
            k,
            weights: rng.vec(out_ch * in_ch * k * k, -0.2, 0.2),
            bias: rng.vec(out_ch, -0.1, 0.1),
            act: Activation::Swish,
            epilogue: Epilogue::SpanGate(0),
        };
        let p = PackedIntConv::new(
            &conv,
            a_bits.max(4),
            act(&mut rng, in_ch, a_bits, per_channel),
        );
        kernels_seen.push(p.kernel);
        let next_conv = Conv {
            in_ch: out_ch,
            out_ch: 8,
            k: 3,
            weights: vec![0.1; 8 * out_ch * 9],
            bias: vec![0.0; 8],
            act: Activation::None,
            epilogue: Epilogue::None,
        };
        let next_act = if per_channel {
            act(&mut rng, out_ch, next_bits, true)
        } else {
            Quantizer::new(-0.6, 0.9, next_bits).into()
        };
        let next = PackedIntConv::new(&next_conv, 8, next_act);
        let x = rng.tensor(1, in_ch, h, w);
        let residual = rng.tensor(1, out_ch, h, w);
        let sums = p.twin_sums(&cpu::quantize(&x, &p.act, p.nibbles()), 1, h, w);
        let twin_float: Vec<f32> = cpu::int_store(
            &sums,
            cpu::Store::Float {
                epilogue: &p.epilogue,
                scales: &p.scales,
                residual: Some(&residual),
            },
            1,
            out_ch,
            h,
            w,
        )
        .into_iter()
        .map(f32::from_bits)
        .collect();
        let twin_codes = cpu::int_store(
            &sums,
            cpu::Store::Packed {
                epilogue: &p.epilogue,
                scales: &p.scales,
                residual: Some(&residual),
                next: &next.act,
                nibbles: next.nibbles(),
            },
            1,
            out_ch,
            h,
            w,
        );

        let gpu = GpuIntConv::new(&ctx, p.clone()).unwrap();
        let (nw, nc) = p.scratch_words(1, h * w);
        let src = ctx.upload("x", &x.data);
        let res = ctx.upload("residual", &residual.data);
        let scratch = [
            ctx.acquire(nw as u64 * 4),
            ctx.acquire(nc.max(1) as u64 * 4),
        ];
        let float_buf = ctx.acquire(twin_float.len() as u64 * 4);
        let code_buf = ctx.acquire(twin_codes.len() as u64 * 4);
        ctx.queue.write_buffer(
            &float_buf,
            0,
            bytemuck::cast_slice(&vec![f32::NAN; twin_float.len()]),
        );
        ctx.queue.write_buffer(
            &code_buf,
            0,
            bytemuck::cast_slice(&vec![0xdead_beefu32; twin_codes.len()]),
        );
        let mut steps = Vec::new();
        for output in [
            IntOutput::Float(&float_buf),
            IntOutput::Packed(&code_buf, &next),
        ] {
            steps.extend(
                gpu.dispatch(
                    &ctx,
                    "t",
                    IntInput::Float(&src),
                    Some(&res),
                    output,
                    [&scratch[0], &scratch[1]],
                    1,
                    h as u32,
                    w as u32,
                )
                .unwrap(),
            );
        }
        launch(&ctx, steps);
        let label = format!(
            "{:?} {in_ch}->{out_ch} a{a_bits} -> a{next_bits}, per channel {per_channel}",
            p.kernel
        );
        let range = twin_float.iter().fold(0f32, |m, v| m.max(v.abs()));
        let got: Vec<f32> =
            bytemuck::cast_slice(&ctx.read(&float_buf, twin_float.len() as u64 * 4).unwrap())
                .to_vec();
        let d = common::max_abs_diff(&got, &twin_float);
        assert!(d <= FLOAT_TOL * range, "{label}: floats differ by {d}");
        // codes, lane by lane (bytes, or the two byte words of each nibble word)
        let lanes = |words: &[u32]| -> Vec<i8> {
            let split: Vec<u32> = if next.nibbles() {
                words
                    .iter()
                    .flat_map(|&v| {
                        let (l, h) = widen(v);
                        [l, h]
                    })
                    .collect()
            } else {
                words.to_vec()
            };
            split
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .map(|b| b as i8)
                .collect()
        };
        let got_codes = read_u32(&ctx, &code_buf, twin_codes.len());
        let (g, t) = (lanes(&got_codes), lanes(&twin_codes));
        let far = g
            .iter()
            .zip(&t)
            .filter(|(a, b)| (**a as i32 - **b as i32).abs() > 1)
            .count();
        let off = g.iter().zip(&t).filter(|(a, b)| a != b).count();
        eprintln!(
            "{label}: float diff {d:.2e} of {range:.2}, codes off by one {off} of {}",
            t.len()
        );
        assert_eq!(far, 0, "{label}: codes more than one step apart");
        assert!(
            off * 100 <= t.len(),
            "{label}: {off} of {} codes differ",
            t.len()
        );
        for b in scratch.into_iter().chain([float_buf, code_buf]) {
            ctx.release(b);
        }
    }
    for kind in [IntKernel::Conv8, IntKernel::Conv4, IntKernel::Gemm] {
        assert!(
            kernels_seen.contains(&kind),
            "{kind:?} not covered: {kernels_seen:?}"
        );
    }
}

#[test]
fn int4_pair_kernel_matches_its_twin_and_conv_int4_bit_for_bit() {
    use refqsr::kernels::conv_int4_swar::{GpuSwar, PackedSwar};
    use refqsr::kernels::cpu::{conv_int4, conv_int4_swar as twin};
    use refqsr::kernels::int_conv::pad_in_channels;
    use refqsr::quant::pack::nibbles_of;
    let ctx = ctx();
    let mut rng = Rng::fresh("conv_int4_swar");
    // the largest layers the halves hold exactly, and the first they do not
    assert!(PackedSwar::applies(3, 48, 4, 4) && PackedSwar::applies(1, 192, 4, 4));
    assert!(!PackedSwar::applies(3, 64, 4, 4) && !PackedSwar::applies(3, 48, 5, 4));
    let shapes: [(usize, usize, usize, usize, usize, usize); 5] = [
        (48, 48, 9, 13, 1, 3),
        (5, 7, 3, 2, 2, 3),
        (12, 20, 1, 1, 1, 3),
        (192, 12, 3, 9, 2, 1),
        (3, 48, 6, 8, 1, 3),
    ];
    for bits in 2..=4u32 {
        let half = 1i32 << (bits - 1);
        for (case, (in_ch, out_ch, h, w, batch, k)) in shapes.into_iter().enumerate() {
            // the first case at every extreme: |sums| at the bound of the halves
            let extreme = case == 0;
            let mut draw = |n: usize| -> Vec<i8> {
                (0..n)
                    .map(|_| match extreme {
                        true => -half as i8,
                        false => (rng.next_u64() % (2 * half) as u64) as i8 - half as i8,
                    })
                    .collect()
            };
            let wc = draw(out_ch * in_ch * k * k);
            let corr: Vec<i32> = (0..out_ch).map(|o| o as i32 * 1000 - 7000).collect();
            let swar = PackedSwar::new(k, in_ch, out_ch, &wc, &corr);
            // conv_int4's layout of the same weights: channels padded to 8
            let cp = in_ch.next_multiple_of(8);
            let padded = pad_in_channels(&wc, out_ch, in_ch, k * k, cp);
            let bytes_w = PackedGemmInt8::conv(k, cp, out_ch, &padded, &corr);
            let acts = draw(batch * cp * h * w);
            let acts: Vec<i8> = acts
                .iter()
                .enumerate()
                .map(|(i, &v)| if (i / (h * w)) % cp < in_ch { v } else { 0 })
                .collect();
            let bytes = pack_columns(&acts, batch, cp, h * w);
            let a = nibble_columns(&bytes, batch, cp / 4, h * w);
            // a different padding code in every word, the extremes among them
            let pads: Vec<u32> = (0..cp / 8)
                .map(|w| {
                    let code = [-half, half - 1, 0][w % 3] as i8;
                    let b = pack_i8x4(&[code; 4])[0];
                    nibbles_of(b, b)
                })
                .collect();
            let want = twin(&a, &swar, batch, h, w, &pads);
            let label = format!("{bits} bits {in_ch}->{out_ch} {h}x{w} k{k}");
            assert_eq!(
                want,
                conv_int4(&a, &bytes_w, batch, h, w, k, &pads),
                "twins, {label}"
            );

            let gpu = GpuSwar::new(&ctx, swar).unwrap();
            let src = ctx.upload("a", &a);
            let m = ctx.acquire((want.len() * 16) as u64);
            ctx.queue
                .write_buffer(&m, 0, bytemuck::cast_slice(&vec![i32::MIN; want.len() * 4]));
            let steps = gpu.dispatch(
                &ctx,
                "t",
                &src,
                &m,
                &Store::Sums,
                batch as u32,
                h as u32,
                w as u32,
                &pads,
            );
            launch(&ctx, steps);
            let got = read_sums(&ctx, &m, want.len());
            let bad = got.iter().zip(&want).filter(|(g, w)| g != w).count();
            assert_eq!(bad, 0, "GPU, {label}: {bad} differ");
            ctx.release(m);
        }
    }
}
