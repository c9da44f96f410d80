//! An ncnn `.param` and `.bin` pair, split at the first NUL byte of the input.
#![no_main]

use std::path::Path;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let cut = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (param, bin) = (&data[..cut], &data[(cut + 1).min(data.len())..]);
    let _ = refqsr::model::ncnn::load_bytes(Path::new("m.param"), param, Path::new("m.bin"), bin);
});
