//! The wgpu context: adapter choice, device creation, pipeline cache, buffer pool, readback.

mod adapter;
mod pool;

pub use adapter::{describe_adapters, AdapterReport, IntDot};
pub use pool::BufferPool;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// One device and everything shared by the work submitted to it.
pub struct Context {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub features: wgpu::Features,
    pub limits: wgpu::Limits,
    /// How `dot4I8Packed` runs on this adapter.
    pub int_dot: IntDot,
    /// The integer path's self-check on this device: run once, before the first integer
    /// model (see [`crate::kernels::int_conv::self_check`]).
    pub(crate) int_check: std::sync::OnceLock<std::result::Result<(), String>>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>>,
    modules: Mutex<HashMap<&'static str, Arc<wgpu::ShaderModule>>>,
    pool: Mutex<BufferPool>,
    /// Bytes of every weight and uniform buffer created so far (see [`Context::uploaded`]).
    uploaded: std::sync::atomic::AtomicU64,
    dummy: wgpu::Buffer,
    /// GPU errors reported outside an error scope, and device loss, until the next
    /// [`Context::check`].
    faults: Arc<Mutex<Faults>>,
    /// Faults injected for tests (`REFQSR_FAULT`, see [`Fault`]).
    inject: Vec<Fault>,
}

/// What the device reported since the last [`Context::check`].
#[derive(Default)]
struct Faults {
    /// (out of memory, message)
    errors: Vec<(bool, String)>,
    lost: Option<String>,
}

/// A fault tests inject through the environment variable `REFQSR_FAULT` (a comma-separated
/// list), so the error paths run on a healthy device as they would on a failing one:
/// - `oom-above:BYTES`: every tensor buffer larger than BYTES fails as out of device memory;
/// - `lose-device`: the device is lost before the first submission;
/// - `self-check`: the integer self-check sees a wrong result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    OomAbove(u64),
    LoseDevice,
    SelfCheck,
}

impl Fault {
    fn from_env() -> Vec<Fault> {
        let Ok(v) = std::env::var("REFQSR_FAULT") else {
            return Vec::new();
        };
        v.split(',')
            .filter_map(|f| match f.trim().split_once(':') {
                Some(("oom-above", n)) => n.parse().ok().map(Fault::OomAbove),
                None if f.trim() == "lose-device" => Some(Fault::LoseDevice),
                None if f.trim() == "self-check" => Some(Fault::SelfCheck),
                _ => None,
            })
            .collect()
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PipelineKey {
    shader: &'static str,
    constants: Vec<(&'static str, u64)>,
}

impl Context {
    /// Open the best adapter (discrete > integrated > virtual > software), or the one `wanted`
    /// names: an index from `refqsr adapters` or a case-insensitive part of its name.
    pub fn new(wanted: Option<&str>) -> Result<Arc<Context>> {
        let instance = adapter::instance();
        let adapters = adapter::ranked(&instance);
        if adapters.is_empty() {
            return Err(Error::NoAdapter);
        }
        let chosen = match wanted {
            None => adapters.into_iter().next().expect("non-empty"),
            Some(w) => adapter::select(adapters, w)?,
        };
        Self::from_adapter(chosen)
    }

    /// The adapters `wanted` names: `all` of them (best first), or the one an index or name
    /// part picks (see [`Context::new`]). With `all`, an adapter that fails to open is an
    /// error in its place, so the others still run.
    pub fn open_all(wanted: Option<&str>) -> Result<Vec<Result<Arc<Context>>>> {
        match wanted {
            Some(w) if w.eq_ignore_ascii_case("all") => {
                let instance = adapter::instance();
                let adapters = adapter::ranked(&instance);
                if adapters.is_empty() {
                    return Err(Error::NoAdapter);
                }
                Ok(adapters.into_iter().map(Self::from_adapter).collect())
            }
            w => Ok(vec![Ok(Self::new(w)?)]),
        }
    }

    fn from_adapter(adapter: wgpu::Adapter) -> Result<Arc<Context>> {
        let info = adapter.get_info();
        let int_dot = adapter::int_dot_native(&adapter);
        let available = adapter.features();
        let wanted =
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        let features = available & wanted;
        // Take every limit the adapter offers: big storage bindings mean bigger tiles.
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("refqsr"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| {
            Error::Gpu(format!(
                "cannot open {} ({:?}): {e}",
                info.name, info.backend
            ))
        })?;
        // Errors outside a scope are collected, and turned into the failure of whatever runs
        // next by `check`: a failed submission must never be read back as an image.
        let faults = Arc::new(Mutex::new(Faults::default()));
        let f = faults.clone();
        device.on_uncaptured_error(Arc::new(move |e| {
            let oom = matches!(e, wgpu::Error::OutOfMemory { .. });
            f.lock().expect("faults").errors.push((oom, e.to_string()));
        }));
        let f = faults.clone();
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut f) = f.lock() {
                f.lost = Some(format!("{reason:?}: {message}"));
            }
        });
        let inject = Fault::from_env();
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("unused binding"),
            size: 256,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Ok(Arc::new(Context {
            device,
            queue,
            info,
            features,
            limits,
            int_dot,
            int_check: std::sync::OnceLock::new(),
            pipelines: Mutex::new(HashMap::new()),
            modules: Mutex::new(HashMap::new()),
            pool: Mutex::new(BufferPool::default()),
            uploaded: Default::default(),
            dummy,
            faults,
            inject,
        }))
    }

    /// One line naming the adapter and driver, for logs and test output.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?}, driver: {} {})",
            self.info.name,
            self.info.backend,
            self.info.device_type,
            self.info.driver,
            self.info.driver_info
        )
    }

    /// Largest storage binding, capped at 128 MiB: some drivers report more than they honour.
    pub fn max_binding(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size.min(128 << 20)
    }

    /// A compute pipeline for `shader` (a name from [`crate::kernels::SHADERS`]) specialized
    /// with override constants; built once, then served from the cache.
    pub fn pipeline(
        &self,
        shader: &'static str,
        constants: &[(&'static str, u64)],
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        let key = PipelineKey {
            shader,
            constants: constants.to_vec(),
        };
        if let Some(p) = self.pipelines.lock().expect("pipeline cache").get(&key) {
            return Ok(p.clone());
        }
        let module = self.module(shader)?;
        let consts: Vec<(&str, f64)> = constants.iter().map(|&(k, v)| (k, v as f64)).collect();
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(shader),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &consts,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!("pipeline {shader} {constants:?}: {e}")));
        }
        let pipeline = Arc::new(pipeline);
        self.pipelines
            .lock()
            .expect("pipeline cache")
            .insert(key, pipeline.clone());
        Ok(pipeline)
    }

    fn module(&self, shader: &'static str) -> Result<Arc<wgpu::ShaderModule>> {
        if let Some(m) = self.modules.lock().expect("module cache").get(shader) {
            return Ok(m.clone());
        }
        let source = crate::kernels::source(shader)
            .ok_or_else(|| Error::Gpu(format!("no shader named {shader}")))?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(shader),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!("shader {shader}: {e}")));
        }
        let module = Arc::new(module);
        self.modules
            .lock()
            .expect("module cache")
            .insert(shader, module.clone());
        Ok(module)
    }

    /// A storage buffer from the pool (contents undefined). A failed allocation is reported
    /// by the next [`Context::check`] as [`Error::OutOfMemory`].
    pub fn acquire(&self, size: u64) -> wgpu::Buffer {
        if let Some(limit) = self.inject.iter().find_map(|f| match f {
            Fault::OomAbove(n) => Some(*n),
            _ => None,
        }) {
            if size > limit {
                self.faults.lock().expect("faults").errors.push((
                    true,
                    format!("injected: a {size}-byte buffer does not fit (limit {limit})"),
                ));
                return self.pool.lock().expect("pool").acquire(&self.device, 256);
            }
        }
        self.pool.lock().expect("pool").acquire(&self.device, size)
    }

    /// Whether tests asked for `fault` (see [`Fault`]).
    pub fn injected(&self, fault: Fault) -> bool {
        self.inject.contains(&fault)
    }

    /// Fail if the device reported anything since the last check: device loss, out of
    /// memory (as [`Error::OutOfMemory`], which callers retry smaller), or any other GPU
    /// error, named with `stage`. Everything that reads results back calls it after waiting.
    pub fn check(&self, stage: &str) -> Result<()> {
        let mut f = self.faults.lock().expect("faults");
        if let Some(lost) = &f.lost {
            return Err(Error::Gpu(format!(
                "{stage}: the GPU device was lost ({lost}); nothing was written"
            )));
        }
        let errors = std::mem::take(&mut f.errors);
        drop(f);
        if errors.is_empty() {
            return Ok(());
        }
        // The first error says what went wrong; the rest usually follow from it.
        let first = errors
            .iter()
            .find(|(oom, _)| *oom)
            .unwrap_or(&errors[0])
            .1
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        let text = match errors.len() {
            1 => first,
            n => format!("{first} (and {} more)", n - 1),
        };
        if errors.iter().any(|(oom, _)| *oom) {
            Err(Error::OutOfMemory(format!("{stage}: {text}")))
        } else {
            Err(Error::Gpu(format!("{stage}: {text}")))
        }
    }

    /// Drop free pooled buffers until the pool's free and live bytes together are within
    /// `budget`: a folder of mixed sizes does not keep every size's buffers on the device.
    pub fn trim_pool(&self, budget: u64) {
        self.pool.lock().expect("pool").trim(budget);
    }

    /// Bytes of tensor buffers handed out and not given back.
    pub fn live_tensor_memory(&self) -> u64 {
        self.pool.lock().expect("pool").live()
    }

    /// Bytes of free tensor buffers the pool keeps for reuse.
    pub fn pooled_memory(&self) -> u64 {
        self.pool.lock().expect("pool").free_bytes()
    }

    /// Give a buffer back to the pool for reuse.
    pub fn release(&self, buffer: wgpu::Buffer) {
        self.pool.lock().expect("pool").release(buffer);
    }

    /// Highest bytes of pooled tensors in use at once since the last
    /// [`Context::reset_peak_memory`].
    pub fn peak_tensor_memory(&self) -> u64 {
        self.pool.lock().expect("pool").peak()
    }

    /// Start measuring [`Context::peak_tensor_memory`] afresh.
    pub fn reset_peak_memory(&self) {
        self.pool.lock().expect("pool").reset_peak();
    }

    /// Bytes of weight and uniform buffers created on this device so far (never freed while a
    /// model lives): the difference across building a model is that model's weights.
    pub fn uploaded(&self) -> u64 {
        self.uploaded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Count `bytes` of a weight or uniform buffer created outside [`Context::upload`].
    pub(crate) fn note_upload(&self, bytes: u64) {
        self.uploaded
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// A small buffer for bindings a specialization never reads.
    pub fn dummy(&self) -> &wgpu::Buffer {
        &self.dummy
    }

    /// A read-only storage buffer holding `data`.
    pub fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> wgpu::Buffer {
        use wgpu::util::DeviceExt;
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let padded;
        let contents = if bytes.len() < 16 {
            padded = [bytes, &[0u8; 16][..16 - bytes.len()]].concat();
            &padded[..]
        } else {
            bytes
        };
        self.note_upload(contents.len() as u64);
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// A uniform buffer holding `data`.
    pub fn uniform<T: bytemuck::Pod>(&self, label: &str, data: &T) -> wgpu::Buffer {
        use wgpu::util::DeviceExt;
        self.note_upload(std::mem::size_of::<T>() as u64);
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::bytes_of(data),
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    /// Copy `size` bytes of `buffer` back to the host, waiting for all submitted work.
    pub fn read(&self, buffer: &wgpu::Buffer, size: u64) -> Result<Vec<f32>> {
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
        self.submit(encoder.finish());
        self.map_read(&staging)
    }

    /// Submit `commands` and wait until the device has run them; any error the device
    /// reported on the way fails the call (see [`Context::check`]).
    pub fn submit_and_wait(&self, commands: wgpu::CommandBuffer) -> Result<()> {
        self.lose_if_injected();
        let index = self.queue.submit([commands]);
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(index),
                timeout: None,
            })
            .map_err(|e| {
                self.check("waiting for the device")
                    .err()
                    .unwrap_or(Error::Gpu(format!("waiting for the device: {e}")))
            })?;
        self.check("running on the GPU")
    }

    /// Submit `commands` without waiting (a readback waits), losing the device first when a
    /// test injected that.
    pub fn submit(&self, commands: wgpu::CommandBuffer) {
        self.lose_if_injected();
        self.queue.submit([commands]);
    }

    fn lose_if_injected(&self) {
        if self.injected(Fault::LoseDevice) {
            let mut f = self.faults.lock().expect("faults");
            if f.lost.is_none() {
                f.lost = Some("injected: device lost".into());
            }
        }
    }

    /// Map a MAP_READ buffer and copy it out as f32s.
    pub fn map_read(&self, staging: &wgpu::Buffer) -> Result<Vec<f32>> {
        self.map_as(staging, staging.size())
    }

    /// Wait for the device, map the first `bytes` of a MAP_READ buffer and copy them out as
    /// `T`s.
    pub fn map_as<T: bytemuck::Pod>(&self, staging: &wgpu::Buffer, bytes: u64) -> Result<Vec<T>> {
        let slice = staging.slice(..bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        let waited = self.device.poll(wgpu::PollType::wait_indefinitely());
        // Whatever the device reported while running the work read back here comes first:
        // a readback after a failure would be garbage or zeros.
        self.check("running on the GPU")?;
        waited.map_err(|e| Error::Gpu(format!("waiting for the device: {e}")))?;
        rx.recv()
            .map_err(|_| Error::Gpu("readback callback dropped".into()))?
            .map_err(|e| Error::Gpu(format!("mapping the readback buffer: {e}")))?;
        let out = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::Gpu(format!("mapping: {e}")))?;
            bytemuck::cast_slice::<u8, T>(&view).to_vec()
        };
        staging.unmap();
        Ok(out)
    }
}
