// The integer kernels' epilogue (conv_int8, conv_int4, gemm_int8), prepended by
// src/kernels/mod.rs after epilogue.wgsl. Each including kernel declares `vecs` (bias groups,
// PReLU slope groups, then the dequantization scales s_w[c] * s_a: 3 x ocg vec4), `residual`,
// `dst: array<u32>` and `params: StoreParams`.
//
// Modes: 0 writes the exact i32 sums; 1 dequantizes, runs the float epilogue and writes
// C4HW f32; 2 and 3 go on to requantize with the next layer's quantizer (Eq. 1) and write
// its packed input, four signed bytes per word (C4HW) or eight signed nibbles per word
// (C8HW: channel 8 w + 4 h + k at bits 8 k + 4 h of word w), so features travel between
// integer layers packed.

struct StoreParams {
    plane: u32,     // pixels (columns) per image
    ocg: u32,       // real output channel groups
    oc: u32,
    act: u32,
    epi: u32,
    leaky: f32,
    mode: u32,
    next: Eq1,      // the input quantizer of the next layer (modes 2 and 3)
}

fn int_finish(acc: vec4<i32>, g: u32, i: u32) -> vec4<f32> {
    return epilogue(vec4<f32>(acc) * vecs[2u * params.ocg + g], g, i);
}

// Signed codes of output group `g` for the next layer (Eq. 1 minus its zero point); lanes
// past the real channels are 0.0 after the epilogue, so they carry the code of a real zero.
fn requant(y: vec4<f32>, g: u32) -> vec4<i32> {
    let k = eq1_slot(params.next.per_channel, g);
    return eq1_codes(y, params.next.alpha[k], params.next.beta[k], params.next.inv_step[k],
        params.next.zero[k], params.next.lo, params.next.hi);
}

fn store4(i: u32, v: vec4<u32>) {
    dst[4u * i] = v.x;
    dst[4u * i + 1u] = v.y;
    dst[4u * i + 2u] = v.z;
    dst[4u * i + 3u] = v.w;
}

// Output groups g and g + 1 (g even; g + 1 may lie past the real groups) of column p of
// image n, corrections already added.
fn store_pair(a: vec4<i32>, b: vec4<i32>, g: u32, n: u32, p: u32) {
    let ia = (n * params.ocg + g) * params.plane + p;
    let ib = ia + params.plane;
    let has_b = g + 1u < params.ocg;
    switch params.mode {
        case 0u: {
            store4(ia, bitcast<vec4<u32>>(a));
            if has_b { store4(ib, bitcast<vec4<u32>>(b)); }
        }
        case 1u: {
            store4(ia, bitcast<vec4<u32>>(int_finish(a, g, ia)));
            if has_b { store4(ib, bitcast<vec4<u32>>(int_finish(b, g + 1u, ib))); }
        }
        case 2u: {
            dst[ia] = pack4xI8(requant(int_finish(a, g, ia), g));
            if has_b { dst[ib] = pack4xI8(requant(int_finish(b, g + 1u, ib), g + 1u)); }
        }
        default: {
            var high = requant(vec4<f32>(0.0), g + 1u);
            if has_b { high = requant(int_finish(b, g + 1u, ib), g + 1u); }
            let ocw = (params.ocg + 1u) / 2u;
            dst[(n * ocw + g / 2u) * params.plane + p] = nibbles_of(requant(int_finish(a, g, ia), g), high);
        }
    }
}
