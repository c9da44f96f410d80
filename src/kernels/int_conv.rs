//! A convolution computed in integers: quantize the input (Eq. 1, `a` bits), the exact i32
//! sums with per-channel `w`-bit weight codes (zero points folded into `corr`): `conv_int8`
//! for 3x3, `gemm_int8` for 1x1 and, past `conv_int8`'s limits, `im2col_int8` + `gemm_int8`;
//! then back to floats with the epilogue (`dequant`). Features travel in f32 between layers,
//! so the float path covers every op the integer path does not.

use super::conv::EpilogueParams;
use super::gemm_int8::{GpuGemmInt8, PackedGemmInt8};
use super::{conv_int8, dequant, im2col_int8, quantize, Dispatch};
use crate::error::Result;
use crate::gpu::Context;
use crate::model::Conv;
use crate::quant::pack::pack_i8x4;
use crate::quant::{weight_quantizers, Quantizer};

/// Everything about one integer convolution that does not depend on the image.
#[derive(Debug, Clone)]
pub struct PackedIntConv {
    pub k: usize,
    pub in_ch: usize,
    pub out_ch: usize,
    /// The input activations' quantizer.
    pub act: Quantizer,
    /// Weight codes `[o][i][ky][kx]`, each in the `w`-bit two's complement range.
    pub codes: Vec<i8>,
    pub gemm: PackedGemmInt8,
    /// Per output channel: weight step x activation step.
    pub scales: Vec<f32>,
    pub epilogue: EpilogueParams,
}

impl PackedIntConv {
    /// Quantize `c` with per-channel `w_bits` weights and activations in `[alpha, beta]` at
    /// `a_bits` (the range must contain 0, the padding value).
    pub fn new(c: &Conv, w_bits: u32, act: Quantizer) -> Self {
        Self::with_quantizers(c, &weight_quantizers(&c.weights, c.out_ch, w_bits), act)
    }

    /// Quantize `c` with the given per-output-channel weight quantizers (all of one bit-width).
    pub fn with_quantizers(c: &Conv, wq: &[Quantizer], act: Quantizer) -> Self {
        assert!(
            act.alpha <= 0.0 && act.beta >= 0.0,
            "activation range must contain 0"
        );
        assert_eq!(wq.len(), c.out_ch);
        let w_bits = wq[0].bits;
        let per = c.in_ch * c.k * c.k;
        let (lo, hi) = (-(1i32 << (w_bits - 1)), (1i32 << (w_bits - 1)) - 1);
        let codes: Vec<i8> = c
            .weights
            .iter()
            .enumerate()
            .map(|(i, &v)| wq[i / per].code(v).clamp(lo, hi) as i8)
            .collect();
        let zero = act.zero_point();
        let corr: Vec<i32> = codes
            .chunks(per)
            .map(|w| zero * w.iter().map(|&v| v as i32).sum::<i32>())
            .collect();
        PackedIntConv {
            k: c.k,
            in_ch: c.in_ch,
            out_ch: c.out_ch,
            gemm: PackedGemmInt8::conv(c.k, c.in_ch, c.out_ch, &codes, &corr),
            scales: wq.iter().map(|q| q.step() * act.step()).collect(),
            codes,
            act,
            epilogue: EpilogueParams::new(c),
        }
    }

    /// The packed word of four real zeros (the convolution's padding).
    pub fn pad_word(&self) -> u32 {
        pack_i8x4(&[(-self.act.zero_point()) as i8; 4])[0]
    }

    /// How the sums are computed: 1x1 products read the packed input as is, 3x3 ones run
    /// `conv_int8` where it applies, an im2col gather and the product otherwise.
    fn gathers(&self) -> bool {
        self.k != 1 && !conv_int8::applies(&self.gemm, self.k)
    }

    /// Scratch words for `batch` images of `plane` pixels: (packed input, gathered columns;
    /// 0 when there is no gather).
    pub fn scratch_words(&self, batch: usize, plane: usize) -> (usize, usize) {
        let icg = self.in_ch.div_ceil(4);
        let cols = if self.gathers() {
            batch * self.k * self.k * icg * plane
        } else {
            0
        };
        (batch * icg * plane, cols)
    }
}

/// An integer convolution resident on the device.
pub struct GpuIntConv {
    pub packed: PackedIntConv,
    gemm: GpuGemmInt8,
    scales: wgpu::Buffer,
    vecs: wgpu::Buffer,
}

impl GpuIntConv {
    pub fn new(ctx: &Context, packed: PackedIntConv) -> Result<Self> {
        let mut scales = packed.scales.clone();
        scales.resize(packed.out_ch.div_ceil(4) * 4, 0.0);
        Ok(GpuIntConv {
            gemm: GpuGemmInt8::new(ctx, packed.gemm.clone())?,
            scales: ctx.upload("int conv scales", &scales),
            vecs: ctx.upload(
                "int conv bias",
                &packed.epilogue.vecs(packed.out_ch.div_ceil(4)),
            ),
            packed,
        })
    }

    /// Record the four steps over `batch` images of `h` x `w`, with scratch buffers for the
    /// packed input and columns ([`PackedIntConv::scratch_words`]) and the i32 sums
    /// (`batch x ceil(out_ch / 4) x h x w` vec4).
    #[allow(clippy::too_many_arguments)]
    pub fn dispatch(
        &self,
        ctx: &Context,
        label: &str,
        src: &wgpu::Buffer,
        residual: Option<&wgpu::Buffer>,
        dst: &wgpu::Buffer,
        packed_in: &wgpu::Buffer,
        cols: &wgpu::Buffer,
        sums: &wgpu::Buffer,
        batch: u32,
        h: u32,
        w: u32,
    ) -> Result<Vec<Dispatch>> {
        let p = &self.packed;
        let (icg, plane) = (p.in_ch.div_ceil(4) as u32, h * w);
        let mut out = vec![quantize::dispatch(
            ctx,
            label,
            &p.act,
            src,
            packed_in,
            batch,
            p.in_ch as u32,
            plane,
        )?];
        if p.gathers() {
            out.push(im2col_int8::dispatch(
                ctx,
                label,
                packed_in,
                cols,
                batch,
                icg,
                h,
                w,
                p.k as u32,
                p.pad_word(),
            )?);
            out.extend(self.gemm.dispatch(ctx, label, cols, sums, batch, plane));
        } else if p.k == 1 {
            out.extend(
                self.gemm
                    .dispatch(ctx, label, packed_in, sums, batch, plane),
            );
        } else {
            out.extend(conv_int8::dispatch(
                ctx,
                label,
                &self.gemm,
                packed_in,
                sums,
                batch,
                h,
                w,
                p.pad_word(),
            )?);
        }
        out.push(dequant::dispatch(
            ctx,
            label,
            &p.epilogue,
            sums,
            &self.scales,
            &self.vecs,
            residual,
            dst,
            batch,
            p.out_ch as u32,
            plane,
        )?);
        Ok(out)
    }
}

/// Run a small known integer convolution (8 -> 8 channels, 3x3, 5 x 7 pixels, codes across the
/// whole 8-bit range) on the device and compare its i32 sums with the CPU twins bit for bit:
/// some drivers advertise integer dot products and compute them wrong. Runs once per device;
/// `Err` says what differed.
pub fn self_check(ctx: &Context) -> std::result::Result<(), String> {
    ctx.int_check.get_or_init(|| check(ctx)).clone()
}

fn check(ctx: &Context) -> std::result::Result<(), String> {
    use crate::kernels::cpu;
    use crate::model::{Activation, Epilogue};
    let (c, h, w) = (8usize, 5usize, 7usize);
    // a fixed pseudo-random pattern: deterministic, so a failure reproduces
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let conv = Conv {
        in_ch: c,
        out_ch: c,
        k: 3,
        weights: (0..c * c * 9).map(|_| next()).collect(),
        bias: vec![0.0; c],
        act: Activation::None,
        epilogue: Epilogue::None,
    };
    let x = cpu::Tensor::from_nchw(
        1,
        c,
        h,
        w,
        &(0..c * h * w).map(|_| 1.2 * next()).collect::<Vec<_>>(),
    );
    let p = PackedIntConv::new(&conv, 8, Quantizer::new(-1.0, 1.0, 8));
    let cols = cpu::im2col_int8(&cpu::quantize(&x, &p.act), 1, 2, h, w, 3, p.pad_word());
    let want: Vec<i32> = cpu::gemm_int8(&cols, &p.gemm, 1, h * w).concat();

    let fail = |e: crate::error::Error| e.to_string();
    let gpu = GpuIntConv::new(ctx, p.clone()).map_err(fail)?;
    let (nw, nc) = p.scratch_words(1, h * w);
    let src = ctx.upload("self-check input", &x.data);
    let bytes = (2 * h * w * 16) as u64;
    let (packed, col_buf, sums, dst) = (
        ctx.acquire(nw as u64 * 4),
        ctx.acquire(nc as u64 * 4),
        ctx.acquire(bytes),
        ctx.acquire(bytes),
    );
    ctx.queue
        .write_buffer(&sums, 0, bytemuck::cast_slice(&vec![i32::MIN; want.len()]));
    let steps = gpu
        .dispatch(
            ctx,
            "self-check",
            &src,
            None,
            &dst,
            &packed,
            &col_buf,
            &sums,
            1,
            h as u32,
            w as u32,
        )
        .map_err(fail)?;
    let steps: Vec<super::Step> = steps.into_iter().map(super::Step::Launch).collect();
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    super::encode(&steps, &mut encoder);
    ctx.queue.submit([encoder.finish()]);
    let got = ctx.read(&sums, bytes).map_err(fail)?;
    for b in [packed, col_buf, sums, dst] {
        ctx.release(b);
    }
    let got: &[i32] = bytemuck::cast_slice(&got);
    match got.iter().zip(&want).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(i) => Err(format!(
            "the integer self-check convolution differs from the CPU at sum {i}: {} instead of {}",
            got[i], want[i]
        )),
    }
}
