// Shared helpers, prepended to every kernel by src/kernels/mod.rs (WGSL has no #include).
//
// Tensors are stored "C4HW": channels in groups of four, one vec4<f32> per pixel and group,
// index ((n * groups + g) * height + y) * width + x. Lanes past the real channel count are
// kept at zero by every kernel so that they can never turn into NaN downstream.

fn sigmoid4(x: vec4<f32>) -> vec4<f32> {
    return 1.0 / (1.0 + exp(-x));
}

// Activation codes match model::Activation::code().
fn activate(x: vec4<f32>, act: u32, leaky: f32, slope: vec4<f32>) -> vec4<f32> {
    switch act {
        case 1u: { return max(x, vec4<f32>(0.0)); }
        case 2u: { return select(x * leaky, x, x >= vec4<f32>(0.0)); }
        case 3u: { return select(x * slope, x, x >= vec4<f32>(0.0)); }
        case 4u: { return x * sigmoid4(x); }
        case 5u: { return sigmoid4(x); }
        default: { return x; }
    }
}

// `v` with the lanes of group `g` past the real channel count set to zero (a select, not a
// multiply, so that inf or NaN in a padding lane cannot survive).
fn mask_lanes(v: vec4<f32>, g: u32, channels: u32) -> vec4<f32> {
    let c = vec4<u32>(g * 4u) + vec4<u32>(0u, 1u, 2u, 3u);
    return select(vec4<f32>(0.0), v, c < vec4<u32>(channels));
}

// An input quantizer (src/quant ActQuant): per channel group its bounds, 1 / step and zero
// point, or with `per_channel` 0 one set (entry 0) for all groups; entries past the real
// channels repeat the last channel, as do the CPU twins. Every channel's codes minus its zero
// point span the same `lo..=hi` (-2^(b-1)..2^(b-1) - 1), so one clamp serves them all.
struct Eq1 {
    per_channel: u32,
    lo: i32,
    hi: i32,
    alpha: array<vec4<f32>, 64>,
    beta: array<vec4<f32>, 64>,
    inv_step: array<vec4<f32>, 64>,
    zero: array<vec4<i32>, 64>,
}

// The entry of `Eq1`'s arrays that holds channel group `g`.
fn eq1_slot(per_channel: u32, g: u32) -> u32 {
    return select(0u, min(g, 63u), per_channel != 0u);
}

// Eq. 1 codes of `x` minus the zero point: the signed values the integer kernels carry
// (src/quant). WGSL's multiply is correctly rounded and round() ties to even, so the CPU
// (`Quantizer::byte`) reproduces every one.
fn eq1_codes(x: vec4<f32>, alpha: vec4<f32>, beta: vec4<f32>, inv_step: vec4<f32>, zero: vec4<i32>, lo: i32, hi: i32) -> vec4<i32> {
    let c = clamp(x, alpha, beta);
    return clamp(vec4<i32>(round(c * inv_step)) - zero, vec4<i32>(lo), vec4<i32>(hi));
}

// Two words of four signed codes (at most 4 bits) as one word of eight nibbles: `low`'s code
// k in bits 8k..8k+4, `high`'s in bits 8k+4..8k+8 (quant::pack::nibbles_of).
fn nibbles_of(low: vec4<i32>, high: vec4<i32>) -> u32 {
    return (pack4xI8(low) & 0x0f0f0f0fu) | ((pack4xI8(high) & 0x0f0f0f0fu) << 4u);
}
