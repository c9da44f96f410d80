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
        device.on_uncaptured_error(Arc::new(|e| eprintln!("refqsr: GPU error: {e}")));
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

    /// A storage buffer from the pool (contents undefined).
    pub fn acquire(&self, size: u64) -> wgpu::Buffer {
        self.pool.lock().expect("pool").acquire(&self.device, size)
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
        self.queue.submit([encoder.finish()]);
        self.map_read(&staging)
    }

    /// Submit `commands` and wait until the device has run them.
    pub fn submit_and_wait(&self, commands: wgpu::CommandBuffer) -> Result<()> {
        let index = self.queue.submit([commands]);
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(index),
                timeout: None,
            })
            .map_err(|e| Error::Gpu(format!("waiting for the device: {e}")))?;
        Ok(())
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
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the device: {e}")))?;
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
