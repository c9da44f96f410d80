// Integer batched product (issue 3's building block): for P independent positions,
// M[pos][og][t] = corr[og] + sum_ic sum_c W[pos][og][ic][c] * A[pos][ic][t][c], every term an
// 8-bit by 8-bit product summed in i32 by `dot4I8Packed` (native OpSDot where the device has
// it). Activations travel packed, four channels of signed bytes per u32, in the C4HW layout
// of the float kernels; `corr` carries the folded zero points (see src/quant). The result is
// exact, so the CPU twin must match it bit for bit. The sums leave through
// shared/int_store.wgsl: raw, as floats, or requantized for the next layer (with P = 1).
//
// Tiling as gemm.wgsl: 8 columns x 4 output groups per invocation, the block's weights a
// 64 KiB uniform slice of vec4<u32> (one packed word per output channel and input group).

struct Shape {
    tiles: u32,     // columns per image and position
    icg: u32,       // input channel groups (packed words per column)
    ocg: u32,       // real output channel groups
    og: u32,        // first output group of this dispatch's block
    pos0: u32,      // first position of this dispatch's chunk
    positions: u32, // P
}

@group(0) @binding(0) var<storage, read> a: array<u32>;
// ((pos - pos0) * icg + ic) * 4 + j: packed weights of output channels 4 (og + j) + 0..3
@group(0) @binding(1) var<uniform> weights: array<vec4<u32>, 4096>;
@group(0) @binding(2) var<storage, read> corr: array<vec4<i32>>;
@group(0) @binding(3) var<storage, read> vecs: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> residual: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> dst: array<u32>;
@group(0) @binding(6) var<uniform> shape: Shape;
@group(0) @binding(7) var<uniform> params: StoreParams;

fn load(i: u32, ok: bool) -> u32 {
    return select(0u, a[i], ok);
}

fn dot4(w: vec4<u32>, x: u32) -> vec4<i32> {
    return vec4<i32>(dot4I8Packed(w.x, x), dot4I8Packed(w.y, x), dot4I8Packed(w.z, x), dot4I8Packed(w.w, x));
}

// No early return before the loop: see conv.wgsl.
@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tiles = shape.tiles;
    let icg = shape.icg;
    let t0 = gid.x * 8u;
    let valid = t0 < tiles;
    let pos = shape.pos0 + wid.y;
    let n = wid.z;
    let last = tiles - 1u;
    var a0_0 = vec4<i32>(0);
    var a0_1 = vec4<i32>(0);
    var a0_2 = vec4<i32>(0);
    var a0_3 = vec4<i32>(0);
    var a0_4 = vec4<i32>(0);
    var a0_5 = vec4<i32>(0);
    var a0_6 = vec4<i32>(0);
    var a0_7 = vec4<i32>(0);
    var a1_0 = vec4<i32>(0);
    var a1_1 = vec4<i32>(0);
    var a1_2 = vec4<i32>(0);
    var a1_3 = vec4<i32>(0);
    var a1_4 = vec4<i32>(0);
    var a1_5 = vec4<i32>(0);
    var a1_6 = vec4<i32>(0);
    var a1_7 = vec4<i32>(0);
    var a2_0 = vec4<i32>(0);
    var a2_1 = vec4<i32>(0);
    var a2_2 = vec4<i32>(0);
    var a2_3 = vec4<i32>(0);
    var a2_4 = vec4<i32>(0);
    var a2_5 = vec4<i32>(0);
    var a2_6 = vec4<i32>(0);
    var a2_7 = vec4<i32>(0);
    var a3_0 = vec4<i32>(0);
    var a3_1 = vec4<i32>(0);
    var a3_2 = vec4<i32>(0);
    var a3_3 = vec4<i32>(0);
    var a3_4 = vec4<i32>(0);
    var a3_5 = vec4<i32>(0);
    var a3_6 = vec4<i32>(0);
    var a3_7 = vec4<i32>(0);
    for (var ic = 0u; ic < icg; ic++) {
        let base = ((n * shape.positions + pos) * icg + ic) * tiles;
        let wb = (wid.y * icg + ic) * 4u;
        let v0 = load(base + min(t0 + 0u, last), t0 + 0u < tiles);
        let v1 = load(base + min(t0 + 1u, last), t0 + 1u < tiles);
        let v2 = load(base + min(t0 + 2u, last), t0 + 2u < tiles);
        let v3 = load(base + min(t0 + 3u, last), t0 + 3u < tiles);
        let v4 = load(base + min(t0 + 4u, last), t0 + 4u < tiles);
        let v5 = load(base + min(t0 + 5u, last), t0 + 5u < tiles);
        let v6 = load(base + min(t0 + 6u, last), t0 + 6u < tiles);
        let v7 = load(base + min(t0 + 7u, last), t0 + 7u < tiles);
        let w0 = weights[wb + 0u];
        let w1 = weights[wb + 1u];
        let w2 = weights[wb + 2u];
        let w3 = weights[wb + 3u];
        a0_0 += dot4(w0, v0);
        a0_1 += dot4(w0, v1);
        a0_2 += dot4(w0, v2);
        a0_3 += dot4(w0, v3);
        a0_4 += dot4(w0, v4);
        a0_5 += dot4(w0, v5);
        a0_6 += dot4(w0, v6);
        a0_7 += dot4(w0, v7);
        a1_0 += dot4(w1, v0);
        a1_1 += dot4(w1, v1);
        a1_2 += dot4(w1, v2);
        a1_3 += dot4(w1, v3);
        a1_4 += dot4(w1, v4);
        a1_5 += dot4(w1, v5);
        a1_6 += dot4(w1, v6);
        a1_7 += dot4(w1, v7);
        a2_0 += dot4(w2, v0);
        a2_1 += dot4(w2, v1);
        a2_2 += dot4(w2, v2);
        a2_3 += dot4(w2, v3);
        a2_4 += dot4(w2, v4);
        a2_5 += dot4(w2, v5);
        a2_6 += dot4(w2, v6);
        a2_7 += dot4(w2, v7);
        a3_0 += dot4(w3, v0);
        a3_1 += dot4(w3, v1);
        a3_2 += dot4(w3, v2);
        a3_3 += dot4(w3, v3);
        a3_4 += dot4(w3, v4);
        a3_5 += dot4(w3, v5);
        a3_6 += dot4(w3, v6);
        a3_7 += dot4(w3, v7);
    }
    if !valid {
        return;
    }
    let og = shape.og;
    let img = n * shape.positions + pos;
    let c0 = corr[og];
    let c1 = corr[og + 1u];
    let c2 = corr[og + 2u];
    let c3 = corr[og + 3u];
    // Staged through a private array so that the store (and its epilogue) is compiled
    // once, not once per register: the hot loop above keeps its named registers.
    var res: array<vec4<i32>, 32>;
    res[0] = a0_0 + c0;
    res[1] = a0_1 + c0;
    res[2] = a0_2 + c0;
    res[3] = a0_3 + c0;
    res[4] = a0_4 + c0;
    res[5] = a0_5 + c0;
    res[6] = a0_6 + c0;
    res[7] = a0_7 + c0;
    res[8] = a1_0 + c1;
    res[9] = a1_1 + c1;
    res[10] = a1_2 + c1;
    res[11] = a1_3 + c1;
    res[12] = a1_4 + c1;
    res[13] = a1_5 + c1;
    res[14] = a1_6 + c1;
    res[15] = a1_7 + c1;
    res[16] = a2_0 + c2;
    res[17] = a2_1 + c2;
    res[18] = a2_2 + c2;
    res[19] = a2_3 + c2;
    res[20] = a2_4 + c2;
    res[21] = a2_5 + c2;
    res[22] = a2_6 + c2;
    res[23] = a2_7 + c2;
    res[24] = a3_0 + c3;
    res[25] = a3_1 + c3;
    res[26] = a3_2 + c3;
    res[27] = a3_3 + c3;
    res[28] = a3_4 + c3;
    res[29] = a3_5 + c3;
    res[30] = a3_6 + c3;
    res[31] = a3_7 + c3;
    let count = min(8u, tiles - t0);
    let pairs = select(1u, 2u, og + 2u < shape.ocg);
    for (var q = 0u; q < pairs; q++) {
        for (var k = 0u; k < count; k++) {
            store_pair(res[16u * q + k], res[16u * q + 8u + k], og + 2u * q, img, t0 + k);
        }
    }
}
