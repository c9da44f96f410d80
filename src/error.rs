//! The crate's error type: every failure a user can cause names the file and the problem.

use std::path::PathBuf;

/// Everything that can go wrong in refqsr, with enough context to act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No GPU adapter at all: no driver, or no software Vulkan installed.
    #[error(
        "no GPU adapter found. Install your GPU's Vulkan/Metal/DX12 driver, or a software \
         Vulkan driver (Debian/Ubuntu: `sudo apt install mesa-vulkan-drivers`, Mesa >= 25 \
         recommended), then run `refqsr adapters` to check"
    )]
    NoAdapter,

    /// `--adapter` did not match any adapter.
    #[error("no adapter matches `{wanted}`; available adapters:\n{available}")]
    AdapterNotFound { wanted: String, available: String },

    /// The device could not be created or failed while running.
    #[error("GPU error: {0}")]
    Gpu(String),

    /// The device (or the host) ran out of memory; callers retry with smaller tiles.
    #[error("out of memory: {0}")]
    OutOfMemory(String),

    /// A model file is malformed or uses something we do not support.
    #[error("{}: {message}", path.display())]
    Model { path: PathBuf, message: String },

    /// A model (or a part of the graph) cannot run on this engine.
    #[error("model `{model}`: {message}")]
    Unsupported { model: String, message: String },

    /// An image could not be read, decoded, encoded or written.
    #[error("{}: {message}", path.display())]
    Image { path: PathBuf, message: String },

    /// The user asked for something inconsistent (a scale the model does not have, a bad tile size...).
    #[error("{0}")]
    Invalid(String),

    /// Plain I/O failure on a named path.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn model(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Model {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn image(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Error::Image {
            path: path.into(),
            message: message.to_string(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
