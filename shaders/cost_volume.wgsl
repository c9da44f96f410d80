// RefER cost volume (RefQSR Eq. 5): the similarity of every query cell i with every reference
// cell j of the same window, E[n][i][j] = sum over channel groups g of the integer dot product
// of their codes (refer_prep.wgsl), q[n][i][g] . r[n][j][g]. Exact in i32, so the CPU twin
// matches bit for bit.
//
// A P x P product with a short inner dimension (the channel groups): each workgroup computes
// a 16 x 16 tile of E, staging 16 groups of its 16 query and 16 reference vectors in
// workgroup memory at a time, so each word is read from storage once per tile instead of
// once per output.

const TILE: u32 = 16u;

struct Params {
    cells: u32,     // P
    groups: u32,    // words per cell vector
}

@group(0) @binding(0) var<storage, read> q: array<u32>;
@group(0) @binding(1) var<storage, read> r: array<u32>;
@group(0) @binding(2) var<storage, read_write> e: array<i32>;
@group(0) @binding(3) var<uniform> params: Params;

// [cell in tile][group in chunk]; rows of 17 words so that the 16 invocations of a row,
// each reading its own reference vector, do not all hit the same memory bank
var<workgroup> qt: array<array<u32, 17>, 16>;
var<workgroup> rt: array<array<u32, 17>, 16>;

// No early return: every invocation takes part in the staging and the barriers; the ones
// past the edge of E load zeros and skip the store.
@compute @workgroup_size(16, 16, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let cells = params.cells;
    let groups = params.groups;
    let base = wid.z * cells;
    let i0 = wid.y * TILE;
    let j0 = wid.x * TILE;
    var acc = 0i;
    for (var g0 = 0u; g0 < groups; g0 += TILE) {
        // invocation (x, y) stages group g0 + x of query i0 + y and of reference j0 + y
        let g = g0 + lid.x;
        let qi = i0 + lid.y;
        let rj = j0 + lid.y;
        var qw = 0u;
        var rw = 0u;
        if g < groups && qi < cells {
            qw = q[(base + qi) * groups + g];
        }
        if g < groups && rj < cells {
            rw = r[(base + rj) * groups + g];
        }
        qt[lid.y][lid.x] = qw;
        rt[lid.y][lid.x] = rw;
        workgroupBarrier();
        let chunk = min(TILE, groups - g0);
        for (var k = 0u; k < chunk; k++) {
            acc += dot4I8Packed(qt[lid.y][k], rt[lid.x][k]);
        }
        workgroupBarrier();
    }
    let i = i0 + lid.y;
    let j = j0 + lid.x;
    if i < cells && j < cells {
        e[(base + i) * cells + j] = acc;
    }
}
