//! Packing of integer codes into u32 words: 8-bit codes four per word (the operands of WGSL's
//! `dot4I8Packed`/`dot4U8Packed`; element `i` in bits `8i..8i+8`), 2- to 4-bit codes eight per
//! word as signed nibbles, laid out so that two masks and a shift give back two byte words
//! for the same dot products ([`nibbles_of`], [`widen`]).

/// Pack signed bytes, four per word; the tail is zero-padded.
pub fn pack_i8x4(v: &[i8]) -> Vec<u32> {
    v.chunks(4)
        .map(|c| {
            c.iter()
                .enumerate()
                .fold(0u32, |w, (i, &b)| w | ((b as u8 as u32) << (8 * i)))
        })
        .collect()
}

/// Inverse of [`pack_i8x4`] for `n` elements.
pub fn unpack_i8x4(words: &[u32], n: usize) -> Vec<i8> {
    (0..n)
        .map(|i| (words[i / 4] >> (8 * (i % 4))) as u8 as i8)
        .collect()
}

/// The word of eight signed nibbles (codes of at most 4 bits) made of two words of four
/// signed bytes: channel `k` of `low` in bits `8k..8k+4`, channel `k` of `high` in bits
/// `8k+4..8k+8`. The kernels' C8HW layout; [`widen`] undoes it.
pub fn nibbles_of(low: u32, high: u32) -> u32 {
    (low & 0x0f0f_0f0f) | ((high & 0x0f0f_0f0f) << 4)
}

/// The two words of signed bytes (low, high) in a word of [`nibbles_of`], sign-extended as
/// `conv_int4.wgsl` does: bit 3 of each byte times 0x1e is the 0xf0 of the extension.
pub fn widen(v: u32) -> (u32, u32) {
    let ext = |b: u32| b | ((b & 0x0808_0808) * 0x1e);
    (ext(v & 0x0f0f_0f0f), ext((v >> 4) & 0x0f0f_0f0f))
}

/// The integer dot product of two packed words as WGSL's `dot4I8Packed` defines it.
pub fn dot4_i8(a: u32, b: u32) -> i32 {
    (0..4)
        .map(|i| ((a >> (8 * i)) as u8 as i8 as i32) * ((b >> (8 * i)) as u8 as i8 as i32))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let v: Vec<i8> = (0..37).map(|i| (i * 37 % 256) as u8 as i8).collect();
        assert_eq!(unpack_i8x4(&pack_i8x4(&v), v.len()), v);
        assert_eq!(pack_i8x4(&[1, -1, 0, 127]), vec![0x7f00_ff01]);
        // every pair of 4-bit values survives nibbles_of + widen
        for a in -8i8..8 {
            for b in -8i8..8 {
                let (lo, hi) = (pack_i8x4(&[a, b, -8, 7])[0], pack_i8x4(&[b, a, 7, -1])[0]);
                assert_eq!(widen(nibbles_of(lo, hi)), (lo, hi));
            }
        }
        assert_eq!(
            nibbles_of(pack_i8x4(&[1, 2, 3, 4])[0], pack_i8x4(&[-1, 5, 6, 7])[0]),
            0x7463_52f1
        );
    }

    #[test]
    fn dot4_matches_the_definition() {
        let (a, b) = ([-128i8, 127, -1, 5], [127i8, -128, -1, -5]);
        let want: i32 = a.iter().zip(&b).map(|(x, y)| *x as i32 * *y as i32).sum();
        assert_eq!(dot4_i8(pack_i8x4(&a)[0], pack_i8x4(&b)[0]), want);
    }
}
