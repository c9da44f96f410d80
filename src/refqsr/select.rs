//! Reference selection on the host, Eqs. 2-3 of the paper: from the ClustBlock logits `V`
//! (N patches x C classes), `A` = softmax over each row, `A'` = softmax over each column,
//! `M = A A'`, and each patch's reference is the argmax of its row of `M`. A patch whose
//! cosine similarity to its reference (on the rows of `V`) is below `tau` becomes its own
//! reference. References are the patches chosen by some patch; queries are the rest.

/// Which patch each patch borrows from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// `reference[i]` is the reference patch of patch `i`; `reference[i] == i` for references.
    pub reference: Vec<usize>,
}

impl Selection {
    /// Every patch its own reference (what `w8a8` computes).
    pub fn all_references(n: usize) -> Selection {
        Selection {
            reference: (0..n).collect(),
        }
    }

    pub fn is_reference(&self, i: usize) -> bool {
        self.reference[i] == i
    }

    /// Reference patches, in patch order.
    pub fn references(&self) -> Vec<usize> {
        (0..self.reference.len())
            .filter(|&i| self.is_reference(i))
            .collect()
    }

    /// Share of patches that are references (1 for an empty selection).
    pub fn reference_share(&self) -> f64 {
        if self.reference.is_empty() {
            return 1.0;
        }
        self.references().len() as f64 / self.reference.len() as f64
    }

    /// The same references, each query paired with a reference drawn at random (seeded): the
    /// paper's "random references" ablation, to show what the clustering's pairing is worth.
    pub fn shuffled(&self, seed: u64) -> Selection {
        let refs = self.references();
        let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
        let reference = (0..self.reference.len())
            .map(|i| {
                if self.is_reference(i) {
                    i
                } else {
                    // splitmix64
                    state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let mut z = state;
                    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                    refs[((z ^ (z >> 31)) % refs.len() as u64) as usize]
                }
            })
            .collect();
        Selection { reference }
    }
}

/// Eqs. 2-3 on `v` (row-major `n` x `c`), with the cosine threshold `tau`.
///
/// `M` is never stored: row `i` of `M` is `A[i] A'`, computed one row at a time, so memory
/// stays O(N C) for any number of patches (time is O(N^2 C)).
pub fn select(v: &[f32], n: usize, c: usize, tau: f32) -> Selection {
    assert_eq!(v.len(), n * c);
    if n == 0 || c == 0 {
        return Selection::all_references(n);
    }
    let softmax = |xs: &mut [f64]| {
        let m = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0.0;
        for x in xs.iter_mut() {
            *x = (*x - m).exp();
            sum += *x;
        }
        for x in xs.iter_mut() {
            *x /= sum;
        }
    };
    // A: rows over classes
    let mut a: Vec<f64> = v.iter().map(|&x| x as f64).collect();
    for row in a.chunks_mut(c) {
        softmax(row);
    }
    // A' (c x n): each class's distribution over patches
    let mut at = vec![0f64; c * n];
    for j in 0..c {
        let col = &mut at[j * n..(j + 1) * n];
        for (i, x) in col.iter_mut().enumerate() {
            *x = v[i * c + j] as f64;
        }
        softmax(col);
    }
    let mut chosen = vec![0usize; n];
    let mut row = vec![0f64; n];
    for i in 0..n {
        row.iter_mut().for_each(|x| *x = 0.0);
        for j in 0..c {
            let aij = a[i * c + j];
            for (m, &x) in row.iter_mut().zip(&at[j * n..(j + 1) * n]) {
                *m += aij * x;
            }
        }
        // ties go to the lowest index, so the plan is the same every run
        let mut best = 0;
        for k in 1..n {
            if row[k] > row[best] {
                best = k;
            }
        }
        chosen[i] = best;
    }
    let cosine = |i: usize, k: usize| {
        let (x, y) = (&v[i * c..(i + 1) * c], &v[k * c..(k + 1) * c]);
        let dot: f64 = x.iter().zip(y).map(|(&p, &q)| p as f64 * q as f64).sum();
        let nx: f64 = x.iter().map(|&p| (p as f64).powi(2)).sum::<f64>().sqrt();
        let ny: f64 = y.iter().map(|&p| (p as f64).powi(2)).sum::<f64>().sqrt();
        if nx == 0.0 || ny == 0.0 {
            // two all-zero rows are the same patch as far as the clustering can tell
            if nx == ny {
                1.0
            } else {
                0.0
            }
        } else {
            dot / (nx * ny)
        }
    };
    for (i, r) in chosen.iter_mut().enumerate() {
        if *r != i && cosine(i, *r) < tau as f64 {
            *r = i;
        }
    }
    // chosen by someone (itself included) = reference; the rest borrow from their choice
    let mut is_ref = vec![false; n];
    for &r in &chosen {
        is_ref[r] = true;
    }
    let reference = (0..n)
        .map(|i| if is_ref[i] { i } else { chosen[i] })
        .collect();
    Selection { reference }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_query_points_at_a_reference() {
        // three textures, many patches each, a little noise
        let (n, c) = (60, 5);
        let mut v = vec![0f32; n * c];
        for i in 0..n {
            for j in 0..c {
                let base = if j == i % 3 { 4.0 } else { -1.0 };
                v[i * c + j] = base + ((i * 7 + j * 13) % 11) as f32 * 0.05;
            }
        }
        let s = select(&v, n, c, 0.5);
        for i in 0..n {
            assert!(s.is_reference(s.reference[i]), "patch {i}");
            // the same texture
            assert_eq!(s.reference[i] % 3, i % 3, "patch {i}");
        }
        assert!(s.reference_share() < 0.5, "{}", s.reference_share());
        assert_eq!(s, select(&v, n, c, 0.5));
    }

    #[test]
    fn tau_above_one_makes_every_patch_a_reference() {
        let v: Vec<f32> = (0..40).map(|i| (i % 7) as f32).collect();
        assert_eq!(select(&v, 10, 4, 1.5), Selection::all_references(10));
    }

    #[test]
    fn one_patch_and_a_flat_image() {
        assert_eq!(select(&[0.3, -0.2], 1, 2, 0.5).reference, vec![0]);
        let flat = vec![1.0f32; 8 * 3];
        let s = select(&flat, 8, 3, 0.5);
        assert_eq!(s.reference, vec![0; 8]);
        let zero = vec![0.0f32; 8 * 3];
        assert_eq!(select(&zero, 8, 3, 0.5).reference, vec![0; 8]);
    }

    #[test]
    fn random_pairing_keeps_the_references() {
        let v: Vec<f32> = (0..200).map(|i| ((i * 37) % 17) as f32 * 0.3).collect();
        let s = select(&v, 50, 4, 0.0);
        let r = s.shuffled(7);
        assert_eq!(r.references(), s.references());
        assert!((0..50).all(|i| r.is_reference(r.reference[i])));
        assert_eq!(r, s.shuffled(7));
    }
}
