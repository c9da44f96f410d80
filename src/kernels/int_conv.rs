//! A convolution computed in integers: the input quantized (Eq. 1, `a` bits) unless the
//! previous integer layer already wrote it packed; the exact i32 sums with per-channel
//! `w`-bit weight codes (zero points folded into `corr`) by `conv_int4` (activations of at
//! most 4 bits, nibble-packed), `conv_int8` (3x3), `gemm_int8` (1x1) or, past their limits,
//! `im2col_int8` + `gemm_int8`; and in the same kernel the epilogue (`int_store`), which
//! writes floats, or the packed input of the next integer layer. Any op the integer path
//! does not cover reads floats, so every model runs in every mode.

use super::conv_int4_swar::{GpuSwar, PackedSwar};
use super::gemm_int8::{GpuGemmInt8, PackedGemmInt8};
use super::int_store::{IntEpilogue, Store};
use super::{conv_int4, conv_int8, im2col_int8, quantize, Dispatch};
use crate::error::Result;
use crate::gpu::{Context, IntDot};
use crate::kernels::conv::EpilogueParams;
use crate::model::Conv;
use crate::quant::pack::{nibbles_of, pack_i8x4};
use crate::quant::{weight_quantizers, ActQuant, Quantizer};

/// Which kernel computes the sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntKernel {
    /// `conv_int4` on nibble-packed input (1x1 or 3x3, activations of at most 4 bits).
    Conv4,
    /// `conv_int8` (3x3).
    Conv8,
    /// `gemm_int8` on the packed input as is (1x1).
    Gemm,
    /// `im2col_int8`, then `gemm_int8`.
    Gather,
}

/// Everything about one integer convolution that does not depend on the image.
#[derive(Debug, Clone)]
pub struct PackedIntConv {
    pub k: usize,
    pub in_ch: usize,
    pub out_ch: usize,
    /// The input activations' quantizer (one step per channel, or one for all).
    pub act: ActQuant,
    pub w_bits: u32,
    /// Weight codes `[o][i][ky][kx]`, each in the `w`-bit two's complement range.
    pub codes: Vec<i8>,
    /// The weights in the kernels' layout (input channels padded to 8 for `Conv4`).
    pub gemm: PackedGemmInt8,
    pub kernel: IntKernel,
    /// Per output channel: the step of the folded weights (which carry the activation steps,
    /// see [`ActQuant::fold`]).
    pub scales: Vec<f32>,
    pub epilogue: EpilogueParams,
}

impl PackedIntConv {
    /// Quantize `c` with per-channel `w_bits` weights (min/max bounds) and input quantizer
    /// `act` (its range must contain 0, the padding value).
    pub fn new(c: &Conv, w_bits: u32, act: impl Into<ActQuant>) -> Self {
        let act = act.into();
        let folded = act.fold_conv(c);
        Self::with_quantizers(
            &folded,
            &weight_quantizers(&folded.weights, c.out_ch, w_bits),
            act,
        )
    }

    /// Quantize `c`, whose weights are already folded with `act`'s steps
    /// ([`ActQuant::fold`]), with the given per-output-channel quantizers of those folded
    /// weights (all of one bit-width).
    pub fn with_quantizers(c: &Conv, wq: &[Quantizer], act: ActQuant) -> Self {
        assert_eq!(wq.len(), c.out_ch);
        assert!(
            act.channels()
                .iter()
                .all(|q| q.alpha <= 0.0 && q.beta >= 0.0),
            "activation range must contain 0"
        );
        assert!(
            !act.is_per_channel() || act.channels().len() == c.in_ch,
            "{} activation steps for {} channels",
            act.channels().len(),
            c.in_ch
        );
        let w_bits = wq[0].bits;
        let per = c.in_ch * c.k * c.k;
        let (lo, hi) = (-(1i32 << (w_bits - 1)), (1i32 << (w_bits - 1)) - 1);
        let codes: Vec<i8> = c
            .weights
            .iter()
            .enumerate()
            .map(|(i, &v)| wq[i / per].code(v).clamp(lo, hi) as i8)
            .collect();
        // each input channel's zero point times its weights' sum, one term per output channel
        let taps = c.k * c.k;
        let corr: Vec<i32> = codes
            .chunks(per)
            .map(|w| {
                (w.chunks(taps).enumerate())
                    .map(|(i, t)| act.zero_point(i) * t.iter().map(|&v| v as i32).sum::<i32>())
                    .sum()
            })
            .collect();
        let (gemm, kernel) = Self::layout(c.k, c.in_ch, c.out_ch, w_bits, act.bits, &codes, &corr);
        PackedIntConv {
            k: c.k,
            in_ch: c.in_ch,
            out_ch: c.out_ch,
            gemm,
            kernel,
            scales: wq.iter().map(|q| q.step()).collect(),
            codes,
            act,
            w_bits,
            epilogue: EpilogueParams::new(c),
        }
    }

    /// The weights' layout and kernel: nibble input where weights and activations fit 4 bits
    /// and `conv_int4` takes the shape, else bytes.
    ///
    /// Wider weights (w6a4, RefQSR 8-4's queries) take the byte kernels although their
    /// activations would fit nibbles: their sums overflow the 16-bit lanes of the SWAR kernel,
    /// and `conv_int4` without SWAR, which unpacks every nibble word into two byte words
    /// before its dot products, measured 1.3-1.5x slower than `conv_int8`/`gemm_int8` on
    /// lavapipe (`refqsr bench --modes w6a4`, BENCHMARKS.md).
    fn layout(
        k: usize,
        in_ch: usize,
        out_ch: usize,
        w_bits: u32,
        a_bits: u32,
        codes: &[i8],
        corr: &[i32],
    ) -> (PackedGemmInt8, IntKernel) {
        if a_bits <= 4 && w_bits <= 4 && (k == 1 || k == 3) {
            let cp = in_ch.next_multiple_of(8);
            let padded = pad_in_channels(codes, out_ch, in_ch, k * k, cp);
            let gemm = PackedGemmInt8::conv(k, cp, out_ch, &padded, corr);
            if conv_int4::applies(&gemm, k) {
                return (gemm, IntKernel::Conv4);
            }
        }
        let gemm = PackedGemmInt8::conv(k, in_ch, out_ch, codes, corr);
        let kernel = if k == 1 {
            IntKernel::Gemm
        } else if conv_int8::applies(&gemm, k) {
            IntKernel::Conv8
        } else {
            IntKernel::Gather
        };
        (gemm, kernel)
    }

    /// Whether the packed input holds eight channels per word (nibbles) rather than four.
    pub fn nibbles(&self) -> bool {
        self.kernel == IntKernel::Conv4
    }

    /// The packed word of real zeros (the convolution's padding) of each input word.
    pub fn pad_words(&self) -> Vec<u32> {
        let group = |g: usize| {
            pack_i8x4(&std::array::from_fn::<i8, 4, _>(|l| {
                self.act.pad_byte(4 * g + l)
            }))[0]
        };
        (0..self.input_words())
            .map(|w| {
                if self.nibbles() {
                    nibbles_of(group(2 * w), group(2 * w + 1))
                } else {
                    group(w)
                }
            })
            .collect()
    }

    /// Packed words of the input per pixel.
    pub fn input_words(&self) -> usize {
        self.in_ch.div_ceil(if self.nibbles() { 8 } else { 4 })
    }

    /// Scratch words for `batch` images of `plane` pixels: (packed input, gathered columns;
    /// 0 when there is no gather).
    pub fn scratch_words(&self, batch: usize, plane: usize) -> (usize, usize) {
        let cols = match self.kernel {
            IntKernel::Gather => batch * self.k * self.k * self.in_ch.div_ceil(4) * plane,
            _ => 0,
        };
        (batch * self.input_words() * plane, cols)
    }

    /// The CPU twin of the sums [`GpuIntConv`] computes from the packed input `a`.
    pub fn twin_sums(&self, a: &[u32], batch: usize, h: usize, w: usize) -> Vec<[i32; 4]> {
        use super::cpu;
        match self.kernel {
            IntKernel::Conv4 => {
                cpu::conv_int4(a, &self.gemm, batch, h, w, self.k, &self.pad_words())
            }
            IntKernel::Conv8 => cpu::conv_int8(a, &self.gemm, batch, h, w, &self.pad_words()),
            IntKernel::Gemm => cpu::gemm_int8(a, &self.gemm, batch, h * w),
            IntKernel::Gather => {
                let icg = self.in_ch.div_ceil(4);
                let cols = cpu::im2col_int8(a, batch, icg, h, w, self.k, &self.pad_words());
                cpu::gemm_int8(&cols, &self.gemm, batch, h * w)
            }
        }
    }
}

/// Weight codes `[o][i][tap]` of `in_ch` inputs widened to `cp` inputs, the new ones zero
/// (the layout `conv_int4` reads: whole 8-channel words).
pub fn pad_in_channels(
    codes: &[i8],
    out_ch: usize,
    in_ch: usize,
    taps: usize,
    cp: usize,
) -> Vec<i8> {
    let mut padded = vec![0i8; out_ch * cp * taps];
    for (o, row) in codes.chunks(in_ch * taps).enumerate() {
        padded[o * cp * taps..o * cp * taps + in_ch * taps].copy_from_slice(row);
    }
    padded
}

/// Where an integer convolution's input comes from.
#[derive(Clone, Copy)]
pub enum IntInput<'a> {
    /// C4HW floats, quantized first.
    Float(&'a wgpu::Buffer),
    /// Already packed for this layer (by the previous integer layer).
    Packed(&'a wgpu::Buffer),
}

/// What an integer convolution writes.
#[derive(Clone, Copy)]
pub enum IntOutput<'a> {
    /// The raw i32 sums (the device self-check).
    Sums(&'a wgpu::Buffer),
    /// C4HW floats.
    Float(&'a wgpu::Buffer),
    /// The packed input of `next`, the integer layer that reads the result.
    Packed(&'a wgpu::Buffer, &'a PackedIntConv),
}

/// An integer convolution resident on the device.
pub struct GpuIntConv {
    pub packed: PackedIntConv,
    gemm: GpuGemmInt8,
    /// `conv_int4`'s sums two multiply-accumulates per multiply, where the device has no
    /// hardware dot product and the layer's sums fit (see [`PackedSwar::applies`]).
    swar: Option<GpuSwar>,
    epilogue: IntEpilogue,
}

impl GpuIntConv {
    pub fn new(ctx: &Context, packed: PackedIntConv) -> Result<Self> {
        let p = &packed;
        let software =
            ctx.info.device_type == wgpu::DeviceType::Cpu || ctx.int_dot == IntDot::Emulated;
        let swar = (p.kernel == IntKernel::Conv4
            && software
            && PackedSwar::applies(p.k, p.in_ch, p.w_bits, p.act.bits))
        .then(|| {
            let corr: Vec<i32> = p
                .gemm
                .corr
                .iter()
                .flatten()
                .copied()
                .take(p.out_ch)
                .collect();
            GpuSwar::new(
                ctx,
                PackedSwar::new(p.k, p.in_ch, p.out_ch, &p.codes, &corr),
            )
        })
        .transpose()?;
        Ok(GpuIntConv {
            swar,
            gemm: GpuGemmInt8::new(ctx, packed.gemm.clone())?,
            epilogue: IntEpilogue::new(ctx, packed.epilogue.clone(), &packed.scales, packed.out_ch),
            packed,
        })
    }

    /// Record the layer over `batch` images of `h` x `w`, with `scratch` buffers for the
    /// packed input and the gathered columns ([`PackedIntConv::scratch_words`]).
    #[allow(clippy::too_many_arguments)]
    pub fn dispatch(
        &self,
        ctx: &Context,
        label: &str,
        input: IntInput<'_>,
        residual: Option<&wgpu::Buffer>,
        output: IntOutput<'_>,
        scratch: [&wgpu::Buffer; 2],
        batch: u32,
        h: u32,
        w: u32,
    ) -> Result<Vec<Dispatch>> {
        let p = &self.packed;
        let plane = h * w;
        let mut out = Vec::new();
        let a = match input {
            IntInput::Packed(a) => a,
            IntInput::Float(src) => {
                out.push(quantize::dispatch(
                    ctx,
                    label,
                    &p.act,
                    src,
                    scratch[0],
                    batch,
                    p.in_ch as u32,
                    plane,
                    p.nibbles(),
                )?);
                scratch[0]
            }
        };
        let epilogue = &self.epilogue;
        let (dst, store) = match output {
            IntOutput::Sums(dst) => (dst, Store::Sums),
            IntOutput::Float(dst) => (dst, Store::Float { epilogue, residual }),
            IntOutput::Packed(dst, next) => (
                dst,
                Store::Packed {
                    epilogue,
                    residual,
                    next: &next.act,
                    nibbles: next.nibbles(),
                },
            ),
        };
        match (p.kernel, &self.swar) {
            (IntKernel::Conv4, Some(swar)) => {
                out.extend(swar.dispatch(ctx, label, a, dst, &store, batch, h, w, &p.pad_words()))
            }
            (IntKernel::Conv4, None) => out.extend(conv_int4::dispatch(
                ctx,
                label,
                &self.gemm,
                a,
                dst,
                &store,
                batch,
                h,
                w,
                p.k as u32,
                &p.pad_words(),
            )?),
            (IntKernel::Conv8, _) => out.extend(conv_int8::dispatch(
                ctx,
                label,
                &self.gemm,
                a,
                dst,
                &store,
                batch,
                h,
                w,
                &p.pad_words(),
            )?),
            (IntKernel::Gemm, _) => {
                out.extend(self.gemm.dispatch(ctx, label, a, dst, &store, batch, plane))
            }
            (IntKernel::Gather, _) => {
                out.push(im2col_int8::dispatch(
                    ctx,
                    label,
                    a,
                    scratch[1],
                    batch,
                    p.in_ch.div_ceil(4) as u32,
                    h,
                    w,
                    p.k as u32,
                    &p.pad_words(),
                )?);
                out.extend(
                    self.gemm
                        .dispatch(ctx, label, scratch[1], dst, &store, batch, plane),
                );
            }
        }
        Ok(out)
    }
}

/// Run small known integer convolutions on the device and compare them with the CPU twins:
/// 8 -> 8 channels on 5 x 7 pixels, codes across the whole range, a 3x3 at 8 bits through
/// `conv_int8`, a 3x3 at 4 bits through `conv_int4`, a 1x1 at 8 bits through `gemm_int8`
/// (their i32 sums bit for bit), and the 3x3 at 8 bits writing the next layer's packed
/// codes through the requantizing store (each code within one step of the twin's: the float
/// rounding before requantization may differ by an ulp). Some drivers advertise integer dot
/// products and compute them wrong. Runs once per device; `Err` says what differed.
pub fn self_check(ctx: &Context) -> std::result::Result<(), String> {
    ctx.int_check.get_or_init(|| check(ctx)).clone()
}

fn check(ctx: &Context) -> std::result::Result<(), String> {
    use crate::kernels::cpu;
    use crate::model::{Activation, Epilogue};
    if ctx.injected(crate::gpu::Fault::SelfCheck) {
        return Err("the integer self-check failed (injected fault)".into());
    }
    let (c, h, w) = (8usize, 5usize, 7usize);
    // a fixed pseudo-random pattern: deterministic, so a failure reproduces
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let mut conv = |k: usize| Conv {
        in_ch: c,
        out_ch: c,
        k,
        weights: (0..c * c * k * k).map(|_| next()).collect(),
        bias: vec![0.0; c],
        act: Activation::None,
        epilogue: Epilogue::None,
    };
    let (conv3, conv1) = (conv(3), conv(1));
    let x = cpu::Tensor::from_nchw(
        1,
        c,
        h,
        w,
        &(0..c * h * w).map(|_| 1.2 * next()).collect::<Vec<_>>(),
    );
    let fail = |e: crate::error::Error| e.to_string();
    let next_layer = PackedIntConv::new(&conv3, 8, Quantizer::new(-2.0, 2.0, 8));
    // (conv, bits, requantize into `next_layer`)
    for (conv, bits, requantize) in [
        (&conv3, 8, false),
        (&conv3, 4, false),
        (&conv1, 8, false),
        (&conv3, 8, true),
    ] {
        let p = PackedIntConv::new(conv, bits, Quantizer::new(-1.0, 1.0, bits));
        let sums = p.twin_sums(&cpu::quantize(&x, &p.act, p.nibbles()), 1, h, w);
        let want: Vec<u32> = if requantize {
            cpu::int_store(
                &sums,
                cpu::Store::Packed {
                    epilogue: &p.epilogue,
                    scales: &p.scales,
                    residual: None,
                    next: &next_layer.act,
                    nibbles: next_layer.nibbles(),
                },
                1,
                c,
                h,
                w,
            )
        } else {
            sums.concat().iter().map(|&v| v as u32).collect()
        };
        let gpu = GpuIntConv::new(ctx, p.clone()).map_err(fail)?;
        let (nw, nc) = p.scratch_words(1, h * w);
        let src = ctx.upload("self-check input", &x.data);
        let bytes = (want.len() * 4) as u64;
        let (packed, col_buf, out) = (
            ctx.acquire(nw.max(1) as u64 * 4),
            ctx.acquire(nc.max(1) as u64 * 4),
            ctx.acquire(bytes),
        );
        ctx.queue.write_buffer(
            &out,
            0,
            bytemuck::cast_slice(&vec![0xdead_beefu32; want.len()]),
        );
        let output = if requantize {
            IntOutput::Packed(&out, &next_layer)
        } else {
            IntOutput::Sums(&out)
        };
        let steps = gpu
            .dispatch(
                ctx,
                "self-check",
                IntInput::Float(&src),
                None,
                output,
                [&packed, &col_buf],
                1,
                h as u32,
                w as u32,
            )
            .map_err(fail)?;
        let steps: Vec<super::Step> = steps.into_iter().map(super::Step::Launch).collect();
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        super::encode(&steps, &mut encoder);
        ctx.submit(encoder.finish());
        let got = ctx.read(&out, bytes).map_err(fail)?;
        for b in [packed, col_buf, out] {
            ctx.release(b);
        }
        let got: &[u32] = bytemuck::cast_slice(&got);
        let what = if requantize {
            "requantizing store"
        } else {
            "convolution"
        };
        let bad = if requantize {
            // byte lanes within one code step
            got.iter().zip(&want).position(|(a, b)| {
                a.to_le_bytes()
                    .iter()
                    .zip(b.to_le_bytes())
                    .any(|(x, y)| (*x as i8 as i32 - y as i8 as i32).abs() > 1)
            })
        } else {
            got.iter().zip(&want).position(|(a, b)| a != b)
        };
        if let Some(i) = bad {
            return Err(format!(
                "the {bits}-bit {k}x{k} integer self-check {what} ({:?}) differs from the CPU at \
                 word {i}: {:#010x} instead of {:#010x}",
                p.kernel,
                got[i],
                want[i],
                k = conv.k
            ));
        }
    }
    Ok(())
}
