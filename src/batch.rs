//! Folder jobs: which files to upscale and where their results go.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::imageio::is_image;

/// Every image under `input` (recursively, sorted) paired with its path under `output`
/// (same relative path and name).
pub fn collect(input: &Path, output: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    let mut jobs = Vec::new();
    let mut stack = vec![input.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        for entry in entries {
            let path = entry.map_err(|e| Error::io(&dir, e))?.path();
            if path.is_dir() {
                stack.push(path);
            } else if is_image(&path) {
                let rel = path.strip_prefix(input).expect("under input");
                jobs.push((path.clone(), output.join(rel)));
            }
        }
    }
    jobs.sort();
    Ok(jobs)
}

/// Every image under `dir` (recursively, sorted).
pub fn images(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(collect(dir, dir)?.into_iter().map(|(p, _)| p).collect())
}

/// Create the folder an output file goes into.
pub fn prepare(dst: &Path) -> Result<()> {
    match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => {
            std::fs::create_dir_all(p).map_err(|e| Error::io(p, e))
        }
        _ => Ok(()),
    }
}
