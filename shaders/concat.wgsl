// Channel concatenation of up to four tensors (unused inputs have 0 channels).

struct Params {
    c: vec4<u32>,   // channels of each input
    plane: u32,
    batch: u32,
    groups: u32,    // output channel groups
    channels: u32,  // output channels
    row: u32,
}

@group(0) @binding(0) var<storage, read> in0: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> in1: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> in2: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> in3: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(5) var<uniform> params: Params;

fn fetch(k: u32, n: u32, ch: u32, p: u32) -> f32 {
    let groups = (params.c[k] + 3u) / 4u;
    let i = (n * groups + ch / 4u) * params.plane + p;
    switch k {
        case 0u: { return in0[i][ch % 4u]; }
        case 1u: { return in1[i][ch % 4u]; }
        case 2u: { return in2[i][ch % 4u]; }
        default: { return in3[i][ch % 4u]; }
    }
}

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * params.row + gid.x;
    if i >= params.batch * params.groups * params.plane {
        return;
    }
    let p = i % params.plane;
    let g = (i / params.plane) % params.groups;
    let n = i / (params.plane * params.groups);
    var out = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        var ch = g * 4u + j;
        if ch >= params.channels {
            break;
        }
        var k = 0u;
        while ch >= params.c[k] {
            ch -= params.c[k];
            k++;
        }
        out[j] = fetch(k, n, ch, p);
    }
    dst[i] = out;
}
