//! CPU twin of `shaders/argmax.wgsl` (RefER's hard matching, RefQSR Eqs. 6-7 at inference).

/// idx `[n][i]`: the first j of largest `e[n][i][j]`. The shader's strided scan and tree
/// reduction break ties towards the smaller index, so a plain scan gives the same answer.
pub fn argmax(e: &[i32], batch: usize, cells: usize) -> Vec<u32> {
    e[..batch * cells * cells]
        .chunks(cells)
        .map(|row| {
            let mut best = 0;
            for (j, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = j;
                }
            }
            best as u32
        })
        .collect()
}
