//! `GpuTensor`: one storage buffer with a shape, an element type and a label. Upload, zeros
//! and readback live here; readback is the one place in soma that maps a buffer. This module
//! records no kernels (see `kernels`).
//!
//! Element types are 4 bytes wide except [`DType::F16`], 2 bytes: an f16 tensor of n values
//! holds 2n bytes of data, and its buffer is padded to a multiple of 4 bytes (what wgpu's
//! copies and writes move), so copies and readbacks move [`GpuTensor::padded_byte_len`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Held};

/// The element type of a tensor's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    U32,
    /// IEEE binary16: uploaded from f32 rounded to nearest even, read back widened to f32
    /// (exactly). Kernels that bind it need `Features::SHADER_F16` ([`Gpu::shader_f16`]).
    F16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 => 2,
        }
    }
}

/// `shape.iter().product()` elements of `dtype`, row-major, in a storage buffer: a buffer of
/// its own, or a slot of a shared buffer ([`GpuTensor::arena`]) starting at [`offset`]
/// bytes. Bind it with [`binding`], which covers its slot alone.
///
/// [`offset`]: GpuTensor::offset
/// [`binding`]: GpuTensor::binding
#[derive(Debug)]
pub struct GpuTensor {
    buffer: Held<wgpu::Buffer>,
    /// Where the tensor starts in `buffer`, in bytes (0 unless a slot of an arena).
    offset: u64,
    /// The bytes of `buffer` it owns from `offset` (its data, padded), when a slot of an
    /// arena; `None` when the buffer is its own.
    slot: Option<u64>,
    shape: Vec<usize>,
    dtype: DType,
    label: String,
}

fn byte_len(shape: &[usize], dtype: DType) -> u64 {
    shape.iter().product::<usize>() as u64 * dtype.size()
}

/// `value` rounded to the nearest f16, ties to even, as its bit pattern: a magnitude of 65520
/// or more (halfway past the largest finite f16, 65504) becomes infinity, one of 2^-25 or
/// less (half the smallest subnormal, 2^-24) becomes zero, NaN stays NaN.
fn f16_bits(value: f32) -> u16 {
    half::f16::from_f32(value).to_bits()
}

/// f32s rounded to f16, as little-endian bytes padded with a zero f16 to a multiple of 4 bytes
/// (wgpu writes whole 4-byte words).
fn f16_bytes(values: &[f32]) -> Vec<u8> {
    let mut bytes: Vec<u8> = values
        .iter()
        .flat_map(|&v| f16_bits(v).to_le_bytes())
        .collect();
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    bytes
}

impl GpuTensor {
    fn create(gpu: &Gpu, label: &str, shape: &[usize], dtype: DType) -> Result<GpuTensor> {
        let bytes = byte_len(shape, dtype);
        gpu.check_buffer_size(label, bytes)?;
        // A binding may not be empty: an empty tensor still gets one 16-byte buffer.
        let size = bytes.max(16).next_multiple_of(4);
        let buffer = gpu.scoped(label, || {
            gpu.hold(gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }))
        })?;
        Ok(GpuTensor {
            buffer,
            offset: 0,
            slot: None,
            shape: shape.to_vec(),
            dtype,
            label: label.to_string(),
        })
    }

    fn check_len(label: &str, shape: &[usize], len: usize) -> Result<()> {
        let want: usize = shape.iter().product();
        if want != len {
            return Err(Error::shape(
                format!("upload of '{label}'"),
                format!("{want} values for shape {shape:?}"),
                format!("{len} values"),
            ));
        }
        Ok(())
    }

    /// A new f32 tensor holding `data` (row-major, `shape.product()` values).
    pub fn upload(gpu: &Gpu, label: &str, shape: &[usize], data: &[f32]) -> Result<GpuTensor> {
        Self::check_len(label, shape, data.len())?;
        let t = Self::create(gpu, label, shape, DType::F32)?;
        gpu.write_buffer(&t.buffer, t.offset, bytemuck::cast_slice(data));
        Ok(t)
    }

    /// A new u32 tensor (labels, indices, counters) holding `data`.
    pub fn upload_u32(gpu: &Gpu, label: &str, shape: &[usize], data: &[u32]) -> Result<GpuTensor> {
        Self::check_len(label, shape, data.len())?;
        let t = Self::create(gpu, label, shape, DType::U32)?;
        gpu.write_buffer(&t.buffer, t.offset, bytemuck::cast_slice(data));
        Ok(t)
    }

    /// A new f16 tensor holding `values`, each rounded to the nearest f16, ties to even (a
    /// magnitude of 65520 or more becomes infinity, one of 2^-25 or less zero).
    pub fn upload_f16(
        gpu: &Gpu,
        label: &str,
        shape: &[usize],
        values: &[f32],
    ) -> Result<GpuTensor> {
        Self::check_len(label, shape, values.len())?;
        let t = Self::create(gpu, label, shape, DType::F16)?;
        gpu.write_buffer(&t.buffer, t.offset, &f16_bytes(values));
        Ok(t)
    }

    /// A new f32 tensor of zeros (wgpu zero-initialises new buffers).
    pub fn zeros(gpu: &Gpu, label: &str, shape: &[usize]) -> Result<GpuTensor> {
        Self::create(gpu, label, shape, DType::F32)
    }

    /// A new u32 tensor of zeros.
    pub fn zeros_u32(gpu: &Gpu, label: &str, shape: &[usize]) -> Result<GpuTensor> {
        Self::create(gpu, label, shape, DType::U32)
    }

    /// A new f16 tensor of zeros.
    pub fn zeros_f16(gpu: &Gpu, label: &str, shape: &[usize]) -> Result<GpuTensor> {
        Self::create(gpu, label, shape, DType::F16)
    }

    /// f32 tensors of zeros sharing one buffer of `bytes` bytes, so that one dispatch can run
    /// over all of them (the optimizer update of every parameter tensor): slot `i` is
    /// `slots[i]` (name, shape) at byte offset `offsets[i]`, holding `sizes[i]` bytes (its
    /// data and zero padding; the plan lays the slots out, `plan::Update::arena_layout`).
    /// Returns the whole arena as one flat tensor and the slots in order.
    pub fn arena(
        gpu: &Gpu,
        label: &str,
        slots: &[(&str, &[usize])],
        offsets: &[u64],
        sizes: &[u64],
        bytes: u64,
    ) -> Result<(GpuTensor, Vec<GpuTensor>)> {
        let fits = slots.len() == offsets.len()
            && slots.len() == sizes.len()
            && slots
                .iter()
                .zip(offsets.iter().zip(sizes))
                .all(|((_, shape), (&at, &size))| {
                    byte_len(shape, DType::F32) <= size
                        && at.is_multiple_of(4)
                        && at + size <= bytes
                });
        if !fits {
            return Err(Error::shape(
                label,
                format!("{} slots within {bytes} bytes", slots.len()),
                format!("{} offsets and {} sizes", offsets.len(), sizes.len()),
            ));
        }
        let whole = Self::create(gpu, label, &[(bytes / 4) as usize], DType::F32)?;
        let views = slots
            .iter()
            .zip(offsets.iter().zip(sizes))
            .map(|((name, shape), (&at, &size))| GpuTensor {
                buffer: gpu.hold((*whole.buffer).clone()),
                offset: at,
                slot: Some(size),
                shape: shape.to_vec(),
                dtype: DType::F32,
                label: name.to_string(),
            })
            .collect();
        Ok((whole, views))
    }

    /// Overwrites the whole tensor with `data` (queued; it lands before the next submission).
    pub fn write(&self, gpu: &Gpu, data: &[f32]) -> Result<()> {
        self.expect_dtype(DType::F32)?;
        Self::check_len(&self.label, &self.shape, data.len())?;
        gpu.write_buffer(&self.buffer, self.offset, bytemuck::cast_slice(data));
        Ok(())
    }

    /// Overwrites the whole u32 tensor with `data`.
    pub fn write_u32(&self, gpu: &Gpu, data: &[u32]) -> Result<()> {
        self.expect_dtype(DType::U32)?;
        Self::check_len(&self.label, &self.shape, data.len())?;
        gpu.write_buffer(&self.buffer, self.offset, bytemuck::cast_slice(data));
        Ok(())
    }

    /// Overwrites the whole f16 tensor with `values`, each rounded to f16 as
    /// [`GpuTensor::upload_f16`] does.
    pub fn write_f16(&self, gpu: &Gpu, values: &[f32]) -> Result<()> {
        self.expect_dtype(DType::F16)?;
        Self::check_len(&self.label, &self.shape, values.len())?;
        gpu.write_buffer(&self.buffer, self.offset, &f16_bytes(values));
        Ok(())
    }

    fn expect_dtype(&self, dtype: DType) -> Result<()> {
        if self.dtype != dtype {
            return Err(Error::shape(
                format!("'{}'", self.label),
                format!("{dtype:?} elements"),
                format!("{:?} elements", self.dtype),
            ));
        }
        Ok(())
    }

    /// The tensor's buffer; for a slot of an arena, the whole arena (see [`GpuTensor::offset`]).
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }
    /// Where the tensor's data starts in [`GpuTensor::buffer`], in bytes.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// The binding of the tensor: its whole buffer, or its slot of an arena.
    pub fn binding(&self) -> wgpu::BufferBinding<'_> {
        wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset,
            size: self.slot.and_then(std::num::NonZeroU64::new),
        }
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn label(&self) -> &str {
        &self.label
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Size of the data in bytes: elements times [`DType::size`] (the buffer may be padded
    /// beyond it).
    pub fn byte_len(&self) -> u64 {
        byte_len(&self.shape, self.dtype)
    }
    /// The bytes a copy or readback of the tensor moves: [`GpuTensor::byte_len`] rounded up
    /// to a multiple of 4 (wgpu copies whole 4-byte words). Larger than `byte_len` only for
    /// an f16 tensor of odd length, by 2 bytes of padding.
    pub fn padded_byte_len(&self) -> u64 {
        self.byte_len().next_multiple_of(4)
    }

    /// Starts a readback: records a copy into a staging buffer, submits it, and asks for the
    /// map. The returned handle resolves once the device has been polled past the copy
    /// (`Readback::wait` polls; `Readback::into_future` leaves polling to the caller, for hosts
    /// that poll their device in their own loop).
    pub fn start_read(&self, gpu: &Gpu) -> Result<Readback> {
        start_read_many(gpu, &[self])
    }

    /// Reads the f32 tensor back to the host, blocking until the GPU has finished.
    pub fn read(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        self.expect_dtype(DType::F32)?;
        let bytes = self.start_read(gpu)?.wait(gpu)?;
        Ok(words(&bytes, f32::from_le_bytes))
    }

    /// Reads the u32 tensor back to the host, blocking.
    pub fn read_u32(&self, gpu: &Gpu) -> Result<Vec<u32>> {
        self.expect_dtype(DType::U32)?;
        let bytes = self.start_read(gpu)?.wait(gpu)?;
        Ok(words(&bytes, u32::from_le_bytes))
    }

    /// Reads the f16 tensor back to the host, each value widened to f32 (exactly), blocking.
    pub fn read_f16(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        self.expect_dtype(DType::F16)?;
        let bytes = self.start_read(gpu)?.wait(gpu)?;
        Ok(bytes
            .chunks_exact(2)
            .take(self.len())
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect())
    }

    /// Reads the f32 tensor back without blocking: the future completes when whoever owns the
    /// device polls it past the copy (a host's frame loop, or `Gpu::wait`).
    pub async fn read_async(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        self.expect_dtype(DType::F32)?;
        let bytes = self.start_read(gpu)?.into_future().await?;
        Ok(words(&bytes, f32::from_le_bytes))
    }
}

/// 4-byte little-endian words from bytes read back, copied rather than cast: a `Vec<u8>`
/// promises no alignment for a wider type.
fn words<T>(bytes: &[u8], word: fn([u8; 4]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(4)
        .map(|c| word([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Starts one readback of several tensors: each is copied, whole and in order, into one
/// staging buffer in one submission, which is mapped once; the bytes come back
/// concatenated, each tensor's [`GpuTensor::padded_byte_len`] of them (its data, and for an
/// f16 tensor of odd length 2 bytes of padding).
pub fn start_read_many(gpu: &Gpu, tensors: &[&GpuTensor]) -> Result<Readback> {
    let staging = Staging::for_tensors(gpu, tensors);
    start_read_many_into(gpu, tensors, &staging)
}

/// A staging buffer kept for a readback that repeats (a data-parallel step's gradients, every
/// step): created once, mapped by each readback and unmapped when its bytes are taken. One
/// readback at a time may use it.
#[derive(Clone)]
pub struct Staging {
    buffer: Arc<Held<wgpu::Buffer>>,
    bytes: u64,
}

impl Staging {
    /// A staging buffer for readbacks of `tensors` (or of any tensors as large in all).
    pub fn for_tensors(gpu: &Gpu, tensors: &[&GpuTensor]) -> Staging {
        let (bytes, label) = bytes_and_label(tensors);
        let _serial = gpu.serial().lock();
        Staging {
            buffer: Arc::new(gpu.hold(gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(&format!("{label} readback")),
                size: bytes.max(4),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }))),
            bytes,
        }
    }
}

/// The bytes of `tensors` in all, and their labels joined, for a readback's staging buffer.
fn bytes_and_label(tensors: &[&GpuTensor]) -> (u64, String) {
    let bytes = tensors.iter().map(|t| t.padded_byte_len()).sum();
    let label = tensors
        .iter()
        .map(|t| t.label())
        .collect::<Vec<_>>()
        .join(", ");
    (bytes, label)
}

/// [`start_read_many`] into a staging buffer the caller keeps (see [`Staging`]), which must
/// hold the tensors and not be in use by another readback.
pub fn start_read_many_into(
    gpu: &Gpu,
    tensors: &[&GpuTensor],
    staging: &Staging,
) -> Result<Readback> {
    let (bytes, label) = bytes_and_label(tensors);
    if bytes > staging.bytes {
        return Err(Error::Readback {
            label,
            message: format!(
                "{bytes} bytes do not fit the {}-byte staging buffer",
                staging.bytes
            ),
        });
    }
    let _serial = gpu.serial().lock();
    let staging = staging.buffer.clone();
    let mut encoder = gpu
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("readback"),
        });
    let mut at = 0;
    for t in tensors {
        let len = t.padded_byte_len();
        if len > 0 {
            encoder.copy_buffer_to_buffer(t.buffer(), t.offset, &staging, at, len);
        }
        at += len;
    }
    gpu.submit(vec![encoder.finish()]);
    let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    gpu.count_map();
    staging.map_async(wgpu::MapMode::Read, .., move |r| {
        flag.store(true, Ordering::Release);
        let _ = sender.send(r);
    });
    Ok(Readback {
        staging,
        receiver,
        done,
        label,
        bytes,
    })
}

/// Copies each `(src, dst)` pair, whole, in one submission (snapshots of training state).
pub fn copy_tensors(gpu: &Gpu, pairs: &[(&GpuTensor, &GpuTensor)]) -> Result<()> {
    check_copies(pairs)?;
    let mut encoder = gpu
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("copy"),
        });
    record_copies(&mut encoder, pairs);
    gpu.submit(vec![encoder.finish()]);
    Ok(())
}

/// Records the whole-tensor copies `(src, dst)` into an encoder (checked by `check_copies`).
pub fn record_copies(encoder: &mut wgpu::CommandEncoder, pairs: &[(&GpuTensor, &GpuTensor)]) {
    for (src, dst) in pairs {
        if src.byte_len() > 0 {
            encoder.copy_buffer_to_buffer(
                src.buffer(),
                src.offset,
                dst.buffer(),
                dst.offset,
                src.padded_byte_len(),
            );
        }
    }
}

/// Checks that each `(src, dst)` pair has one shape and element type.
pub fn check_copies(pairs: &[(&GpuTensor, &GpuTensor)]) -> Result<()> {
    for (src, dst) in pairs {
        if src.shape() != dst.shape() || src.dtype() != dst.dtype() {
            return Err(Error::shape(
                format!("copy '{}' -> '{}'", src.label(), dst.label()),
                format!("{:?} {:?}", src.shape(), src.dtype()),
                format!("{:?} {:?}", dst.shape(), dst.dtype()),
            ));
        }
    }
    Ok(())
}

/// A readback in flight: a staging buffer whose map has been requested.
pub struct Readback {
    staging: Arc<Held<wgpu::Buffer>>,
    receiver: futures_intrusive::channel::shared::OneshotReceiver<
        std::result::Result<(), wgpu::BufferAsyncError>,
    >,
    done: Arc<AtomicBool>,
    label: String,
    bytes: u64,
}

impl Readback {
    /// True once the map has completed (it never blocks; it does not poll the device).
    pub fn is_ready(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Waits for the map, polling the device, and returns the bytes.
    pub fn wait(self, gpu: &Gpu) -> Result<Vec<u8>> {
        gpu.wait()?;
        pollster::block_on(self.into_future())
    }

    /// The bytes, once someone has polled the device past the copy.
    pub async fn into_future(self) -> Result<Vec<u8>> {
        let result = self.receiver.receive().await;
        match result {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                return Err(Error::Readback {
                    label: self.label,
                    message: e.to_string(),
                })
            }
            None => {
                return Err(Error::Readback {
                    label: self.label,
                    message: "the map callback was dropped (device lost?)".into(),
                })
            }
        }
        let data = {
            let view = self
                .staging
                .get_mapped_range(..)
                .map_err(|e| Error::Readback {
                    label: self.label.clone(),
                    message: e.to_string(),
                })?;
            view[..self.bytes as usize].to_vec()
        };
        {
            let _serial = self.staging.serial().lock();
            self.staging.unmap();
        }
        Ok(data)
    }
}
