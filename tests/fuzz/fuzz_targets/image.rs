//! Any image bytes through refqsr's decoder (format guessed from the content, with the
//! decompression-bomb limits and EXIF orientation).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = refqsr::imageio::decode_bytes(data, std::path::Path::new("x.img"));
});
