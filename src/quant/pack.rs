//! Packing of integer codes into u32 words: 8-bit codes four per word (the operands of WGSL's
//! `dot4I8Packed`/`dot4U8Packed`), 2- to 4-bit codes eight per word as nibbles (expanded to
//! bytes in registers). Little-endian within the word: element `i` is bits `8i..8i+8`
//! (bytes) or `4i..4i+4` (nibbles).

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

/// Pack 4-bit codes (0..16), eight per word; the tail is zero-padded.
pub fn pack_u4x8(v: &[u8]) -> Vec<u32> {
    v.chunks(8)
        .map(|c| {
            c.iter().enumerate().fold(0u32, |w, (i, &b)| {
                assert!(b < 16, "code {b} does not fit 4 bits");
                w | ((b as u32) << (4 * i))
            })
        })
        .collect()
}

/// Inverse of [`pack_u4x8`] for `n` elements.
pub fn unpack_u4x8(words: &[u32], n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| ((words[i / 8] >> (4 * (i % 8))) & 0xf) as u8)
        .collect()
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
        let n: Vec<u8> = (0..29).map(|i| (i * 7 % 16) as u8).collect();
        assert_eq!(unpack_u4x8(&pack_u4x8(&n), n.len()), n);
        assert_eq!(pack_i8x4(&[1, -1, 0, 127]), vec![0x7f00_ff01]);
        assert_eq!(pack_u4x8(&[1, 2, 3, 4, 5, 6, 7, 15]), vec![0xf765_4321]);
    }

    #[test]
    fn dot4_matches_the_definition() {
        let (a, b) = ([-128i8, 127, -1, 5], [127i8, -128, -1, -5]);
        let want: i32 = a.iter().zip(&b).map(|(x, y)| *x as i32 * *y as i32).sum();
        assert_eq!(dot4_i8(pack_i8x4(&a)[0], pack_i8x4(&b)[0]), want);
    }
}
