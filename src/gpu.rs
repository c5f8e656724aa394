//! `Gpu`: the adapter, device and queue soma works on, either opened by soma or borrowed from a
//! host application; the limits it asked for; and counters of queue submissions and buffer
//! maps. The device and nothing else: it owns no tensor, no pipeline and no tuning choice
//! (those are `ops::Kernels` and `ops::Tuning`).

use crate::spirv::FloatControls;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};

/// What soma needs to know about an adapter, for logs and `soma devices`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: wgpu::Backend,
    pub device_type: wgpu::DeviceType,
    pub driver: String,
    pub driver_info: String,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub timestamp_queries: bool,
}

impl AdapterSummary {
    fn new(info: &wgpu::AdapterInfo, limits: &wgpu::Limits, features: wgpu::Features) -> Self {
        AdapterSummary {
            name: info.name.clone(),
            backend: info.backend,
            device_type: info.device_type,
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            timestamp_queries: features.contains(wgpu::Features::TIMESTAMP_QUERY),
        }
    }
}

/// Counts of the host-to-device traffic that matters for speed: queue submissions and buffer
/// maps. The trainer's "no more than one submit per step, no maps" promise is checked against these.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuStats {
    pub submissions: u64,
    pub maps: u64,
}

/// Where the device came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// soma opened the adapter and device itself.
    Owned,
    /// A host application handed soma its device and queue.
    Borrowed,
}

/// The device context every GPU operation goes through. Cheap to share by reference; clone
/// the `wgpu::Device`/`Queue` handles if you need them elsewhere.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    summary: AdapterSummary,
    limits: wgpu::Limits,
    ownership: Ownership,
    submissions: AtomicU64,
    maps: AtomicU64,
    /// Strict mode's self-test on this device, run once (`exec::strict::self_test`).
    pub(crate) strict_check: std::sync::OnceLock<std::result::Result<(), String>>,
    /// The SPIR-V float controls the device advertises for f32, asked once.
    float_controls: std::sync::OnceLock<FloatControls>,
    /// On GL, the lock around every call soma makes into the device ([`Serial`]).
    serial: Serial,
}

/// On the GL backend, one reentrant lock per device that soma holds around each of its calls
/// into the device, and around the drop of each object it owns there ([`Held`]); elsewhere
/// nothing.
///
/// A GL context belongs to one thread at a time. wgpu's GL backend shares one context per
/// adapter behind a lock that it waits on for at most 6 seconds before it panics ("Could not
/// lock adapter context"), so while one thread compiled a large kernel (llvmpipe's GLSL
/// compiler takes longer than that for the biggest generated ones), another thread's upload,
/// submission or even a dropped buffer panicked. With this lock, threads that share a GL
/// `Gpu` wait for each other in soma, without a deadline, and never queue on wgpu's timed
/// lock. It costs nothing elsewhere: Vulkan, Metal and DX12 take calls from any thread.
/// Calls a host application makes into a borrowed GL device itself are not covered.
#[derive(Clone, Default)]
pub struct Serial(Option<Arc<parking_lot::ReentrantMutex<()>>>);

impl Serial {
    fn for_backend(backend: wgpu::Backend) -> Serial {
        Serial(
            (backend == wgpu::Backend::Gl).then(|| Arc::new(parking_lot::ReentrantMutex::new(()))),
        )
    }

    /// Holds the lock (on GL) until the guard drops.
    pub fn lock(&self) -> Option<parking_lot::ReentrantMutexGuard<'_, ()>> {
        self.0.as_ref().map(|m| m.lock())
    }
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Serial(gl)"
        } else {
            "Serial(none)"
        })
    }
}

/// A wgpu object (a buffer, bind group or pipeline) whose drop runs under its device's
/// [`Serial`] lock: dropping one can delete a GL object, which needs the GL context. It
/// dereferences to the object.
pub struct Held<T> {
    inner: std::mem::ManuallyDrop<T>,
    serial: Serial,
}

impl<T> Held<T> {
    /// The lock this object's drop takes.
    pub fn serial(&self) -> &Serial {
        &self.serial
    }
}

impl<T> std::ops::Deref for Held<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> Drop for Held<T> {
    fn drop(&mut self) {
        let _guard = self.serial.lock();
        // SAFETY: `inner` is dropped exactly once, here, and never used again.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.inner) }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Held<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (*self.inner).fmt(f)
    }
}

/// How `Gpu::new` picks an adapter.
#[derive(Clone, Debug, Default)]
pub struct AdapterRequest {
    /// Backends to look at; `None` means `WGPU_BACKEND` if set, else Vulkan/Metal/DX12 and,
    /// only when those offer nothing, GL.
    pub backends: Option<wgpu::Backends>,
    /// Case-insensitive substring of the adapter name (`SOMA_ADAPTER` when `None`).
    pub name_contains: Option<String>,
    /// The adapter at this index of [`enumerate_adapters`] on `backends` (as `soma devices`
    /// numbers them), instead of the best one; the name filter must match it too.
    pub index: Option<usize>,
}

fn type_rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

fn instance_for(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    desc.flags = wgpu::InstanceFlags::default().with_env();
    wgpu::Instance::new(desc)
}

/// Every adapter wgpu can see on the requested backends (all of them when `None`).
pub fn enumerate_adapters(backends: Option<wgpu::Backends>) -> Vec<AdapterSummary> {
    let backends = backends
        .or_else(wgpu::Backends::from_env)
        .unwrap_or(wgpu::Backends::all());
    let instance = instance_for(backends);
    let adapters = pollster::block_on(instance.enumerate_adapters(backends));
    adapters
        .iter()
        .map(|a| AdapterSummary::new(&a.get_info(), &a.limits(), a.features()))
        .collect()
}

/// The indices into [`enumerate_adapters`] (on all backends, or `WGPU_BACKEND`'s) of the
/// distinct adapters: those of the first backend in Vulkan, Metal, DX12, GL order that has
/// any. One adapter is often reachable through two backends (lavapipe through Vulkan and
/// llvmpipe through GL are one CPU); within one backend, each entry is its own adapter.
pub fn distinct_adapters() -> Vec<usize> {
    let adapters = enumerate_adapters(None);
    let order = [
        wgpu::Backend::Vulkan,
        wgpu::Backend::Metal,
        wgpu::Backend::Dx12,
        wgpu::Backend::Gl,
    ];
    for backend in order {
        let of: Vec<usize> = (0..adapters.len())
            .filter(|&i| adapters[i].backend == backend)
            .collect();
        if !of.is_empty() {
            return of;
        }
    }
    (0..adapters.len()).collect()
}

fn pick_adapter(request: &AdapterRequest) -> Result<wgpu::Adapter> {
    let filter = request
        .name_contains
        .clone()
        .or_else(|| std::env::var("SOMA_ADAPTER").ok())
        .filter(|s| !s.is_empty())
        .map(|s| s.to_lowercase());
    if let Some(index) = request.index {
        // The order `enumerate_adapters` (and so `soma devices`) lists them in.
        let backends = request
            .backends
            .or_else(wgpu::Backends::from_env)
            .unwrap_or(wgpu::Backends::all());
        let instance = instance_for(backends);
        let adapters = pollster::block_on(instance.enumerate_adapters(backends));
        let names: Vec<String> = adapters
            .iter()
            .enumerate()
            .map(|(i, a)| format!("[{i}] {} ({:?})", a.get_info().name, a.get_info().backend))
            .collect();
        let found = adapters.into_iter().nth(index).filter(|a| {
            filter
                .as_ref()
                .is_none_or(|f| a.get_info().name.to_lowercase().contains(f))
        });
        return found.ok_or_else(|| Error::NoAdapter {
            detail: format!(
                " at index {index}{} (adapters present: {}; `soma devices` lists them)",
                filter.map_or(String::new(), |f| format!(" matching '{f}'")),
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ),
        });
    }
    let explicit = request.backends.or_else(wgpu::Backends::from_env);
    // Vulkan/Metal/DX12 first; GL only when asked for or when nothing else exists.
    let tries: Vec<wgpu::Backends> = match explicit {
        Some(b) => vec![b],
        None => vec![wgpu::Backends::PRIMARY, wgpu::Backends::GL],
    };
    let mut seen = Vec::new();
    for backends in tries {
        let instance = instance_for(backends);
        let mut adapters = pollster::block_on(instance.enumerate_adapters(backends));
        seen.extend(adapters.iter().map(|a| a.get_info().name));
        if let Some(f) = &filter {
            adapters.retain(|a| a.get_info().name.to_lowercase().contains(f));
        }
        adapters.sort_by_key(|a| type_rank(a.get_info().device_type));
        if let Some(a) = adapters.into_iter().next() {
            return Ok(a);
        }
    }
    let detail = match filter {
        Some(f) if !seen.is_empty() => format!(
            " matches SOMA_ADAPTER='{f}' (adapters present: {})",
            seen.join(", ")
        ),
        _ => String::new(),
    };
    Err(Error::NoAdapter { detail })
}

/// The limits soma asks for: the WebGPU defaults (or the downlevel ones where the adapter
/// does not reach them), with the sizes that bound what can be trained raised to what the
/// adapter allows.
fn wanted_limits(adapter: &wgpu::Limits) -> wgpu::Limits {
    let base = if wgpu::Limits::default().check_limits(adapter) {
        wgpu::Limits::default()
    } else {
        wgpu::Limits::downlevel_defaults()
    };
    wgpu::Limits {
        max_storage_buffer_binding_size: adapter.max_storage_buffer_binding_size,
        max_buffer_size: adapter.max_buffer_size,
        max_storage_buffers_per_shader_stage: adapter
            .max_storage_buffers_per_shader_stage
            .max(base.max_storage_buffers_per_shader_stage),
        max_compute_workgroup_storage_size: adapter.max_compute_workgroup_storage_size,
        max_compute_invocations_per_workgroup: adapter.max_compute_invocations_per_workgroup,
        max_compute_workgroup_size_x: adapter.max_compute_workgroup_size_x,
        max_compute_workgroup_size_y: adapter.max_compute_workgroup_size_y,
        max_compute_workgroups_per_dimension: adapter.max_compute_workgroups_per_dimension,
        ..base
    }
}

impl Gpu {
    /// Opens the best adapter: `SOMA_ADAPTER` / `WGPU_BACKEND` honoured, a discrete or
    /// integrated GPU preferred over a CPU adapter.
    pub fn new() -> Result<Gpu> {
        Self::with_request(&AdapterRequest::default())
    }

    /// Opens an adapter as `request` says.
    pub fn with_request(request: &AdapterRequest) -> Result<Gpu> {
        let adapter = pick_adapter(request)?;
        let info = adapter.get_info();
        let limits = wanted_limits(&adapter.limits());
        // Timestamps for `soma bench`; passthrough SPIR-V for strict mode's kernels (Vulkan);
        // subgroup operations for the reductions' subgroup forms (`Gpu::subgroups`); f16 in
        // shaders and storage buffers for the f16 kernels (`Gpu::shader_f16`).
        let features = adapter.features()
            & (wgpu::Features::TIMESTAMP_QUERY
                | wgpu::Features::PASSTHROUGH_SHADERS
                | wgpu::Features::SUBGROUP
                | wgpu::Features::SHADER_F16);
        let desc = wgpu::DeviceDescriptor {
            label: Some("soma"),
            required_features: features,
            required_limits: limits,
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc)).map_err(|e| {
            Error::RequestDevice {
                adapter: info.name.clone(),
                message: e.to_string(),
            }
        })?;
        // Errors that no error scope caught are logged, not panicked on.
        device.on_uncaptured_error(Arc::new(|e: wgpu::Error| {
            log::error!("uncaptured wgpu error: {e}");
        }));
        let gpu = Gpu::assemble(device, queue, Ownership::Owned);
        log::info!(
            "adapter: {} ({}, {:?}, driver {} {}); max storage binding {} MiB",
            gpu.summary.name,
            gpu.summary.backend,
            gpu.summary.device_type,
            gpu.summary.driver,
            gpu.summary.driver_info,
            gpu.summary.max_storage_buffer_binding_size >> 20
        );
        Ok(gpu)
    }

    /// Builds a `Gpu` on a device and queue that a host application already owns. soma needs
    /// no features and no more than the WebGPU default limits (a kernel binds at most 4
    /// storage buffers and one uniform, with a dynamic offset); larger networks or batches
    /// need larger `max_storage_buffer_binding_size`/`max_buffer_size`, which are checked
    /// before anything is dispatched (`embed::required_limits` says how large). Strict mode
    /// (`Determinism::Strict`) loads its kernels as SPIR-V marked `NoContraction` only where
    /// the host requested `Features::PASSTHROUGH_SHADERS` on a Vulkan device; otherwise its
    /// self-test decides whether the driver's own compilation keeps the order. The
    /// reductions take their subgroup forms only where the host requested
    /// `Features::SUBGROUP` ([`Gpu::subgroups`]); without it they run their workgroup-memory
    /// forms, which give the same bits. The f16 kernels (`ops::matmul::matmul_nt_f16` and
    /// the rest of `ops::matmul::f16`) run only where the host requested
    /// `Features::SHADER_F16` ([`Gpu::shader_f16`]); without it their recorders return
    /// `Error::Config` naming the feature. soma leaves the host's error handler alone.
    pub fn from_wgpu(device: wgpu::Device, queue: wgpu::Queue) -> Gpu {
        Gpu::assemble(device, queue, Ownership::Borrowed)
    }

    fn assemble(device: wgpu::Device, queue: wgpu::Queue, ownership: Ownership) -> Gpu {
        let limits = device.limits();
        let summary = AdapterSummary::new(&device.adapter_info(), &limits, device.features());
        let summary_backend = summary.backend;
        Gpu {
            device,
            queue,
            summary,
            limits,
            ownership,
            submissions: AtomicU64::new(0),
            maps: AtomicU64::new(0),
            strict_check: std::sync::OnceLock::new(),
            float_controls: std::sync::OnceLock::new(),
            serial: Serial::for_backend(summary_backend),
        }
    }

    /// The lock soma holds around its calls into this device (on GL; see [`Serial`]).
    pub fn serial(&self) -> &Serial {
        &self.serial
    }

    /// `object`, dropped under this device's [`Serial`] lock.
    pub fn hold<T>(&self, object: T) -> Held<T> {
        Held {
            inner: std::mem::ManuallyDrop::new(object),
            serial: self.serial.clone(),
        }
    }

    /// The adapter's name, backend, type, driver and the limits that matter here.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.summary
    }

    /// Whether strict mode's kernels load here as SPIR-V marked `NoContraction`: a Vulkan
    /// device with `Features::PASSTHROUGH_SHADERS` (soma requests it where the adapter has
    /// it; a borrowed device has it when its host asked for it).
    pub fn takes_spirv(&self) -> bool {
        self.summary.backend == wgpu::Backend::Vulkan
            && self
                .device
                .features()
                .contains(wgpu::Features::PASSTHROUGH_SHADERS)
    }

    /// The SPIR-V float controls for f32 that strict kernels ask for here: those the Vulkan
    /// device advertises (`shaderDenormPreserveFloat32`, `shaderRoundingModeRTEFloat32`,
    /// Vulkan 1.2), none elsewhere or on an older device.
    pub fn float_controls(&self) -> FloatControls {
        *self.float_controls.get_or_init(|| {
            if self.takes_spirv() {
                vulkan_float_controls(&self.device)
            } else {
                FloatControls::default()
            }
        })
    }

    /// The subgroup sizes the adapter may run (smallest, largest) where the device was
    /// opened with `Features::SUBGROUP` (soma requests it where the adapter has it; a
    /// borrowed device has it when its host asked for it); `None` elsewhere (GL, say), and
    /// then no kernel that uses subgroup operations is compiled. The reductions that use
    /// them sum in an order that does not depend on the size, and check in the shader that
    /// the subgroups they run in are usable (see `shaders/reduce_subgroup.wgsl`).
    pub fn subgroups(&self) -> Option<(u32, u32)> {
        if !self.device.features().contains(wgpu::Features::SUBGROUP) {
            return None;
        }
        let info = self.device.adapter_info();
        Some((info.subgroup_min_size, info.subgroup_max_size))
    }

    /// Whether the device was opened with `Features::SHADER_F16` (f16 in shaders and in
    /// storage buffers), which the f16 kernels need: soma requests it where the adapter has
    /// it; a borrowed device has it when its host asked for it.
    pub fn shader_f16(&self) -> bool {
        self.device.features().contains(wgpu::Features::SHADER_F16)
    }

    /// The limits the device was opened with.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Whether soma opened the device or borrowed it.
    pub fn ownership(&self) -> Ownership {
        self.ownership
    }

    /// Submissions and maps made through soma so far.
    pub fn stats(&self) -> GpuStats {
        GpuStats {
            submissions: self.submissions.load(Ordering::Relaxed),
            maps: self.maps.load(Ordering::Relaxed),
        }
    }

    /// Submits command buffers (the only place soma submits) and counts the submission.
    pub fn submit(&self, buffers: Vec<wgpu::CommandBuffer>) -> wgpu::SubmissionIndex {
        let _serial = self.serial.lock();
        self.submissions.fetch_add(1, Ordering::Relaxed);
        self.queue.submit(buffers)
    }

    /// Queues a write of `data` into `buffer` at `offset` (it lands before the next
    /// submission); on GL, under the device's [`Serial`] lock.
    pub fn write_buffer(&self, buffer: &wgpu::Buffer, offset: u64, data: &[u8]) {
        let _serial = self.serial.lock();
        self.queue.write_buffer(buffer, offset, data);
    }

    pub(crate) fn count_map(&self) {
        self.maps.fetch_add(1, Ordering::Relaxed);
    }

    /// Blocks until every submitted piece of work has completed.
    pub fn wait(&self) -> Result<()> {
        let _serial = self.serial.lock();
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::DeviceLost(e.to_string()))
    }

    /// Checks `bytes` of a buffer named `what` against the adapter's buffer limits.
    pub fn check_buffer_size(&self, what: &str, bytes: u64) -> Result<()> {
        if bytes > self.limits.max_buffer_size {
            return Err(Error::TooLarge {
                what: what.to_string(),
                bytes,
                limit: self.limits.max_buffer_size,
                limit_name: "max_buffer_size",
            });
        }
        if bytes > self.limits.max_storage_buffer_binding_size {
            return Err(Error::TooLarge {
                what: what.to_string(),
                bytes,
                limit: self.limits.max_storage_buffer_binding_size,
                limit_name: "max_storage_buffer_binding_size",
            });
        }
        Ok(())
    }

    /// Runs `f` inside a validation error scope and turns a captured error into
    /// `Error::Shader { label, .. }`; on GL, under the device's [`Serial`] lock.
    pub fn scoped<T>(&self, label: &str, f: impl FnOnce() -> T) -> Result<T> {
        let _serial = self.serial.lock();
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = f();
        match pollster::block_on(scope.pop()) {
            None => Ok(value),
            Some(e) => Err(Error::Shader {
                label: label.to_string(),
                message: e.to_string(),
            }),
        }
    }
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.summary)
            .field("ownership", &self.ownership)
            .finish()
    }
}

/// What a Vulkan device advertises of the float controls (Vulkan 1.2's
/// `VkPhysicalDeviceFloatControlsProperties`), read through wgpu-hal; none on a device or
/// instance older than 1.2, where the properties and the SPIR-V extension are not core.
#[cfg(any(
    windows,
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd"
))]
fn vulkan_float_controls(device: &wgpu::Device) -> FloatControls {
    use ash::vk;
    // SAFETY: the raw handles are used only to read properties, while the device lives;
    // nothing is created or destroyed through them.
    unsafe {
        let Some(hal) = device.as_hal::<wgpu::hal::api::Vulkan>() else {
            return FloatControls::default();
        };
        let shared = hal.shared_instance();
        let instance = shared.raw_instance();
        let physical = hal.raw_physical_device();
        if shared.instance_api_version() < vk::API_VERSION_1_2
            || instance
                .get_physical_device_properties(physical)
                .api_version
                < vk::API_VERSION_1_2
        {
            return FloatControls::default();
        }
        let mut controls = vk::PhysicalDeviceFloatControlsProperties::default();
        let mut properties = vk::PhysicalDeviceProperties2::default().push_next(&mut controls);
        instance.get_physical_device_properties2(physical, &mut properties);
        FloatControls {
            denorm_preserve: controls.shader_denorm_preserve_float32 == vk::TRUE,
            rounding_rte: controls.shader_rounding_mode_rte_float32 == vk::TRUE,
        }
    }
}

#[cfg(not(any(
    windows,
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd"
)))]
fn vulkan_float_controls(_device: &wgpu::Device) -> FloatControls {
    FloatControls::default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};

    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn gl_objects_drop_under_the_serial_lock() {
        let serial = Serial::for_backend(wgpu::Backend::Gl);
        let dropped = Arc::new(AtomicBool::new(false));
        let held = Held {
            inner: std::mem::ManuallyDrop::new(Flag(dropped.clone())),
            serial: serial.clone(),
        };
        let guard = serial.lock().expect("GL has a serial lock");
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            let started = Instant::now();
            drop(held);
            tx.send(started.elapsed()).unwrap();
        });
        // The drop waits while another thread holds the lock (a long compile, say).
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !dropped.load(Ordering::SeqCst),
            "dropped while the lock was held"
        );
        // Reentrant: the holder may take it again (a tensor dropped inside a locked call).
        assert!(serial.lock().is_some());
        drop(guard);
        let waited = rx.recv().unwrap();
        worker.join().unwrap();
        assert!(dropped.load(Ordering::SeqCst));
        assert!(waited >= Duration::from_millis(150), "{waited:?}");
    }

    #[test]
    fn other_backends_take_no_lock() {
        for backend in [
            wgpu::Backend::Vulkan,
            wgpu::Backend::Metal,
            wgpu::Backend::Dx12,
            wgpu::Backend::BrowserWebGpu,
            wgpu::Backend::Noop,
        ] {
            assert!(Serial::for_backend(backend).lock().is_none(), "{backend:?}");
        }
    }
}
