//! Where an upscale spends its time: the stages of a run ([`Stage`]) and a [`Profiler`] that
//! measures them with GPU timestamp queries where the adapter has them, else with host clocks
//! around one submission per stage segment.

use std::cell::RefCell;
use std::time::Instant;

use crate::error::Result;
use crate::gpu::Context;

/// A stage of an upscale. Uniform modes use [`Stage::Body`]; RefQSR splits the body into its
/// reference and query groups and RefER's kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// Host image to device buffer.
    Upload,
    /// RefQSR's patch clustering: its convolutions with their own transfers.
    ClustBlock,
    /// The network up to the last convolution (uniform modes).
    Body,
    /// RefQSR: the body on reference patches (at b_high), with their copies into the store.
    ReferenceBody,
    /// RefQSR: the body on query patches (at b_low), with the copies out of the store.
    QueryBody,
    /// RefER: per-pixel normalisation, pooling and b_low codes of query and reference.
    ReferPrep,
    CostVolume,
    Argmax,
    Warp,
    /// RefER's 1x1 convolution with its residual.
    ReferConv,
    /// The last convolution and the pixel shuffle.
    Tail,
    /// Device buffer to host image.
    Download,
    /// What no other stage measured: tiling and merging on the host, waits, mapping.
    Host,
}

impl Stage {
    pub const ALL: [Stage; 13] = [
        Stage::Upload,
        Stage::ClustBlock,
        Stage::Body,
        Stage::ReferenceBody,
        Stage::QueryBody,
        Stage::ReferPrep,
        Stage::CostVolume,
        Stage::Argmax,
        Stage::Warp,
        Stage::ReferConv,
        Stage::Tail,
        Stage::Download,
        Stage::Host,
    ];

    /// The key used in bench files.
    pub fn key(self) -> &'static str {
        match self {
            Stage::Upload => "upload",
            Stage::ClustBlock => "clustblock",
            Stage::Body => "body",
            Stage::ReferenceBody => "reference_body",
            Stage::QueryBody => "query_body",
            Stage::ReferPrep => "refer_prep",
            Stage::CostVolume => "cost_volume",
            Stage::Argmax => "argmax",
            Stage::Warp => "warp",
            Stage::ReferConv => "refer_conv",
            Stage::Tail => "tail",
            Stage::Download => "download",
            Stage::Host => "host",
        }
    }

    fn index(self) -> usize {
        Stage::ALL.iter().position(|&s| s == self).expect("listed")
    }
}

/// How a [`Profiler`] measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// GPU timestamp queries written between stage segments in one submission.
    GpuTimestamps,
    /// Host wall time around one submission per segment, waited for (it adds a round trip
    /// per segment, so the split runs slower than an unprofiled run).
    Host,
}

impl Clock {
    pub fn key(self) -> &'static str {
        match self {
            Clock::GpuTimestamps => "gpu-timestamps",
            Clock::Host => "host",
        }
    }
}

/// Most timestamps one submission may write: a plan has well under a hundred segments.
const MAX_QUERIES: u32 = 1024;

/// One segment of work: its stage and the commands that record it.
pub type Segment<'a> = (Stage, Box<dyn FnOnce(&mut wgpu::CommandEncoder) + 'a>);

/// Accumulates the time of each [`Stage`] over any number of submissions.
pub struct Profiler {
    clock: Clock,
    ms: RefCell<[f64; Stage::ALL.len()]>,
    queries: Option<(wgpu::QuerySet, wgpu::Buffer, wgpu::Buffer)>,
    period_ns: f64,
}

impl Profiler {
    /// A profiler on `ctx`: GPU timestamps when the device has them (and `host_only` is
    /// false), else host clocks.
    pub fn new(ctx: &Context, host_only: bool) -> Self {
        let needed =
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        let queries = (!host_only && ctx.features.contains(needed)).then(|| {
            let set = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("stage timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: MAX_QUERIES,
            });
            let bytes = MAX_QUERIES as u64 * 8;
            let resolve = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamp resolve"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let read = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamp readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            (set, resolve, read)
        });
        Profiler {
            clock: if queries.is_some() {
                Clock::GpuTimestamps
            } else {
                Clock::Host
            },
            ms: RefCell::new([0.0; Stage::ALL.len()]),
            queries,
            period_ns: ctx.queue.get_timestamp_period() as f64,
        }
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Add `ms` to `stage`.
    pub fn add(&self, stage: Stage, ms: f64) {
        self.ms.borrow_mut()[stage.index()] += ms;
    }

    /// Time of each stage so far, in [`Stage::ALL`] order.
    pub fn stages(&self) -> Vec<(Stage, f64)> {
        let ms = self.ms.borrow();
        Stage::ALL.iter().map(|&s| (s, ms[s.index()])).collect()
    }

    /// Sum of every stage so far (ms).
    pub fn total(&self) -> f64 {
        self.ms.borrow().iter().sum()
    }

    /// Run `f` on the host and, under the host clock, count its wall time as `stage` (GPU
    /// timestamps cannot see host work, which then falls to [`Stage::Host`]).
    pub fn host<T>(&self, stage: Stage, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        if self.clock == Clock::Host {
            self.add(stage, t.elapsed().as_secs_f64() * 1e3);
        }
        out
    }

    /// Record and submit `segments` and wait for them, adding each segment's time to its
    /// stage: one submission with a timestamp between segments, or one submission each.
    pub fn submit(&self, ctx: &Context, segments: Vec<Segment<'_>>) -> Result<()> {
        match &self.queries {
            Some((set, resolve, read)) => {
                assert!(segments.len() < MAX_QUERIES as usize, "too many segments");
                let mut enc = ctx.device.create_command_encoder(&Default::default());
                enc.write_timestamp(set, 0);
                let mut stages = Vec::with_capacity(segments.len());
                for (i, (stage, record)) in segments.into_iter().enumerate() {
                    record(&mut enc);
                    enc.write_timestamp(set, i as u32 + 1);
                    stages.push(stage);
                }
                let n = stages.len() as u32 + 1;
                enc.resolve_query_set(set, 0..n, resolve, 0);
                enc.copy_buffer_to_buffer(resolve, 0, read, 0, n as u64 * 8);
                ctx.submit(enc.finish());
                let ticks: Vec<u64> = ctx.map_as(read, n as u64 * 8)?;
                for (i, stage) in stages.into_iter().enumerate() {
                    // Some drivers reorder or reset counters; a negative span counts as zero.
                    let span = ticks[i + 1].saturating_sub(ticks[i]);
                    self.add(stage, span as f64 * self.period_ns / 1e6);
                }
            }
            None => {
                for (stage, record) in segments {
                    let t = Instant::now();
                    let mut enc = ctx.device.create_command_encoder(&Default::default());
                    record(&mut enc);
                    ctx.submit_and_wait(enc.finish())?;
                    self.add(stage, t.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        Ok(())
    }
}
