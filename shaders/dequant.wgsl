// Integer sums back to floats: x = f32(sum) * scale[channel], scale = s_w[channel] * s_a, then
// the convolutions' epilogue (bias, activation, SPAN gate or residual), as the float kernels.

struct Params {
    len: u32,      // vec4 elements (batch x ocg x plane)
    plane: u32,
    ocg: u32,
    oc: u32,
    act: u32,
    epi: u32,
    leaky: f32,
    row: u32,
}

@group(0) @binding(0) var<storage, read> sums: array<vec4<i32>>;
@group(0) @binding(1) var<storage, read> scales: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> vecs: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> residual: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(5) var<uniform> params: Params;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * params.row + gid.x;
    if i >= params.len {
        return;
    }
    let g = (i / params.plane) % params.ocg;
    dst[i] = epilogue(vec4<f32>(sums[i]) * scales[g], g, i);
}
