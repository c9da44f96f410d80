// Integer K x K convolution (K = 1 or 3) for weights and activations of at most 4 bits on
// devices without a hardware dot product (software rasterizers such as lavapipe, where
// `dot4I8Packed` costs about twenty scalar operations): two multiply-accumulates per 32-bit
// multiply. A pair of input channels (f, s) of one pixel is the integer X = b_f + b_s 2^16
// and its weights the integer W = w_s + w_f 2^16, so X W = b_f w_s + (b_f w_f + b_s w_s) 2^16
// (mod 2^32): the upper half accumulates the pair's dot product, the lower half a cross term
// L. With |L| and |M| below 2^15 (the launcher checks K x K x channels x the largest product),
// M = (acc - sext16(acc)) >> 16 is exact, so the sums equal conv_int4's bit for bit.
//
// Input: the nibble words of conv_int4 (C8HW); the four pairs of word v are its channels
// (0, 2), (1, 3), (4, 6), (5, 7), taken from v ^ 0x88888888 (the codes plus 8, unsigned) by
// a shift and a mask, minus 8 in each half. Tiling, stores and the repeated body as
// conv_int8.wgsl.

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
// ((tap * icw + iw) * 4 + q) * 4 + j: pair q's weights W of output channels 4 (og + j) + 0..3
@group(0) @binding(1) var<uniform> weights: array<vec4<i32>, 4096>;
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

// The pair's dot product from the upper half of the accumulator.
fn upper(acc: vec4<i32>) -> vec4<i32> {
    let low = (acc << vec4<u32>(16u)) >> vec4<u32>(16u);
    return (acc - low) >> vec4<u32>(16u);
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
    for (var iw = 0u; iw < icw; iw++) {
        let pad = pad_of(iw);
        for (var t = 0u; t < kk * kk; t++) {
        let yy = i32(y) + i32(t / kk) - r;
        let xs = x0 + i32(t % kk) - r;
        let rok = yy >= 0 && yy < hi;
        let row = ((n * icw + iw) * shape.height + u32(clamp(yy, 0, hi - 1))) * shape.width;
        let wb = (t * icw + iw) * 16u;
        let w00 = weights[wb + 0u];
        let w01 = weights[wb + 1u];
        let w02 = weights[wb + 2u];
        let w03 = weights[wb + 3u];
        let w10 = weights[wb + 4u];
        let w11 = weights[wb + 5u];
        let w12 = weights[wb + 6u];
        let w13 = weights[wb + 7u];
        let w20 = weights[wb + 8u];
        let w21 = weights[wb + 9u];
        let w22 = weights[wb + 10u];
        let w23 = weights[wb + 11u];
        let w30 = weights[wb + 12u];
        let w31 = weights[wb + 13u];
        let w32 = weights[wb + 14u];
        let w33 = weights[wb + 15u];
        let u0 = load(row + u32(clamp(xs + 0, 0, wi - 1)), rok && xs + 0 >= 0 && xs + 0 < wi, pad) ^ 0x88888888u;
        let x0_0 = i32((u0 >> 0u) & 0x000f000fu) - 0x00080008;
        let x0_1 = i32((u0 >> 8u) & 0x000f000fu) - 0x00080008;
        let x0_2 = i32((u0 >> 4u) & 0x000f000fu) - 0x00080008;
        let x0_3 = i32((u0 >> 12u) & 0x000f000fu) - 0x00080008;
        let u1 = load(row + u32(clamp(xs + 1, 0, wi - 1)), rok && xs + 1 >= 0 && xs + 1 < wi, pad) ^ 0x88888888u;
        let x1_0 = i32((u1 >> 0u) & 0x000f000fu) - 0x00080008;
        let x1_1 = i32((u1 >> 8u) & 0x000f000fu) - 0x00080008;
        let x1_2 = i32((u1 >> 4u) & 0x000f000fu) - 0x00080008;
        let x1_3 = i32((u1 >> 12u) & 0x000f000fu) - 0x00080008;
        let u2 = load(row + u32(clamp(xs + 2, 0, wi - 1)), rok && xs + 2 >= 0 && xs + 2 < wi, pad) ^ 0x88888888u;
        let x2_0 = i32((u2 >> 0u) & 0x000f000fu) - 0x00080008;
        let x2_1 = i32((u2 >> 8u) & 0x000f000fu) - 0x00080008;
        let x2_2 = i32((u2 >> 4u) & 0x000f000fu) - 0x00080008;
        let x2_3 = i32((u2 >> 12u) & 0x000f000fu) - 0x00080008;
        let u3 = load(row + u32(clamp(xs + 3, 0, wi - 1)), rok && xs + 3 >= 0 && xs + 3 < wi, pad) ^ 0x88888888u;
        let x3_0 = i32((u3 >> 0u) & 0x000f000fu) - 0x00080008;
        let x3_1 = i32((u3 >> 8u) & 0x000f000fu) - 0x00080008;
        let x3_2 = i32((u3 >> 4u) & 0x000f000fu) - 0x00080008;
        let x3_3 = i32((u3 >> 12u) & 0x000f000fu) - 0x00080008;
        let u4 = load(row + u32(clamp(xs + 4, 0, wi - 1)), rok && xs + 4 >= 0 && xs + 4 < wi, pad) ^ 0x88888888u;
        let x4_0 = i32((u4 >> 0u) & 0x000f000fu) - 0x00080008;
        let x4_1 = i32((u4 >> 8u) & 0x000f000fu) - 0x00080008;
        let x4_2 = i32((u4 >> 4u) & 0x000f000fu) - 0x00080008;
        let x4_3 = i32((u4 >> 12u) & 0x000f000fu) - 0x00080008;
        let u5 = load(row + u32(clamp(xs + 5, 0, wi - 1)), rok && xs + 5 >= 0 && xs + 5 < wi, pad) ^ 0x88888888u;
        let x5_0 = i32((u5 >> 0u) & 0x000f000fu) - 0x00080008;
        let x5_1 = i32((u5 >> 8u) & 0x000f000fu) - 0x00080008;
        let x5_2 = i32((u5 >> 4u) & 0x000f000fu) - 0x00080008;
        let x5_3 = i32((u5 >> 12u) & 0x000f000fu) - 0x00080008;
        let u6 = load(row + u32(clamp(xs + 6, 0, wi - 1)), rok && xs + 6 >= 0 && xs + 6 < wi, pad) ^ 0x88888888u;
        let x6_0 = i32((u6 >> 0u) & 0x000f000fu) - 0x00080008;
        let x6_1 = i32((u6 >> 8u) & 0x000f000fu) - 0x00080008;
        let x6_2 = i32((u6 >> 4u) & 0x000f000fu) - 0x00080008;
        let x6_3 = i32((u6 >> 12u) & 0x000f000fu) - 0x00080008;
        let u7 = load(row + u32(clamp(xs + 7, 0, wi - 1)), rok && xs + 7 >= 0 && xs + 7 < wi, pad) ^ 0x88888888u;
        let x7_0 = i32((u7 >> 0u) & 0x000f000fu) - 0x00080008;
        let x7_1 = i32((u7 >> 8u) & 0x000f000fu) - 0x00080008;
        let x7_2 = i32((u7 >> 4u) & 0x000f000fu) - 0x00080008;
        let x7_3 = i32((u7 >> 12u) & 0x000f000fu) - 0x00080008;
        a0_0 += w00 * x0_0 + w10 * x0_1 + w20 * x0_2 + w30 * x0_3;
        a0_1 += w00 * x1_0 + w10 * x1_1 + w20 * x1_2 + w30 * x1_3;
        a0_2 += w00 * x2_0 + w10 * x2_1 + w20 * x2_2 + w30 * x2_3;
        a0_3 += w00 * x3_0 + w10 * x3_1 + w20 * x3_2 + w30 * x3_3;
        a0_4 += w00 * x4_0 + w10 * x4_1 + w20 * x4_2 + w30 * x4_3;
        a0_5 += w00 * x5_0 + w10 * x5_1 + w20 * x5_2 + w30 * x5_3;
        a0_6 += w00 * x6_0 + w10 * x6_1 + w20 * x6_2 + w30 * x6_3;
        a0_7 += w00 * x7_0 + w10 * x7_1 + w20 * x7_2 + w30 * x7_3;
        a1_0 += w01 * x0_0 + w11 * x0_1 + w21 * x0_2 + w31 * x0_3;
        a1_1 += w01 * x1_0 + w11 * x1_1 + w21 * x1_2 + w31 * x1_3;
        a1_2 += w01 * x2_0 + w11 * x2_1 + w21 * x2_2 + w31 * x2_3;
        a1_3 += w01 * x3_0 + w11 * x3_1 + w21 * x3_2 + w31 * x3_3;
        a1_4 += w01 * x4_0 + w11 * x4_1 + w21 * x4_2 + w31 * x4_3;
        a1_5 += w01 * x5_0 + w11 * x5_1 + w21 * x5_2 + w31 * x5_3;
        a1_6 += w01 * x6_0 + w11 * x6_1 + w21 * x6_2 + w31 * x6_3;
        a1_7 += w01 * x7_0 + w11 * x7_1 + w21 * x7_2 + w31 * x7_3;
        a2_0 += w02 * x0_0 + w12 * x0_1 + w22 * x0_2 + w32 * x0_3;
        a2_1 += w02 * x1_0 + w12 * x1_1 + w22 * x1_2 + w32 * x1_3;
        a2_2 += w02 * x2_0 + w12 * x2_1 + w22 * x2_2 + w32 * x2_3;
        a2_3 += w02 * x3_0 + w12 * x3_1 + w22 * x3_2 + w32 * x3_3;
        a2_4 += w02 * x4_0 + w12 * x4_1 + w22 * x4_2 + w32 * x4_3;
        a2_5 += w02 * x5_0 + w12 * x5_1 + w22 * x5_2 + w32 * x5_3;
        a2_6 += w02 * x6_0 + w12 * x6_1 + w22 * x6_2 + w32 * x6_3;
        a2_7 += w02 * x7_0 + w12 * x7_1 + w22 * x7_2 + w32 * x7_3;
        a3_0 += w03 * x0_0 + w13 * x0_1 + w23 * x0_2 + w33 * x0_3;
        a3_1 += w03 * x1_0 + w13 * x1_1 + w23 * x1_2 + w33 * x1_3;
        a3_2 += w03 * x2_0 + w13 * x2_1 + w23 * x2_2 + w33 * x2_3;
        a3_3 += w03 * x3_0 + w13 * x3_1 + w23 * x3_2 + w33 * x3_3;
        a3_4 += w03 * x4_0 + w13 * x4_1 + w23 * x4_2 + w33 * x4_3;
        a3_5 += w03 * x5_0 + w13 * x5_1 + w23 * x5_2 + w33 * x5_3;
        a3_6 += w03 * x6_0 + w13 * x6_1 + w23 * x6_2 + w33 * x6_3;
        a3_7 += w03 * x7_0 + w13 * x7_1 + w23 * x7_2 + w33 * x7_3;
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
    res[0] = upper(a0_0) + c0;
    res[1] = upper(a0_1) + c0;
    res[2] = upper(a0_2) + c0;
    res[3] = upper(a0_3) + c0;
    res[4] = upper(a0_4) + c0;
    res[5] = upper(a0_5) + c0;
    res[6] = upper(a0_6) + c0;
    res[7] = upper(a0_7) + c0;
    res[8] = upper(a1_0) + c1;
    res[9] = upper(a1_1) + c1;
    res[10] = upper(a1_2) + c1;
    res[11] = upper(a1_3) + c1;
    res[12] = upper(a1_4) + c1;
    res[13] = upper(a1_5) + c1;
    res[14] = upper(a1_6) + c1;
    res[15] = upper(a1_7) + c1;
    res[16] = upper(a2_0) + c2;
    res[17] = upper(a2_1) + c2;
    res[18] = upper(a2_2) + c2;
    res[19] = upper(a2_3) + c2;
    res[20] = upper(a2_4) + c2;
    res[21] = upper(a2_5) + c2;
    res[22] = upper(a2_6) + c2;
    res[23] = upper(a2_7) + c2;
    res[24] = upper(a3_0) + c3;
    res[25] = upper(a3_1) + c3;
    res[26] = upper(a3_2) + c3;
    res[27] = upper(a3_3) + c3;
    res[28] = upper(a3_4) + c3;
    res[29] = upper(a3_5) + c3;
    res[30] = upper(a3_6) + c3;
    res[31] = upper(a3_7) + c3;
    let count = min(8u, shape.width - xu);
    let pairs = select(1u, 2u, og + 2u < shape.ocg);
    for (var q = 0u; q < pairs; q++) {
        for (var k = 0u; k < count; k++) {
            store_pair(res[16u * q + k], res[16u * q + 8u + k], og + 2u * q, n, p0 + k);
        }
    }
}
