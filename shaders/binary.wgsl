// Elementwise a (op) b: b is a same-shaped tensor (MODE 0), a scalar (1) or one value per
// channel (2). OP codes match model::BinaryKind::code().

override OP: u32 = 0u;
override MODE: u32 = 0u;

struct Params {
    len: u32,       // vec4 elements in the tensor
    plane: u32,     // pixels per channel group
    groups: u32,    // channel groups
    channels: u32,  // real channels
    scalar: f32,
    row: u32,       // invocations per dispatch row (2-D dispatch of long tensors)
}

@group(0) @binding(0) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * params.row + gid.x;
    if i >= params.len {
        return;
    }
    let g = (i / params.plane) % params.groups;
    let x = a[i];
    var y: vec4<f32>;
    switch MODE {
        case 1u: { y = vec4<f32>(params.scalar); }
        case 2u: { y = b[g]; }
        default: { y = b[i]; }
    }
    var r: vec4<f32>;
    switch OP {
        case 1u: { r = x - y; }
        case 2u: { r = x * y; }
        case 3u: { r = x / y; }
        case 4u: { r = y - x; }
        case 5u: { r = max(x, y); }
        case 6u: { r = min(x, y); }
        default: { r = x + y; }
    }
    dst[i] = mask_lanes(r, g, params.channels);
}
