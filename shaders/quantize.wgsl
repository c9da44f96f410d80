// Eq. 1 on a float tensor: C4HW vec4<f32> -> one packed word of four signed bytes per pixel
// and channel group, byte = round(clip(x, alpha, beta) * (1 / s)) - zero point. Lanes past
// the real channels carry the byte of 0. WGSL's multiply is correctly rounded and its round()
// ties to even, so the CPU twin reproduces every byte.

struct Params {
    len: u32,       // words (batch x groups x plane)
    plane: u32,
    groups: u32,
    channels: u32,
    alpha: f32,
    beta: f32,
    inv_step: f32,
    lo: i32,        // smallest code
    hi: i32,        // largest code
    zero: i32,      // zero point: code of byte 0
    row: u32,
}

@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * params.row + gid.x;
    if i >= params.len {
        return;
    }
    let g = (i / params.plane) % params.groups;
    let x = clamp(src[i], vec4<f32>(params.alpha), vec4<f32>(params.beta));
    let code = clamp(vec4<i32>(round(x * params.inv_step)), vec4<i32>(params.lo), vec4<i32>(params.hi));
    let c = vec4<u32>(g * 4u) + vec4<u32>(0u, 1u, 2u, 3u);
    let bytes = select(vec4<i32>(0), code, c < vec4<u32>(params.channels)) - vec4<i32>(params.zero);
    dst[i] = pack4xI8(bytes);
}
