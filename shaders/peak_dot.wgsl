// The adapter's packed int8 peak (in the spirit of vkpeak): every invocation runs 16
// independent dependency chains v = dot4I8Packed(v, w) + c (four vec4) for ITERS steps. The
// sum is fed back as the next packed operand, so each step needs the previous one's bytes and
// the compiler cannot turn the loop into a closed form. Fewer chains than peak_fma: a dot
// product is several instructions wherever it is emulated, which hides latency by itself (on
// lavapipe 8 chains reach 95% and 32 chains 105% of what 16 reach). `w` and `c` come from a
// uniform so nothing folds, and every chain's final value is stored so none of it is dead
// code. i32 addition wraps in WGSL, so the CPU twin matches bit for bit.

override ITERS: u32 = 1024u;

struct Params {
    n: u32,     // invocations
    row: u32,   // invocations per grid row (grid_1d)
    w: u32,     // four signed bytes
    c: i32,
}

// Four vec4 per invocation: its 16 chains.
@group(0) @binding(0) var<storage, read> seeds: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> out: array<vec4<u32>>;
@group(0) @binding(2) var<uniform> params: Params;

fn step4(v: vec4<u32>, w: u32, c: i32) -> vec4<u32> {
    let d = vec4<i32>(dot4I8Packed(v.x, w), dot4I8Packed(v.y, w), dot4I8Packed(v.z, w), dot4I8Packed(v.w, w));
    return bitcast<vec4<u32>>(d + vec4<i32>(c));
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * params.row + gid.x;
    if i >= params.n {
        return;
    }
    let w = params.w;
    let c = params.c;
    var x0 = seeds[4u * i + 0u];
    var x1 = seeds[4u * i + 1u];
    var x2 = seeds[4u * i + 2u];
    var x3 = seeds[4u * i + 3u];
    for (var t = 0u; t < ITERS; t++) {
        x0 = step4(x0, w, c);
        x1 = step4(x1, w, c);
        x2 = step4(x2, w, c);
        x3 = step4(x3, w, c);
    }
    out[4u * i + 0u] = x0;
    out[4u * i + 1u] = x1;
    out[4u * i + 2u] = x2;
    out[4u * i + 3u] = x3;
}
