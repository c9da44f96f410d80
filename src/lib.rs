//! refqsr: a GPU super-resolution engine on wgpu, every kernel a hand-written WGSL shader.
//!
//! ```no_run
//! use refqsr::{Options, Upscaler};
//! let upscaler = Upscaler::new(&Options::default())?;
//! upscaler.upscale_file("photo.png".as_ref(), "photo_x4.png".as_ref())?;
//! # Ok::<(), refqsr::Error>(())
//! ```

pub mod calibrate;
pub mod error;
pub mod eval;
pub mod exec;
pub mod gpu;
pub mod kernels;
pub mod model;

pub use error::{Error, Result};
pub mod imageio;
pub mod job;
pub mod tile;
pub mod upscaler;

pub use upscaler::{Options, Upscaler};
pub mod batch;
pub mod bench;
pub mod metrics;
pub mod profile;
pub mod quant;
pub mod refqsr;
