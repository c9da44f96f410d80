//! Reuse of large storage buffers between plans (tile shapes) and images.

use std::collections::HashMap;

/// Free storage buffers by (rounded) size.
#[derive(Default)]
pub struct BufferPool {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    /// Bytes handed out and not yet given back, and their high-water mark since the last
    /// [`BufferPool::reset_peak`]: the tensors' share of device memory.
    live: u64,
    peak: u64,
}

/// Round sizes up so that slightly different shapes share buffers.
fn bucket(size: u64) -> u64 {
    const SMALL: u64 = 64 << 10;
    if size <= SMALL {
        size.next_multiple_of(256).max(256)
    } else {
        // within 1/8 of a power of two
        let step = (size.next_power_of_two() / 8).max(SMALL);
        size.next_multiple_of(step)
    }
}

impl BufferPool {
    pub fn acquire(&mut self, device: &wgpu::Device, size: u64) -> wgpu::Buffer {
        let b = bucket(size);
        self.live += b;
        self.peak = self.peak.max(self.live);
        if let Some(buf) = self.free.get_mut(&b).and_then(Vec::pop) {
            return buf;
        }
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("tensor"),
            size: b,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    }

    pub fn release(&mut self, buffer: wgpu::Buffer) {
        self.live = self.live.saturating_sub(buffer.size());
        self.free.entry(buffer.size()).or_default().push(buffer);
    }

    /// Bytes handed out and not given back.
    pub fn live(&self) -> u64 {
        self.live
    }

    /// Bytes of free buffers kept for reuse.
    pub fn free_bytes(&self) -> u64 {
        self.free.iter().map(|(s, v)| s * v.len() as u64).sum()
    }

    /// Drop free buffers, largest first, until free and live bytes fit `budget`.
    pub fn trim(&mut self, budget: u64) {
        let mut sizes: Vec<u64> = self.free.keys().copied().collect();
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        for s in sizes {
            while self.live + self.free_bytes() > budget {
                let Some(list) = self.free.get_mut(&s) else {
                    break;
                };
                let Some(b) = list.pop() else { break };
                b.destroy();
            }
            if self.free.get(&s).is_some_and(Vec::is_empty) {
                self.free.remove(&s);
            }
        }
    }

    /// Highest live bytes since the last reset.
    pub fn peak(&self) -> u64 {
        self.peak
    }

    /// Start a new high-water mark from the bytes live now.
    pub fn reset_peak(&mut self) {
        self.peak = self.live;
    }
}
