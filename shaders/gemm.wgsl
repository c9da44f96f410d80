// Batched matrix product over channel groups, the workhorse of the convolutions:
// M[pos][og][t] = sum_ic U[pos][og][ic] V[pos][ic][t] for P independent positions; V rows may
// hold more channel groups than the product reads (vgroups >= icg: a shared Winograd input).
// - Winograd 3x3 (P = 36): t = 4x4 tile, V/U the transformed input/weights; raw results go
//   to winograd_output.wgsl.
// - 1x1 convolution (P = 1): t = pixel, V = the input in C4HW layout, U = the weights; the
//   convolution's epilogue is applied here and M is the output tensor.
//
// Register tiling: one invocation computes 8 consecutive t for 4 output groups (16 channels)
// at one position; WG invocations side by side along t form a workgroup (the launcher picks
// WG to fit the number of columns, see gemm::workgroup_size). One dispatch covers one block
// of 4 output groups and a chunk of positions whose weights fit one 64 KiB uniform slice, so
// weight loads are uniform across the workgroup. The body is written out by hand for the reason given in conv.wgsl.
// Accumulation order (the CPU twin's): input group ascending.

struct Params {
    tiles: u32,    // t per image and position
    icg: u32,      // input channel groups
    ocg: u32,      // real output channel groups
    og: u32,       // first output group of this dispatch's block
    pos0: u32,     // first position of this dispatch's chunk
    positions: u32, // P
    finish: u32,   // 0: store raw sums; 1: apply the epilogue below
    oc: u32,       // real output channels
    act: u32,      // model::Activation::code
    epi: u32,      // model::Epilogue::code
    leaky: f32,
    vgroups: u32,  // channel groups per position in V
}

@group(0) @binding(0) var<storage, read> v: array<vec4<f32>>;
// U for this block and chunk: mat4x4 at ((pos - pos0) * icg + ic) * 4 + j for output group
// og + j; column c = input channel 4 ic + c.
@group(0) @binding(1) var<uniform> weights: array<mat4x4<f32>, 1024>;
// bias and PReLU slope groups, see shared/epilogue.wgsl
@group(0) @binding(2) var<storage, read> vecs: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> residual: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> m: array<vec4<f32>>;
@group(0) @binding(5) var<uniform> params: Params;

fn load(i: u32, ok: bool) -> vec4<f32> {
    return select(vec4<f32>(0.0), v[i], ok);
}

fn finish(acc: vec4<f32>, g: u32, index: u32) -> vec4<f32> {
    if params.finish == 0u {
        return acc;
    }
    return epilogue(acc, g, index);
}

// No early return before the loop: see conv.wgsl.
override WG: u32 = 64u;

@compute @workgroup_size(WG, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tiles = params.tiles;
    let icg = params.icg;
    let t0 = gid.x * 8u;
    let valid = t0 < tiles;
    let pos = params.pos0 + wid.y;
    let n = wid.z;
    let last = tiles - 1u;
    var a0_0 = vec4<f32>(0.0);
    var a0_1 = vec4<f32>(0.0);
    var a0_2 = vec4<f32>(0.0);
    var a0_3 = vec4<f32>(0.0);
    var a0_4 = vec4<f32>(0.0);
    var a0_5 = vec4<f32>(0.0);
    var a0_6 = vec4<f32>(0.0);
    var a0_7 = vec4<f32>(0.0);
    var a1_0 = vec4<f32>(0.0);
    var a1_1 = vec4<f32>(0.0);
    var a1_2 = vec4<f32>(0.0);
    var a1_3 = vec4<f32>(0.0);
    var a1_4 = vec4<f32>(0.0);
    var a1_5 = vec4<f32>(0.0);
    var a1_6 = vec4<f32>(0.0);
    var a1_7 = vec4<f32>(0.0);
    var a2_0 = vec4<f32>(0.0);
    var a2_1 = vec4<f32>(0.0);
    var a2_2 = vec4<f32>(0.0);
    var a2_3 = vec4<f32>(0.0);
    var a2_4 = vec4<f32>(0.0);
    var a2_5 = vec4<f32>(0.0);
    var a2_6 = vec4<f32>(0.0);
    var a2_7 = vec4<f32>(0.0);
    var a3_0 = vec4<f32>(0.0);
    var a3_1 = vec4<f32>(0.0);
    var a3_2 = vec4<f32>(0.0);
    var a3_3 = vec4<f32>(0.0);
    var a3_4 = vec4<f32>(0.0);
    var a3_5 = vec4<f32>(0.0);
    var a3_6 = vec4<f32>(0.0);
    var a3_7 = vec4<f32>(0.0);
    for (var ic = 0u; ic < icg; ic++) {
        let base = ((n * params.positions + pos) * params.vgroups + ic) * tiles;
        let wb = (wid.y * icg + ic) * 4u;
        let v0 = load(base + min(t0 + 0u, last), t0 + 0u < tiles);
        let v1 = load(base + min(t0 + 1u, last), t0 + 1u < tiles);
        let v2 = load(base + min(t0 + 2u, last), t0 + 2u < tiles);
        let v3 = load(base + min(t0 + 3u, last), t0 + 3u < tiles);
        let v4 = load(base + min(t0 + 4u, last), t0 + 4u < tiles);
        let v5 = load(base + min(t0 + 5u, last), t0 + 5u < tiles);
        let v6 = load(base + min(t0 + 6u, last), t0 + 6u < tiles);
        let v7 = load(base + min(t0 + 7u, last), t0 + 7u < tiles);
        let m0 = weights[wb + 0u];
        let m1 = weights[wb + 1u];
        let m2 = weights[wb + 2u];
        let m3 = weights[wb + 3u];
        a0_0 += m0 * v0;
        a0_1 += m0 * v1;
        a0_2 += m0 * v2;
        a0_3 += m0 * v3;
        a0_4 += m0 * v4;
        a0_5 += m0 * v5;
        a0_6 += m0 * v6;
        a0_7 += m0 * v7;
        a1_0 += m1 * v0;
        a1_1 += m1 * v1;
        a1_2 += m1 * v2;
        a1_3 += m1 * v3;
        a1_4 += m1 * v4;
        a1_5 += m1 * v5;
        a1_6 += m1 * v6;
        a1_7 += m1 * v7;
        a2_0 += m2 * v0;
        a2_1 += m2 * v1;
        a2_2 += m2 * v2;
        a2_3 += m2 * v3;
        a2_4 += m2 * v4;
        a2_5 += m2 * v5;
        a2_6 += m2 * v6;
        a2_7 += m2 * v7;
        a3_0 += m3 * v0;
        a3_1 += m3 * v1;
        a3_2 += m3 * v2;
        a3_3 += m3 * v3;
        a3_4 += m3 * v4;
        a3_5 += m3 * v5;
        a3_6 += m3 * v6;
        a3_7 += m3 * v7;
    }
    if !valid {
        return;
    }
    if params.og + 0u < params.ocg {
        let out = ((n * params.positions + pos) * params.ocg + params.og + 0u) * tiles + t0;
        if t0 + 0u < tiles { m[out + 0u] = finish(a0_0, params.og + 0u, out + 0u); }
        if t0 + 1u < tiles { m[out + 1u] = finish(a0_1, params.og + 0u, out + 1u); }
        if t0 + 2u < tiles { m[out + 2u] = finish(a0_2, params.og + 0u, out + 2u); }
        if t0 + 3u < tiles { m[out + 3u] = finish(a0_3, params.og + 0u, out + 3u); }
        if t0 + 4u < tiles { m[out + 4u] = finish(a0_4, params.og + 0u, out + 4u); }
        if t0 + 5u < tiles { m[out + 5u] = finish(a0_5, params.og + 0u, out + 5u); }
        if t0 + 6u < tiles { m[out + 6u] = finish(a0_6, params.og + 0u, out + 6u); }
        if t0 + 7u < tiles { m[out + 7u] = finish(a0_7, params.og + 0u, out + 7u); }
    }
    if params.og + 1u < params.ocg {
        let out = ((n * params.positions + pos) * params.ocg + params.og + 1u) * tiles + t0;
        if t0 + 0u < tiles { m[out + 0u] = finish(a1_0, params.og + 1u, out + 0u); }
        if t0 + 1u < tiles { m[out + 1u] = finish(a1_1, params.og + 1u, out + 1u); }
        if t0 + 2u < tiles { m[out + 2u] = finish(a1_2, params.og + 1u, out + 2u); }
        if t0 + 3u < tiles { m[out + 3u] = finish(a1_3, params.og + 1u, out + 3u); }
        if t0 + 4u < tiles { m[out + 4u] = finish(a1_4, params.og + 1u, out + 4u); }
        if t0 + 5u < tiles { m[out + 5u] = finish(a1_5, params.og + 1u, out + 5u); }
        if t0 + 6u < tiles { m[out + 6u] = finish(a1_6, params.og + 1u, out + 6u); }
        if t0 + 7u < tiles { m[out + 7u] = finish(a1_7, params.og + 1u, out + 7u); }
    }
    if params.og + 2u < params.ocg {
        let out = ((n * params.positions + pos) * params.ocg + params.og + 2u) * tiles + t0;
        if t0 + 0u < tiles { m[out + 0u] = finish(a2_0, params.og + 2u, out + 0u); }
        if t0 + 1u < tiles { m[out + 1u] = finish(a2_1, params.og + 2u, out + 1u); }
        if t0 + 2u < tiles { m[out + 2u] = finish(a2_2, params.og + 2u, out + 2u); }
        if t0 + 3u < tiles { m[out + 3u] = finish(a2_3, params.og + 2u, out + 3u); }
        if t0 + 4u < tiles { m[out + 4u] = finish(a2_4, params.og + 2u, out + 4u); }
        if t0 + 5u < tiles { m[out + 5u] = finish(a2_5, params.og + 2u, out + 5u); }
        if t0 + 6u < tiles { m[out + 6u] = finish(a2_6, params.og + 2u, out + 6u); }
        if t0 + 7u < tiles { m[out + 7u] = finish(a2_7, params.og + 2u, out + 7u); }
    }
    if params.og + 3u < params.ocg {
        let out = ((n * params.positions + pos) * params.ocg + params.og + 3u) * tiles + t0;
        if t0 + 0u < tiles { m[out + 0u] = finish(a3_0, params.og + 3u, out + 0u); }
        if t0 + 1u < tiles { m[out + 1u] = finish(a3_1, params.og + 3u, out + 1u); }
        if t0 + 2u < tiles { m[out + 2u] = finish(a3_2, params.og + 3u, out + 2u); }
        if t0 + 3u < tiles { m[out + 3u] = finish(a3_3, params.og + 3u, out + 3u); }
        if t0 + 4u < tiles { m[out + 4u] = finish(a3_4, params.og + 3u, out + 4u); }
        if t0 + 5u < tiles { m[out + 5u] = finish(a3_5, params.og + 3u, out + 5u); }
        if t0 + 6u < tiles { m[out + 6u] = finish(a3_6, params.og + 3u, out + 6u); }
        if t0 + 7u < tiles { m[out + 7u] = finish(a3_7, params.og + 3u, out + 7u); }
    }
}
