// Gathers the K x K neighbourhood of every pixel of a packed activation tensor, so that an
// integer K x K convolution is one gemm_int8 product over K * K * icg input words:
// dst[((n * taps + tap) * icg + ic) * plane + p] = src word at (y + dy, x + dx), or the padding
// word of its input word (the four channels' bytes of the real value 0) outside the image.

struct Params {
    width: u32,
    height: u32,
    icg: u32,
    k: u32,         // 1 or 3
    batch: u32,
    // the padding word of each input word (its channels' real 0), entry min(word, 63)
    pads: array<vec4<u32>, 16>,
}

@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let plane = params.width * params.height;
    let p = gid.x;
    let ic = gid.y;
    let n = gid.z;
    if p >= plane {
        return;
    }
    let y = i32(p / params.width);
    let x = i32(p % params.width);
    let r = i32(params.k / 2u);
    let taps = params.k * params.k;
    let base = (n * params.icg + ic) * plane;
    let pw = min(ic, 63u);
    let pad = params.pads[pw / 4u][pw % 4u];
    for (var tap = 0u; tap < taps; tap++) {
        let yy = y + i32(tap / params.k) - r;
        let xx = x + i32(tap % params.k) - r;
        let inside = yy >= 0 && yy < i32(params.height) && xx >= 0 && xx < i32(params.width);
        let at = base + u32(clamp(yy, 0, i32(params.height) - 1)) * params.width + u32(clamp(xx, 0, i32(params.width) - 1));
        dst[((n * taps + tap) * params.icg + ic) * plane + p] = select(pad, src[at], inside);
    }
}
