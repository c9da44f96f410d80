// Eq. 1 on a float tensor, into the packed form the integer kernels read: byte = round(clip(x,
// alpha, beta) * (1 / s)) - zero point, four signed bytes per word (C4HW), or for codes of at
// most 4 bits eight signed nibbles per word (C8HW, the layout of shared/int_store.wgsl:
// channel group 2 w in the low nibbles of word w, group 2 w + 1 in the high ones). Lanes past
// the real channels carry the code of 0 (of the last channel, where each has its own). Each channel group has its own bounds and step where
// the quantizer is per channel (common.wgsl's Eq1). The CPU twin reproduces every bit (see eq1_codes).

struct Params {
    len: u32,       // words (batch x words per pixel x plane)
    plane: u32,
    groups: u32,    // channel groups of four
    channels: u32,
    row: u32,
    nibbles: u32,   // 1: eight channels per word
    _p0: u32,
    _p1: u32,
    q: Eq1,
}

@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<uniform> params: Params;

fn codes(n: u32, g: u32, p: u32) -> vec4<i32> {
    let c = vec4<u32>(g * 4u) + vec4<u32>(0u, 1u, 2u, 3u);
    var x = vec4<f32>(0.0);
    if g < params.groups {
        x = src[(n * params.groups + g) * params.plane + p];
    }
    let k = eq1_slot(params.q.per_channel, g);
    let code = eq1_codes(x, params.q.alpha[k], params.q.beta[k], params.q.inv_step[k], params.q.zero[k], params.q.lo, params.q.hi);
    return select(-params.q.zero[k], code, c < vec4<u32>(params.channels));
}

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * params.row + gid.x;
    if i >= params.len {
        return;
    }
    let p = i % params.plane;
    if params.nibbles == 0u {
        let g = (i / params.plane) % params.groups;
        dst[i] = pack4xI8(codes(i / (params.plane * params.groups), g, p));
    } else {
        let words = (params.groups + 1u) / 2u;
        let w = (i / params.plane) % words;
        let n = i / (params.plane * words);
        dst[i] = nibbles_of(codes(n, 2u * w, p), codes(n, 2u * w + 1u, p));
    }
}
