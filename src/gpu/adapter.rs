//! Adapter enumeration, ranking and selection.

use crate::error::{Error, Result};

pub(super) fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    desc.flags = wgpu::InstanceFlags::from_env_or_default();
    wgpu::Instance::new(desc)
}

fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

fn backend_rank(b: wgpu::Backend) -> u8 {
    // The native API first; GL last (it lacks much of what compute needs).
    match b {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    }
}

/// All adapters, best first: the order `refqsr adapters` shows and `--adapter INDEX` uses.
pub(super) fn ranked(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    let mut adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    adapters.retain(|a| {
        a.get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
    });
    adapters.sort_by_key(|a| {
        let i = a.get_info();
        (rank(i.device_type), backend_rank(i.backend))
    });
    adapters
}

pub(super) fn select(adapters: Vec<wgpu::Adapter>, wanted: &str) -> Result<wgpu::Adapter> {
    let list = listing(&adapters);
    if let Ok(i) = wanted.parse::<usize>() {
        return adapters.into_iter().nth(i).ok_or(Error::AdapterNotFound {
            wanted: wanted.to_string(),
            available: list,
        });
    }
    let w = wanted.to_lowercase();
    adapters
        .into_iter()
        .find(|a| a.get_info().name.to_lowercase().contains(&w))
        .ok_or(Error::AdapterNotFound {
            wanted: wanted.to_string(),
            available: list,
        })
}

fn listing(adapters: &[wgpu::Adapter]) -> String {
    adapters
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let info = a.get_info();
            format!(
                "  {i}: {} ({:?}, {:?})",
                info.name, info.backend, info.device_type
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What `refqsr adapters` prints for one adapter.
#[derive(Debug, Clone)]
pub struct AdapterReport {
    pub index: usize,
    pub info: wgpu::AdapterInfo,
    pub timestamps: bool,
    pub shader_f16: bool,
    pub subgroups: bool,
    pub max_storage_binding: u64,
    pub max_buffer: u64,
    /// Whether `dot4I8Packed` compiles to the driver's own instruction (see [`int_dot_native`]).
    pub int_dot: IntDot,
}

/// How the shaders' packed 8-bit dot products reach the hardware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntDot {
    /// The driver has `VK_KHR_shader_integer_dot_product` (or Vulkan 1.3), so naga emits
    /// SPIR-V `OpSDot` and the driver maps it to its dot-product instruction.
    Native,
    /// naga writes the dot product as four extracts, multiplies and adds.
    Emulated,
    /// Not a Vulkan adapter: the backend decides (Metal and DX12 have no equivalent query).
    Unknown,
}

impl std::fmt::Display for IntDot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IntDot::Native => "native (SPIR-V OpSDot)",
            IntDot::Emulated => "emulated (naga polyfill)",
            IntDot::Unknown => "backend-defined",
        })
    }
}

/// Whether `adapter` runs `dot4I8Packed` natively: the condition under which wgpu-hal enables
/// the SPIR-V dot-product capabilities that make naga emit `OpSDot`.
pub fn int_dot_native(adapter: &wgpu::Adapter) -> IntDot {
    #[cfg(not(any(target_vendor = "apple", target_arch = "wasm32")))]
    {
        // SAFETY: the raw adapter is only read, while `adapter` keeps it alive.
        if let Some(hal) = unsafe { adapter.as_hal::<wgpu::hal::api::Vulkan>() } {
            let caps = hal.physical_device_capabilities();
            let v13 = caps.properties().api_version >= (1 << 22) | (3 << 12);
            return if v13 || caps.supports_extension(c"VK_KHR_shader_integer_dot_product") {
                IntDot::Native
            } else {
                IntDot::Emulated
            };
        }
    }
    let _ = adapter;
    IntDot::Unknown
}

/// Describe every adapter wgpu can see, best first.
pub fn describe_adapters() -> Vec<AdapterReport> {
    let instance = instance();
    ranked(&instance)
        .iter()
        .enumerate()
        .map(|(index, a)| {
            let f = a.features();
            let l = a.limits();
            AdapterReport {
                index,
                info: a.get_info(),
                timestamps: f.contains(wgpu::Features::TIMESTAMP_QUERY),
                shader_f16: f.contains(wgpu::Features::SHADER_F16),
                subgroups: f.contains(wgpu::Features::SUBGROUP),
                max_storage_binding: l.max_storage_buffer_binding_size,
                max_buffer: l.max_buffer_size,
                int_dot: int_dot_native(a),
            }
        })
        .collect()
}
