// Integer K x K convolution (K = 1 or 3) on activations of at most 4 bits (issue 3): the
// input holds eight channels per u32 as signed nibbles (C8HW, see shared/int_store.wgsl),
// half the bytes of conv_int8's input. Each loaded word is expanded in registers to two
// words of signed bytes (input groups 2 w and 2 w + 1) that go through the same
// `dot4I8Packed` products as conv_int8, against the same byte-packed weights (those of
// gemm_int8, built with the input channels padded to a multiple of 8): the sums are exact
// and equal conv_int8's on the same codes. Weights stay bytes because a mode like w6a4 pairs
// 4-bit activations with wider weights, and they are read once per 8 pixels. Out-of-image
// taps read their word's padding word, the nibbles of each channel's real value 0.
//
// Tiling, stores and the repeated body as conv_int8.wgsl.

struct Shape {
    width: u32,
    height: u32,
    icw: u32,       // input words per pixel (eight channels each)
    ocg: u32,       // real output channel groups
    og: u32,        // first output group of this dispatch's block
    row_tiles: u32, // ceil(width / 8)
    k: u32,         // kernel size, 1 or 3
    // the padding word of each input word (its channels' real 0), entry min(word, 63)
    pads: array<vec4<u32>, 16>,
}

@group(0) @binding(0) var<storage, read> a: array<u32>;
// ((tap * 2 icw + ic) * 4 + j): packed byte weights of output channels 4 (og + j) + 0..3
@group(0) @binding(1) var<uniform> weights: array<vec4<u32>, 4096>;
@group(0) @binding(2) var<storage, read> corr: array<vec4<i32>>;
@group(0) @binding(3) var<storage, read> vecs: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> residual: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> dst: array<u32>;
@group(0) @binding(6) var<uniform> shape: Shape;
@group(0) @binding(7) var<uniform> params: StoreParams;

// The padding word of input word `w`.
fn pad_of(w: u32) -> u32 {
    let i = min(w, 63u);
    return shape.pads[i / 4u][i % 4u];
}

fn load(i: u32, ok: bool, pad: u32) -> u32 {
    return select(pad, a[i], ok);
}

fn dot4(w: vec4<u32>, x: u32) -> vec4<i32> {
    return vec4<i32>(dot4I8Packed(w.x, x), dot4I8Packed(w.y, x), dot4I8Packed(w.z, x), dot4I8Packed(w.w, x));
}

// Nibbles (in the low half of each byte) to signed bytes: bit 3 of each byte times 0x1e is
// 0xf0, the sign extension, and no product crosses into the next byte.
fn widen(v: u32) -> u32 {
    return v | ((v & 0x08080808u) * 0x1eu);
}

// No early return before the loop: see conv.wgsl.
@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let icw = shape.icw;
    let kk = shape.k;
    let r = i32(kk / 2u);
    let wi = i32(shape.width);
    let hi = i32(shape.height);
    let y = gid.x / shape.row_tiles;
    let xu = (gid.x % shape.row_tiles) * 8u;
    let x0 = i32(xu);
    let valid = y < shape.height;
    let n = gid.z;
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
    for (var ic = 0u; ic < icw; ic++) {
        let pad = pad_of(ic);
        for (var t = 0u; t < kk * kk; t++) {
        let yy = i32(y) + i32(t / kk) - r;
        let xs = x0 + i32(t % kk) - r;
        let rok = yy >= 0 && yy < hi;
        let row = ((n * icw + ic) * shape.height + u32(clamp(yy, 0, hi - 1))) * shape.width;
        let wb = (t * 2u * icw + 2u * ic) * 4u;
        let w0 = weights[wb + 0u];
        let w1 = weights[wb + 1u];
        let w2 = weights[wb + 2u];
        let w3 = weights[wb + 3u];
        let u0 = weights[wb + 4u];
        let u1 = weights[wb + 5u];
        let u2 = weights[wb + 6u];
        let u3 = weights[wb + 7u];
        let v0 = load(row + u32(clamp(xs + 0, 0, wi - 1)), rok && xs + 0 >= 0 && xs + 0 < wi, pad);
        let l0 = widen(v0 & 0x0f0f0f0fu);
        let h0 = widen((v0 >> 4u) & 0x0f0f0f0fu);
        let v1 = load(row + u32(clamp(xs + 1, 0, wi - 1)), rok && xs + 1 >= 0 && xs + 1 < wi, pad);
        let l1 = widen(v1 & 0x0f0f0f0fu);
        let h1 = widen((v1 >> 4u) & 0x0f0f0f0fu);
        let v2 = load(row + u32(clamp(xs + 2, 0, wi - 1)), rok && xs + 2 >= 0 && xs + 2 < wi, pad);
        let l2 = widen(v2 & 0x0f0f0f0fu);
        let h2 = widen((v2 >> 4u) & 0x0f0f0f0fu);
        let v3 = load(row + u32(clamp(xs + 3, 0, wi - 1)), rok && xs + 3 >= 0 && xs + 3 < wi, pad);
        let l3 = widen(v3 & 0x0f0f0f0fu);
        let h3 = widen((v3 >> 4u) & 0x0f0f0f0fu);
        let v4 = load(row + u32(clamp(xs + 4, 0, wi - 1)), rok && xs + 4 >= 0 && xs + 4 < wi, pad);
        let l4 = widen(v4 & 0x0f0f0f0fu);
        let h4 = widen((v4 >> 4u) & 0x0f0f0f0fu);
        let v5 = load(row + u32(clamp(xs + 5, 0, wi - 1)), rok && xs + 5 >= 0 && xs + 5 < wi, pad);
        let l5 = widen(v5 & 0x0f0f0f0fu);
        let h5 = widen((v5 >> 4u) & 0x0f0f0f0fu);
        let v6 = load(row + u32(clamp(xs + 6, 0, wi - 1)), rok && xs + 6 >= 0 && xs + 6 < wi, pad);
        let l6 = widen(v6 & 0x0f0f0f0fu);
        let h6 = widen((v6 >> 4u) & 0x0f0f0f0fu);
        let v7 = load(row + u32(clamp(xs + 7, 0, wi - 1)), rok && xs + 7 >= 0 && xs + 7 < wi, pad);
        let l7 = widen(v7 & 0x0f0f0f0fu);
        let h7 = widen((v7 >> 4u) & 0x0f0f0f0fu);
        a0_0 += dot4(w0, l0) + dot4(u0, h0);
        a0_1 += dot4(w0, l1) + dot4(u0, h1);
        a0_2 += dot4(w0, l2) + dot4(u0, h2);
        a0_3 += dot4(w0, l3) + dot4(u0, h3);
        a0_4 += dot4(w0, l4) + dot4(u0, h4);
        a0_5 += dot4(w0, l5) + dot4(u0, h5);
        a0_6 += dot4(w0, l6) + dot4(u0, h6);
        a0_7 += dot4(w0, l7) + dot4(u0, h7);
        a1_0 += dot4(w1, l0) + dot4(u1, h0);
        a1_1 += dot4(w1, l1) + dot4(u1, h1);
        a1_2 += dot4(w1, l2) + dot4(u1, h2);
        a1_3 += dot4(w1, l3) + dot4(u1, h3);
        a1_4 += dot4(w1, l4) + dot4(u1, h4);
        a1_5 += dot4(w1, l5) + dot4(u1, h5);
        a1_6 += dot4(w1, l6) + dot4(u1, h6);
        a1_7 += dot4(w1, l7) + dot4(u1, h7);
        a2_0 += dot4(w2, l0) + dot4(u2, h0);
        a2_1 += dot4(w2, l1) + dot4(u2, h1);
        a2_2 += dot4(w2, l2) + dot4(u2, h2);
        a2_3 += dot4(w2, l3) + dot4(u2, h3);
        a2_4 += dot4(w2, l4) + dot4(u2, h4);
        a2_5 += dot4(w2, l5) + dot4(u2, h5);
        a2_6 += dot4(w2, l6) + dot4(u2, h6);
        a2_7 += dot4(w2, l7) + dot4(u2, h7);
        a3_0 += dot4(w3, l0) + dot4(u3, h0);
        a3_1 += dot4(w3, l1) + dot4(u3, h1);
        a3_2 += dot4(w3, l2) + dot4(u3, h2);
        a3_3 += dot4(w3, l3) + dot4(u3, h3);
        a3_4 += dot4(w3, l4) + dot4(u3, h4);
        a3_5 += dot4(w3, l5) + dot4(u3, h5);
        a3_6 += dot4(w3, l6) + dot4(u3, h6);
        a3_7 += dot4(w3, l7) + dot4(u3, h7);
        }
    }
    if !valid {
        return;
    }
    let p0 = y * shape.width + xu;
    let og = shape.og;
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
    let count = min(8u, shape.width - xu);
    let pairs = select(1u, 2u, og + 2u < shape.ocg);
    for (var q = 0u; q < pairs; q++) {
        for (var k = 0u; k < count; k++) {
            store_pair(res[16u * q + k], res[16u * q + 8u + k], og + 2u * q, n, p0 + k);
        }
    }
}
