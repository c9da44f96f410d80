// The convolutions' epilogue, shared by conv.wgsl, gemm.wgsl and winograd_output.wgsl (each
// declares `vecs`, `residual` and a `params` with act, leaky, ocg, oc and epi): bias, then
// the activation, SPAN's gate or a residual add, and the lane mask.
// `vecs` holds bias groups [0, ocg), then PReLU slope groups [ocg, 2 ocg).

fn epilogue(acc: vec4<f32>, g: u32, index: u32) -> vec4<f32> {
    let x = acc + vecs[g];
    var y = activate(x, params.act, params.leaky, vecs[params.ocg + g]);
    if params.epi == 1u {
        y = (x + residual[index]) * (sigmoid4(x) - 0.5);
    } else if params.epi == 2u {
        y = y + residual[index];
    }
    return mask_lanes(y, g, params.oc);
}
