//! Kernel launchers: one Rust file per shader in `shaders/`, each with its CPU twin in `cpu/`.
//!
//! A launcher knows its shader's override constants, binding order, uniform layout and
//! dispatch size; [`crate::exec`] strings launches together into a plan.

pub mod binary;
pub mod concat;
pub mod conv;
pub mod cpu;
pub mod gemm;
pub mod interp;
pub mod pixel_shuffle;
pub mod unary;
pub mod winograd;
pub mod winograd_input;
pub mod winograd_output;

const COMMON: &str = include_str!("../../shaders/shared/common.wgsl");

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
    (
        "winograd_output",
        include_str!("../../shaders/winograd_output.wgsl"),
    ),
];

/// The complete WGSL of a shader: shared helpers followed by the kernel.
pub fn source(name: &str) -> Option<String> {
    SHADERS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| format!("{COMMON}\n{s}"))
}

/// One recorded kernel launch.
pub struct Dispatch {
    pub label: String,
    pub pipeline: std::sync::Arc<wgpu::ComputePipeline>,
    pub bind_group: wgpu::BindGroup,
    pub workgroups: [u32; 3],
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
    let layout = pipeline.get_bind_group_layout(0);
    let entries: Vec<wgpu::BindGroupEntry> = buffers
        .iter()
        .enumerate()
        .map(|(i, b)| wgpu::BindGroupEntry {
            binding: i as u32,
            resource: b.as_entire_binding(),
        })
        .collect();
    ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(label),
        layout: &layout,
        entries: &entries,
    })
}
