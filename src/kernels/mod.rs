//! Kernel launchers: one Rust file per shader in `shaders/`, each with its CPU twin in `cpu/`.
//!
//! A launcher knows its shader's override constants, binding order, uniform layout and
//! dispatch size; [`crate::exec`] strings launches together into a plan.

pub mod argmax;
pub mod binary;
pub mod concat;
pub mod conv;
pub mod conv_int4;
pub mod conv_int4_swar;
pub mod conv_int8;
pub mod cost_volume;
pub mod cpu;
pub mod gemm;
pub mod gemm_int8;
pub mod im2col_int8;
pub mod int_conv;
pub mod int_store;
pub mod interp;
pub mod peak_dot;
pub mod peak_fma;
pub mod pixel_shuffle;
pub mod quantize;
pub mod refer_prep;
pub mod unary;
pub mod warp;
pub mod winograd;
pub mod winograd_input;
pub mod winograd_output;

const COMMON: &str = include_str!("../../shaders/shared/common.wgsl");
const EPILOGUE: &str = include_str!("../../shaders/shared/epilogue.wgsl");
const INT_STORE: &str = include_str!("../../shaders/shared/int_store.wgsl");

/// Shaders that end in the convolutions' epilogue (and declare what it reads).
const WITH_EPILOGUE: &[&str] = &[
    "conv",
    "gemm",
    "winograd_output",
    "gemm_int8",
    "conv_int8",
    "conv_int4",
    "conv_int4_swar",
];
/// Integer shaders that also end in the integer store (after the epilogue).
const WITH_INT_STORE: &[&str] = &["gemm_int8", "conv_int8", "conv_int4", "conv_int4_swar"];

/// Every shader by name, as written in `shaders/`.
pub const SHADERS: &[(&str, &str)] = &[
    ("conv", include_str!("../../shaders/conv.wgsl")),
    ("binary", include_str!("../../shaders/binary.wgsl")),
    ("unary", include_str!("../../shaders/unary.wgsl")),
    ("concat", include_str!("../../shaders/concat.wgsl")),
    (
        "pixel_shuffle",
        include_str!("../../shaders/pixel_shuffle.wgsl"),
    ),
    ("interp", include_str!("../../shaders/interp.wgsl")),
    (
        "winograd_input",
        include_str!("../../shaders/winograd_input.wgsl"),
    ),
    ("gemm", include_str!("../../shaders/gemm.wgsl")),
    ("gemm_int8", include_str!("../../shaders/gemm_int8.wgsl")),
    ("conv_int8", include_str!("../../shaders/conv_int8.wgsl")),
    ("quantize", include_str!("../../shaders/quantize.wgsl")),
    ("conv_int4", include_str!("../../shaders/conv_int4.wgsl")),
    (
        "conv_int4_swar",
        include_str!("../../shaders/conv_int4_swar.wgsl"),
    ),
    (
        "im2col_int8",
        include_str!("../../shaders/im2col_int8.wgsl"),
    ),
    (
        "winograd_output",
        include_str!("../../shaders/winograd_output.wgsl"),
    ),
    ("refer_prep", include_str!("../../shaders/refer_prep.wgsl")),
    (
        "cost_volume",
        include_str!("../../shaders/cost_volume.wgsl"),
    ),
    ("argmax", include_str!("../../shaders/argmax.wgsl")),
    ("warp", include_str!("../../shaders/warp.wgsl")),
    ("peak_fma", include_str!("../../shaders/peak_fma.wgsl")),
    ("peak_dot", include_str!("../../shaders/peak_dot.wgsl")),
];

/// The complete WGSL of a shader: shared helpers followed by the kernel.
pub fn source(name: &str) -> Option<String> {
    let (_, kernel) = SHADERS.iter().find(|(n, _)| *n == name)?;
    let pick = |list: &[&str], text: &'static str| if list.contains(&name) { text } else { "" };
    let epilogue = pick(WITH_EPILOGUE, EPILOGUE);
    let store = pick(WITH_INT_STORE, INT_STORE);
    Some(format!("{COMMON}\n{epilogue}\n{store}\n{kernel}"))
}

/// One recorded kernel launch.
pub struct Dispatch {
    pub label: String,
    pub pipeline: std::sync::Arc<wgpu::ComputePipeline>,
    pub bind_group: wgpu::BindGroup,
    pub workgroups: [u32; 3],
}

/// Weight matrices split into slices of at most [`conv::SLICE_MATS`], each bound on its own as
/// a 64 KiB uniform buffer (the binding size WebGPU guarantees): the kernels index a slice
/// with workgroup-uniform offsets, which SIMD drivers turn into scalar loads.
pub struct UniformSlices {
    buffer: wgpu::Buffer,
    /// Byte distance between slices (aligned for uniform binding offsets).
    stride: u64,
}

impl UniformSlices {
    /// Upload `slices` (each at most [`conv::SLICE_MATS`] matrices, 64 KiB).
    pub fn new<T: bytemuck::Pod>(ctx: &crate::gpu::Context, label: &str, slices: &[&[T]]) -> Self {
        use wgpu::util::DeviceExt;
        let longest = slices
            .iter()
            .map(|s| std::mem::size_of_val(*s))
            .max()
            .unwrap_or(0);
        assert!(longest <= conv::SLICE_MATS * 64, "slice of {longest} bytes");
        let align = ctx.limits.min_uniform_buffer_offset_alignment as u64;
        let stride = (longest as u64).next_multiple_of(align);
        // the last slice is bound with the full 64 KiB too
        let size =
            stride * (slices.len() as u64).saturating_sub(1) + (conv::SLICE_MATS * 64) as u64;
        let mut bytes = vec![0u8; size as usize];
        for (i, s) in slices.iter().enumerate() {
            let at = i * stride as usize;
            let src: &[u8] = bytemuck::cast_slice(s);
            bytes[at..at + src.len()].copy_from_slice(src);
        }
        ctx.note_upload(size);
        let buffer = ctx
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: &bytes,
                usage: wgpu::BufferUsages::UNIFORM,
            });
        UniformSlices { buffer, stride }
    }

    /// The binding of slice `i`.
    pub fn binding(&self, i: usize) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: i as u64 * self.stride,
            size: wgpu::BufferSize::new((conv::SLICE_MATS * 64) as u64),
        })
    }
}

/// How the gemm kernels cut per-position weights into uniform slices: one slice per (block of
/// [`gemm::OCB`] output groups, chunk of positions), laid out `[pos][ic][j]`, at most 64 KiB.
pub(crate) struct Slicing {
    pub positions: usize,
    pub icg: usize,
    pub blocks: usize,
    /// Positions per slice (0: the input groups of one position alone do not fit).
    pub chunk: usize,
}

impl Slicing {
    /// The slicing of items of type `T` (64 KiB / size_of T per slice).
    pub fn new<T>(positions: usize, icg: usize, ocg: usize) -> Self {
        let per_slice = (conv::SLICE_MATS * 64) / std::mem::size_of::<T>();
        Slicing {
            positions,
            icg,
            blocks: ocg.div_ceil(gemm::OCB),
            chunk: (per_slice / (icg * gemm::OCB)).min(positions),
        }
    }

    pub fn chunks(&self) -> usize {
        self.positions.div_ceil(self.chunk)
    }

    /// The slices in upload order: one launch each.
    pub fn slots(&self) -> impl Iterator<Item = Slot> + '_ {
        (0..self.blocks).flat_map(move |b| {
            (0..self.chunks()).map(move |c| Slot {
                index: b * self.chunks() + c,
                block: b,
                pos0: c * self.chunk,
                positions: (self.positions - c * self.chunk).min(self.chunk),
            })
        })
    }

    /// Every slice of `items` laid out `[pos][group padded to blocks][ic]`, in [`Slicing::slots`] order.
    pub fn slices<T: std::marker::Copy>(&self, items: &[T]) -> Vec<Vec<T>> {
        let ocb = gemm::OCB;
        self.slots()
            .map(|s| {
                (s.pos0..s.pos0 + s.positions)
                    .flat_map(|pos| {
                        (0..self.icg).flat_map(move |ic| (0..ocb).map(move |j| (pos, ic, j)))
                    })
                    .map(|(pos, ic, j)| {
                        items[(pos * self.blocks * ocb + s.block * ocb + j) * self.icg + ic]
                    })
                    .collect()
            })
            .collect()
    }
}

/// One uniform slice of a [`Slicing`]: which output block and positions one launch covers.
pub(crate) struct Slot {
    /// Position of the slice in the uploaded buffer.
    pub index: usize,
    pub block: usize,
    pub pos0: usize,
    pub positions: usize,
}

/// A buffer-to-buffer copy recorded between launches (channel concatenation of whole
/// channel groups is a plain copy in the C4HW layout).
pub struct Copy {
    pub label: String,
    pub src: wgpu::Buffer,
    pub src_offset: u64,
    pub dst: wgpu::Buffer,
    pub dst_offset: u64,
    pub size: u64,
}

/// One step of a plan.
pub enum Step {
    Launch(Dispatch),
    Copy(Copy),
}

impl Step {
    pub fn label(&self) -> &str {
        match self {
            Step::Launch(d) => &d.label,
            Step::Copy(c) => &c.label,
        }
    }
}

/// Record `steps` into `encoder`, one compute pass per run of launches.
pub fn encode(steps: &[Step], encoder: &mut wgpu::CommandEncoder) {
    let mut i = 0;
    while i < steps.len() {
        if let Step::Copy(c) = &steps[i] {
            encoder.copy_buffer_to_buffer(&c.src, c.src_offset, &c.dst, c.dst_offset, c.size);
            i += 1;
            continue;
        }
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("graph"),
            timestamp_writes: None,
        });
        while let Some(Step::Launch(d)) = steps.get(i) {
            pass.set_pipeline(&d.pipeline);
            pass.set_bind_group(0, &d.bind_group, &[]);
            let [x, y, z] = d.workgroups;
            pass.dispatch_workgroups(x, y, z);
            i += 1;
        }
    }
}

/// Padding words a packed integer kernel can hold in its uniform: one per input word (its
/// channels' real 0, see [`crate::quant::ActQuant::pad_byte`]); words past the last entry
/// share it, which holds where they exist (layers of more than
/// [`crate::quant::MAX_ACT_CHANNELS`] channels have one quantizer).
pub(crate) const PAD_WORDS: usize = 64;

/// `pads` (one per input word) as the kernels' `pads: array<vec4<u32>, 16>`.
pub(crate) fn pad_uniform(pads: &[u32]) -> [[u32; 4]; PAD_WORDS / 4] {
    assert!(!pads.is_empty());
    let last = pads.len().min(PAD_WORDS) - 1;
    assert!(
        pads[last..].iter().all(|&p| p == pads[last]),
        "words past {PAD_WORDS} need one padding word"
    );
    std::array::from_fn(|i| std::array::from_fn(|l| pads[(4 * i + l).min(last)]))
}

/// Workgroups for a 1-D launch of `n` invocations with `wg` per group, folded into two
/// dimensions when it would exceed the per-dimension limit. Returns (groups, row invocations).
pub(crate) fn grid_1d(n: u32, wg: u32) -> ([u32; 3], u32) {
    let groups = n.div_ceil(wg).max(1);
    if groups <= 65535 {
        return ([groups, 1, 1], groups * wg);
    }
    let x = 32768;
    ([x, groups.div_ceil(x), 1], x * wg)
}

pub(crate) fn bind_group(
    ctx: &crate::gpu::Context,
    label: &str,
    pipeline: &wgpu::ComputePipeline,
    buffers: &[&wgpu::Buffer],
) -> wgpu::BindGroup {
    let resources: Vec<wgpu::BindingResource> =
        buffers.iter().map(|b| b.as_entire_binding()).collect();
    bind_resources(ctx, label, pipeline, resources)
}

/// A bind group for group 0 of `pipeline`, binding `i` = `resources[i]`.
pub(crate) fn bind_resources(
    ctx: &crate::gpu::Context,
    label: &str,
    pipeline: &wgpu::ComputePipeline,
    resources: Vec<wgpu::BindingResource>,
) -> wgpu::BindGroup {
    let layout = pipeline.get_bind_group_layout(0);
    let entries: Vec<wgpu::BindGroupEntry> = resources
        .into_iter()
        .enumerate()
        .map(|(i, resource)| wgpu::BindGroupEntry {
            binding: i as u32,
            resource,
        })
        .collect();
    ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(label),
        layout: &layout,
        entries: &entries,
    })
}
