//! A convolution computed in integers: quantize the input (Eq. 1, `a` bits), gather K x K
//! neighbourhoods (`im2col_int8`), the exact i32 product with per-channel `w`-bit weight codes
//! (`gemm_int8`, zero points folded into `corr`), then back to floats with the epilogue
//! (`dequant`). Features still travel in f32 between layers; the graph does not use this yet
//! (issue 3 wires it into the modes).

use super::conv::EpilogueParams;
use super::gemm_int8::{GpuGemmInt8, PackedGemmInt8};
use super::{dequant, im2col_int8, quantize, Dispatch};
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
        assert!(
            act.alpha <= 0.0 && act.beta >= 0.0,
            "activation range must contain 0"
        );
        let wq = weight_quantizers(&c.weights, c.out_ch, w_bits);
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

    /// Scratch words for `batch` images of `plane` pixels: (packed input, gathered columns).
    pub fn scratch_words(&self, batch: usize, plane: usize) -> (usize, usize) {
        let icg = self.in_ch.div_ceil(4);
        (batch * icg * plane, batch * self.k * self.k * icg * plane)
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
        let mut out = vec![
            quantize::dispatch(
                ctx,
                label,
                &p.act,
                src,
                packed_in,
                batch,
                p.in_ch as u32,
                plane,
            )?,
            im2col_int8::dispatch(
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
            )?,
        ];
        out.extend(self.gemm.dispatch(ctx, label, cols, sums, batch, plane));
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
