// A standalone activation (when it could not be fused into a convolution).

override ACT: u32 = 0u;

struct Params {
    len: u32,
    plane: u32,
    groups: u32,
    channels: u32,
    leaky: f32,
    row: u32,
}

@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> slopes: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * params.row + gid.x;
    if i >= params.len {
        return;
    }
    let g = (i / params.plane) % params.groups;
    dst[i] = mask_lanes(activate(src[i], ACT, params.leaky, slopes[g]), g, params.channels);
}
