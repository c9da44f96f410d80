// The adapter's fp32 peak (in the spirit of vkpeak): every invocation runs 32 independent
// dependency chains x = fma(x, a, b) (eight vec4) for ITERS steps. So many chains because a
// single invocation must keep every FMA pipe busy where the driver runs few invocations at a
// time: on lavapipe 8 chains reach 20%, 16 chains 60% and 64 chains 110% of what 32 reach,
// while 32 floats of state still fit the register files of GPUs. `a` and `b` come from a
// uniform so the compiler cannot fold the loop, and every chain's final value is stored so
// none of it is dead code.
//
// With `a` a power of two the product x * a is exact, so the sum rounds the same whether the
// driver fuses the multiply-add or not: the CPU twin reproduces the output bit for bit (as
// long as no value is subnormal, which drivers may flush).

override ITERS: u32 = 1024u;

struct Params {
    n: u32,     // invocations
    row: u32,   // invocations per grid row (grid_1d)
    a: f32,
    b: f32,
}

// Eight vec4 per invocation: its 32 chains.
@group(0) @binding(0) var<storage, read> seeds: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * params.row + gid.x;
    if i >= params.n {
        return;
    }
    let a = vec4<f32>(params.a);
    let b = vec4<f32>(params.b);
    var x0 = seeds[8u * i + 0u];
    var x1 = seeds[8u * i + 1u];
    var x2 = seeds[8u * i + 2u];
    var x3 = seeds[8u * i + 3u];
    var x4 = seeds[8u * i + 4u];
    var x5 = seeds[8u * i + 5u];
    var x6 = seeds[8u * i + 6u];
    var x7 = seeds[8u * i + 7u];
    for (var t = 0u; t < ITERS; t++) {
        x0 = fma(x0, a, b);
        x1 = fma(x1, a, b);
        x2 = fma(x2, a, b);
        x3 = fma(x3, a, b);
        x4 = fma(x4, a, b);
        x5 = fma(x5, a, b);
        x6 = fma(x6, a, b);
        x7 = fma(x7, a, b);
    }
    out[8u * i + 0u] = x0;
    out[8u * i + 1u] = x1;
    out[8u * i + 2u] = x2;
    out[8u * i + 3u] = x3;
    out[8u * i + 4u] = x4;
    out[8u * i + 5u] = x5;
    out[8u * i + 6u] = x6;
    out[8u * i + 7u] = x7;
}
