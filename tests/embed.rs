//! Embedding soma in a host application (issue #7): a device the test opens itself, as a host
//! would, handed to soma with `Gpu::from_wgpu`. Same weights as a soma-owned device, bit for
//! bit; host work between soma's steps changes nothing; the non-blocking API leaves the
//! waiting to the host; a host with small limits gets `Error::TooLarge`; steps recorded into a
//! host's pass equal submitted ones; the frame budget's step counts follow its rule and train
//! the same weights; the inference pass equals `Model::predict`; bad budgets and CPU-path
//! trainers get errors.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{assert_close, gpu};
use soma::data::{self, Dataset};
use soma::embed::{self, BudgetConfig, Clock, FrameBudget, Inference, Workload};
use soma::{
    Activation, Device, Error, Gpu, Init, Layer, Loss, Model, Network, Optimizer, Ownership,
    Parameters, TrainConfig, Trainer,
};

/// A device opened the way a host application opens one: its own instance, its own
/// descriptor, on the adapter that soma's own `Gpu` picked (same name and backend), so
/// that the two can be compared bit for bit. `None` (SKIPPED) without an adapter, under the
/// same policy as `common::gpu` (a panic with `SOMA_REQUIRE_GPU=1`).
fn host_device(test: &str, limits: Option<wgpu::Limits>) -> Option<(wgpu::Device, wgpu::Queue)> {
    let soma_gpu = gpu(test)?;
    let want = soma_gpu.adapter();
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::all();
    let instance = wgpu::Instance::new(desc);
    let adapter = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
        .into_iter()
        .find(|a| {
            let info = a.get_info();
            info.name == want.name && info.backend == want.backend
        })
        .unwrap_or_else(|| panic!("{test}: the host cannot see soma's adapter {want:?}"));
    let limits = limits.unwrap_or_else(|| adapter.limits());
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("host"),
        required_features: adapter.features() & wgpu::Features::TIMESTAMP_QUERY,
        required_limits: limits,
        ..Default::default()
    }))
    .unwrap_or_else(|e| panic!("{test}: host device: {e}"));
    Some((device, queue))
}

/// Counts the validation errors no scope caught on a host's device (a host would log them).
fn count_uncaptured(device: &wgpu::Device) -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
        eprintln!("uncaptured: {e}");
        c.fetch_add(1, Ordering::Relaxed);
    }));
    count
}

/// The first `rows` rows of digits, standardised.
fn digits(rows: usize) -> Dataset {
    let all = data::bundled("digits").unwrap();
    let mut d = all.select(&(0..rows).collect::<Vec<_>>());
    let scaler = data::Scaler::fit(data::ScaleKind::Standard, &d);
    scaler.apply(&mut d).unwrap();
    d
}

fn model(seed: u64) -> Model {
    let net = Network::mlp(&[64, 32, 10], Activation::Tanh, Activation::Identity).unwrap();
    Model::new(net, Init::Pytorch, seed).unwrap()
}

fn config() -> TrainConfig {
    TrainConfig {
        epochs: 1,
        batch_size: 32,
        shuffle: true,
        seed: 5,
        ..Default::default()
    }
}

fn trainer<'a>(gpu: &'a Gpu, model: &Model, train: &Dataset) -> Trainer<'a> {
    Trainer::new(
        Device::Gpu(gpu),
        model,
        Loss::SoftmaxCrossEntropy,
        Optimizer::adam(1e-2),
        train,
        None,
        &config(),
    )
    .unwrap()
}

fn assert_bitwise(label: &str, got: &Parameters, want: &Parameters) {
    for (i, (g, w)) in got.layers.iter().zip(&want.layers).enumerate() {
        let pairs = [
            ("weight", &g.weight, &w.weight),
            ("bias", g.bias.as_ref().unwrap(), w.bias.as_ref().unwrap()),
        ];
        for (name, g, w) in pairs {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            if let Some(at) = bits(g).iter().zip(bits(w)).position(|(a, b)| *a != b) {
                panic!(
                    "{label}: layers.{i}.{name} differs at index {at}: {} vs {}",
                    g[at], w[at]
                );
            }
        }
    }
}

/// A host's own compute work on its own buffer: `data = data * 2 + 1`.
struct HostKernel {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    data: wgpu::Buffer,
    len: u32,
}

const HOST_WGSL: &str = r#"
@group(0) @binding(0) var<storage, read_write> data: array<f32>;

@compute @workgroup_size(64)
fn double_plus_one(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < arrayLength(&data)) {
        data[id.x] = data[id.x] * 2.0 + 1.0;
    }
}
"#;

impl HostKernel {
    fn new(device: &wgpu::Device, queue: &wgpu::Queue, init: &[f32]) -> HostKernel {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("host kernel"),
            source: wgpu::ShaderSource::Wgsl(HOST_WGSL.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("host kernel"),
            layout: None,
            module: &module,
            entry_point: Some("double_plus_one"),
            compilation_options: Default::default(),
            cache: None,
        });
        let data = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("host data"),
            size: init.len() as u64 * 4,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        queue.write_buffer(&data, 0, bytemuck::cast_slice(init));
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("host kernel"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: data.as_entire_binding(),
            }],
        });
        HostKernel {
            pipeline,
            bind_group,
            data,
            len: init.len() as u32,
        }
    }

    fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(self.len.div_ceil(64), 1, 1);
    }

    /// One submission of the host's own: the kernel, then a copy of its buffer into `copy`.
    fn submit(&self, device: &wgpu::Device, queue: &wgpu::Queue, copy: &wgpu::Buffer) {
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            self.record(&mut pass);
        }
        encoder.copy_buffer_to_buffer(&self.data, 0, copy, 0, self.len as u64 * 4);
        queue.submit([encoder.finish()]);
    }
}

fn host_buffer(device: &wgpu::Device, len: usize) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("host buffer"),
        size: len as u64 * 4,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// The host's own blocking readback of its own buffer.
fn host_read(device: &wgpu::Device, queue: &wgpu::Queue, buffer: &wgpu::Buffer) -> Vec<f32> {
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("host staging"),
        size: buffer.size(),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, buffer.size());
    queue.submit([encoder.finish()]);
    staging.map_async(wgpu::MapMode::Read, .., |r| r.unwrap());
    device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    let values = bytemuck::cast_slice(&staging.get_mapped_range(..).unwrap()).to_vec();
    staging.unmap();
    values
}

#[test]
fn host_device_trains_bitwise_like_a_soma_device() {
    let test = "host_device_trains_bitwise_like_a_soma_device";
    let Some((device, queue)) = host_device(test, None) else {
        return;
    };
    let errors = count_uncaptured(&device);
    let host = Gpu::from_wgpu(device, queue);
    assert_eq!(host.ownership(), Ownership::Borrowed);
    let own = gpu(test).unwrap();
    assert_eq!(own.ownership(), Ownership::Owned);
    let (train, m) = (digits(200), model(1));
    let mut a = trainer(&host, &m, &train);
    let mut b = trainer(own, &m, &train);
    assert_eq!(a.run_steps(6).unwrap(), 6);
    assert_eq!(b.run_steps(6).unwrap(), 6);
    // Same adapter, same kernels, same order of operations: the same bits.
    assert_bitwise(test, &a.parameters().unwrap(), &b.parameters().unwrap());
    assert_eq!(errors.load(Ordering::Relaxed), 0);
}

#[test]
fn host_work_between_steps_changes_nothing() {
    let test = "host_work_between_steps_changes_nothing";
    let Some((device, queue)) = host_device(test, None) else {
        return;
    };
    let errors = count_uncaptured(&device);
    let host = Gpu::from_wgpu(device.clone(), queue.clone());
    let (train, m) = (digits(200), model(2));
    let init: Vec<f32> = (0..1000).map(|i| (i % 7) as f32).collect();
    let kernel = HostKernel::new(&device, &queue, &init);
    let copy = host_buffer(&device, init.len());
    let mut a = trainer(&host, &m, &train);
    for _ in 0..6 {
        a.run_steps(1).unwrap();
        kernel.submit(&device, &queue, &copy);
    }
    // The host reads soma's resident weights with its own copy command.
    let (weight, _) = a.layer_tensors(0).unwrap();
    let weight_copy = host_buffer(&device, weight.len());
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(
        weight.buffer(),
        weight.offset(),
        &weight_copy,
        0,
        weight.byte_len(),
    );
    queue.submit([encoder.finish()]);

    let mut b = trainer(gpu(test).unwrap(), &m, &train);
    b.run_steps(6).unwrap();
    let pa = a.parameters().unwrap();
    assert_bitwise(test, &pa, &b.parameters().unwrap());
    // Six rounds of x -> 2x + 1 give 64 (x + 1) - 1, exact in f32 for these small integers.
    let want: Vec<f32> = init.iter().map(|x| 64.0 * (x + 1.0) - 1.0).collect();
    assert_eq!(host_read(&device, &queue, &kernel.data), want);
    assert_eq!(host_read(&device, &queue, &copy), want);
    assert_eq!(
        host_read(&device, &queue, &weight_copy),
        pa.layers[0].weight
    );
    assert_eq!(errors.load(Ordering::Relaxed), 0);
}

#[test]
fn non_blocking_api_leaves_the_waiting_to_the_host() {
    let test = "non_blocking_api_leaves_the_waiting_to_the_host";
    let Some((device, queue)) = host_device(test, None) else {
        return;
    };
    let host = Gpu::from_wgpu(device.clone(), queue.clone());
    let (train, m) = (digits(320), model(3));
    let mut t = trainer(&host, &m, &train);
    t.begin_epoch().unwrap();

    // run_steps: one submission, no map, so nothing it could wait for.
    let before = host.stats();
    assert_eq!(t.run_steps(4).unwrap(), 4);
    let after = host.stats();
    assert_eq!(after.submissions - before.submissions, 1);
    assert_eq!(after.maps, before.maps);

    // record_steps: into the host's pass; the host submits.
    let mut encoder = device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        assert_eq!(t.record_steps(&mut pass, 4).unwrap(), 4);
    }
    assert_eq!(host.stats(), after, "record_steps submitted or mapped");
    queue.submit([encoder.finish()]);

    // The readback submits a copy and only then asks for the map. wgpu runs map and
    // work-done callbacks only inside a later `queue.submit` or `device.poll` (wgpu's
    // `Buffer::map_async` docs; wgpu-core never fires them from `map_async` itself), so with
    // no poll and no submit since, the value cannot have arrived, however fast the GPU is:
    // the handle is pending and says so without blocking. It resolves only when the host
    // polls; had soma waited anywhere, the host's poll would not be needed.
    let mut readback = t.start_loss_readback().unwrap();
    let work_done = Arc::new(AtomicBool::new(false));
    let flag = work_done.clone();
    queue.on_submitted_work_done(move || flag.store(true, Ordering::Release));
    assert!(!readback.is_ready());
    assert_eq!(readback.try_take().unwrap(), None);
    assert!(!work_done.load(Ordering::Acquire));

    device
        .poll(wgpu::PollType::wait_indefinitely())
        .expect("host poll");
    assert!(work_done.load(Ordering::Acquire));
    assert!(readback.is_ready());
    let loss = readback
        .try_take()
        .unwrap()
        .expect("ready after the host's poll");
    assert!(loss.is_finite() && loss > 0.0, "loss {loss}");
    // The same value as the blocking read of the same running loss.
    assert_eq!(loss.to_bits(), t.running_loss().unwrap().to_bits());
}

#[test]
fn small_host_limits_give_too_large_not_a_panic() {
    let test = "small_host_limits_give_too_large_not_a_panic";
    let (train, m) = (digits(200), model(4));
    let workload = Workload {
        network: &m.network,
        loss: Loss::SoftmaxCrossEntropy,
        optimizer: Optimizer::adam(1e-2),
        train: &train,
        validation: None,
        batch_size: 32,
        inference_rows: 0,
    };
    // The largest buffer is the training set: 200 rows x 64 features x 4 bytes.
    let largest = embed::largest_buffer(&workload).unwrap();
    assert_eq!(largest, 200 * 64 * 4);
    // As `required_limits` documents: no soma dispatch binds more than four storage buffers,
    // except a fused layer (five), which is used only where the device binds five, and the
    // RMSprop update (five), which says so in an error on a device that binds fewer.
    for k in soma::Kernel::all() {
        let fused = matches!(
            k,
            soma::Kernel::MatmulTile(_, _, soma::ops::matmul::Epilogue::BiasAct { .. })
                | soma::Kernel::MatmulWorkgroup(
                    _,
                    _,
                    _,
                    soma::ops::matmul::Epilogue::BiasAct { .. }
                )
                | soma::Kernel::DenseForward
                | soma::Kernel::Update(soma::UpdateRule::RmsProp, _)
        );
        assert!(k.spec().storage.len() <= if fused { 5 } else { 4 }, "{k:?}");
    }
    let required = embed::required_limits(&workload).unwrap();
    assert_eq!(
        required.max_storage_buffer_binding_size,
        wgpu::Limits::default().max_storage_buffer_binding_size
    );

    // A host whose buffers may hold 16 KiB: the training set (50 KiB) does not fit, but it
    // can stay on the host and stream; a 64 x 128 weight matrix (32 KiB) cannot.
    let tiny = wgpu::Limits {
        max_storage_buffer_binding_size: 16 << 10,
        max_buffer_size: 16 << 10,
        ..wgpu::Limits::default()
    };
    let Some((device, queue)) = host_device(test, Some(tiny)) else {
        return;
    };
    let errors = count_uncaptured(&device);
    let host = Gpu::from_wgpu(device, queue);
    let streams = Trainer::new(
        Device::Gpu(&host),
        &m,
        Loss::SoftmaxCrossEntropy,
        Optimizer::adam(1e-2),
        &train,
        None,
        &config(),
    )
    .expect("a training set over the limits streams from the host");
    assert!(streams.plan().train.as_ref().unwrap().streamed.is_some());
    drop(streams);
    let wide = Model::new(
        Network::mlp(&[64, 128, 10], Activation::Relu, Activation::Identity).unwrap(),
        Init::Pytorch,
        4,
    )
    .unwrap();
    let err = Trainer::new(
        Device::Gpu(&host),
        &wide,
        Loss::SoftmaxCrossEntropy,
        Optimizer::adam(1e-2),
        &train,
        None,
        &config(),
    )
    .err()
    .expect("a weight matrix over the limits must be refused");
    match &err {
        Error::TooLarge {
            bytes, limit, what, ..
        } => {
            assert_eq!(*bytes, 128 * 64 * 4, "{err}");
            assert_eq!(*limit, 16 << 10, "{err}");
            assert!(what.contains("layers.0"), "{err}");
        }
        other => panic!("expected Error::TooLarge, got {other}"),
    }

    // A host sized exactly by `largest_buffer`: the run fits, a large inference pass does not.
    let exact = wgpu::Limits {
        max_storage_buffer_binding_size: largest,
        max_buffer_size: largest,
        ..wgpu::Limits::default()
    };
    let (device, queue) = host_device(test, Some(exact)).unwrap();
    let exact_errors = count_uncaptured(&device);
    let host = Gpu::from_wgpu(device, queue);
    let mut t = trainer(&host, &m, &train);
    t.run_steps(2).unwrap();
    Inference::new(&t, 100).unwrap();
    match Inference::new(&t, 1000) {
        Err(Error::TooLarge { what, .. }) => assert!(what.contains("inference"), "{what}"),
        other => panic!("expected Error::TooLarge, got {other:?}"),
    }
    assert_eq!(errors.load(Ordering::Relaxed), 0);
    assert_eq!(exact_errors.load(Ordering::Relaxed), 0);
}

#[test]
fn record_steps_into_a_host_pass_equals_run_steps() {
    let test = "record_steps_into_a_host_pass_equals_run_steps";
    let Some((device, queue)) = host_device(test, None) else {
        return;
    };
    let host = Gpu::from_wgpu(device.clone(), queue.clone());
    let (train, m) = (digits(320), model(5));
    let mut a = trainer(&host, &m, &train);
    a.run_steps(3).unwrap();
    a.run_steps(4).unwrap();

    let init = vec![1.0f32; 100];
    let kernel = HostKernel::new(&device, &queue, &init);
    let mut b = trainer(&host, &m, &train);
    let mut encoder = device.create_command_encoder(&Default::default());
    {
        // The host's own dispatch before and after soma's steps, in the same pass.
        let mut pass = encoder.begin_compute_pass(&Default::default());
        kernel.record(&mut pass);
        assert_eq!(b.record_steps(&mut pass, 3).unwrap(), 3);
        let before = host.stats();
        assert_eq!(b.record_steps(&mut pass, 4).unwrap(), 4);
        assert_eq!(
            host.stats(),
            before,
            "recording inside an epoch submits nothing"
        );
        kernel.record(&mut pass);
    }
    queue.submit([encoder.finish()]);
    assert_bitwise(test, &b.parameters().unwrap(), &a.parameters().unwrap());
    assert_eq!(host_read(&device, &queue, &kernel.data), vec![7.0f32; 100]);
}

/// Runs frames of a host's loop (train under the budget, the host's own submission, then the
/// host's wait for its frame, as a swapchain would) until the epoch is used up; returns each
/// frame's step count.
fn frames(
    budget: &mut FrameBudget,
    t: &mut Trainer<'_>,
    per_frame: Duration,
    device: &wgpu::Device,
    queue: &wgpu::Queue,
) -> Vec<usize> {
    let kernel = HostKernel::new(device, queue, &[0.0; 64]);
    let copy = host_buffer(device, 64);
    let mut counts = vec![];
    for _ in 0..1000 {
        let n = budget.train_for(t, per_frame).unwrap();
        if n == 0 && t.steps_left() == 0 {
            return counts;
        }
        counts.push(n);
        kernel.submit(device, queue, &copy);
        device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    }
    panic!("the epoch never ended: {counts:?}");
}

#[test]
fn frame_budget_follows_its_rule_and_trains_like_run_steps() {
    let test = "frame_budget_follows_its_rule_and_trains_like_run_steps";
    let Some((device, queue)) = host_device(test, None) else {
        return;
    };
    let host = Gpu::from_wgpu(device.clone(), queue.clone());
    let (train, m) = (digits(1280), model(6));
    let mut want = trainer(&host, &m, &train);
    want.run_steps(40).unwrap();
    let want = want.parameters().unwrap();

    let has_timestamps = device.features().contains(wgpu::Features::TIMESTAMP_QUERY);
    for clock in [None, Some(Clock::Host)] {
        let label = format!("{test} ({clock:?})");
        let config = BudgetConfig {
            initial_steps: 1,
            max_steps: 8,
            clock,
            ..Default::default()
        };
        // A budget no step count up to 8 can fill: each frame measures the last, so the count
        // doubles from 1 to the cap: 1, 2, 4, 8, 8, ... (40 steps: 1+2+4+8+8+8+8+1).
        let mut budget = FrameBudget::new(&host, config).unwrap();
        let expected = match clock {
            Some(c) => c,
            None if has_timestamps => Clock::GpuTimestamps,
            None => Clock::Host,
        };
        assert_eq!(budget.clock(), expected, "{label}");
        let mut t = trainer(&host, &m, &train);
        let maps = host.stats().maps;
        let counts = frames(
            &mut budget,
            &mut t,
            Duration::from_secs(3600),
            &device,
            &queue,
        );
        if expected == Clock::Host {
            assert_eq!(
                host.stats().maps,
                maps,
                "{label}: the host clock maps nothing"
            );
        }
        assert_eq!(counts, [1, 2, 4, 8, 8, 8, 8, 1], "{label}");
        assert_bitwise(&label, &t.parameters().unwrap(), &want);
        // The call that found the epoch used up collected the last frame's measurement.
        assert_eq!(budget.last().expect("a measurement").steps, 1, "{label}");
        assert!(budget.idle(), "{label}");

        // A budget nothing fits: one step a frame.
        let mut budget = FrameBudget::new(&host, config).unwrap();
        let mut t = trainer(&host, &m, &train);
        let counts = frames(&mut budget, &mut t, Duration::ZERO, &device, &queue);
        assert_eq!(counts, vec![1; 40], "{label}");
    }
    for bad in [0, embed::MAX_IN_FLIGHT + 1] {
        let config = BudgetConfig {
            max_in_flight: bad,
            ..Default::default()
        };
        assert!(matches!(
            FrameBudget::new(&host, config),
            Err(Error::Config(_))
        ));
    }
    // A trainer on the CPU path has nothing to record: an error, not a panic.
    let mut cpu = Trainer::new(
        Device::Cpu,
        &m,
        Loss::SoftmaxCrossEntropy,
        Optimizer::adam(1e-2),
        &train,
        None,
        &config(),
    )
    .unwrap();
    let mut budget = FrameBudget::new(&host, BudgetConfig::default()).unwrap();
    assert!(matches!(
        budget.train_for(&mut cpu, Duration::from_millis(1)),
        Err(Error::Config(_))
    ));
    assert!(matches!(Inference::new(&cpu, 4), Err(Error::Config(_))));
    if !has_timestamps {
        let config = BudgetConfig {
            clock: Some(Clock::GpuTimestamps),
            ..Default::default()
        };
        assert!(matches!(
            FrameBudget::new(&host, config),
            Err(Error::Config(_))
        ));
    }
}

#[test]
fn inference_pass_matches_predict() {
    let test = "inference_pass_matches_predict";
    let Some((device, queue)) = host_device(test, None) else {
        return;
    };
    let host = Gpu::from_wgpu(device.clone(), queue.clone());
    // Odd widths, three activations, and a layer without a bias (the placeholder binding).
    let layer = |inputs, outputs, activation, bias| Layer {
        inputs,
        outputs,
        activation,
        bias,
    };
    let net = Network {
        layers: vec![
            layer(64, 33, Activation::Tanh, true),
            layer(33, 17, Activation::LeakyRelu { slope: 0.01 }, false),
            layer(17, 10, Activation::Sigmoid, true),
        ],
    };
    let m = Model::new(net, Init::Pytorch, 7).unwrap();
    let train = digits(200);
    let mut t = Trainer::new(
        Device::Gpu(&host),
        &m,
        Loss::Mse,
        Optimizer::adam(1e-2),
        &train,
        None,
        &config(),
    )
    .unwrap();
    t.run_steps(5).unwrap();

    let rows = 57;
    let x = &train.features[..rows * 64];
    let inference = Inference::new(&t, rows).unwrap();
    assert_eq!(inference.input().shape(), [rows, 64]);
    assert_eq!(inference.output().shape(), [rows, 10]);
    // The host writes the input and records the pass into its own compute pass.
    queue.write_buffer(inference.input().buffer(), 0, bytemuck::cast_slice(x));
    let mut encoder = device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        inference.record(&mut pass);
    }
    queue.submit([encoder.finish()]);
    let got = inference.output().read(&host).unwrap();

    let trained = Model::with_params(m.network.clone(), t.parameters().unwrap()).unwrap();
    // The GPU's own predict path runs the same kernels on the same weights: the same bits.
    let gpu_predict = trained.predict(Device::Gpu(&host), x, rows).unwrap();
    assert_eq!(got, gpu_predict, "inference vs Model::predict on the GPU");
    // Against the plain-loop CPU reference, within a tolerance: the blocked matmul sums its
    // 64, 33 and 17 terms in another order (with fused multiply-adds), and WGSL's exp/tanh
    // may differ from Rust's by a few ulp (WGSL allows exp 3 + 2|x| ulp). Each layer adds a
    // few ulp of its partial sums; the sigmoid (slope <= 1/4) shrinks what reaches the
    // outputs, which lie in (0, 1). Measured on lavapipe: 1.2e-7 at worst (one ulp near 1);
    // 1e-5 leaves room for another GPU's order of summation, and still catches any wrong
    // weight, bias or activation, which moves outputs by 1e-3 or more.
    let cpu = trained.predict(Device::CpuReference, x, rows).unwrap();
    assert_close("inference vs CPU reference", &got, &cpu, 1e-5, 1e-5);
}

/// A training table larger than the device's binding limit is streamed from the host, batch
/// by batch, instead of refused: on a device whose storage bindings are limited to 64 KiB,
/// digits (368 KiB of features) trains to the same bits as on a device where it is resident,
/// since the host gather is the same copy the gather kernel makes.
#[test]
fn a_table_over_the_binding_limit_is_streamed_to_the_same_bits() {
    let Some((device, queue)) = host_device(
        "a_table_over_the_binding_limit_is_streamed_to_the_same_bits",
        Some(wgpu::Limits {
            max_storage_buffer_binding_size: 64 << 10,
            max_buffer_size: 64 << 10,
            ..wgpu::Limits::default()
        }),
    ) else {
        return;
    };
    let small = Gpu::from_wgpu(device, queue);
    let Some(big) = gpu("a_table_over_the_binding_limit_is_streamed_to_the_same_bits") else {
        return;
    };
    let all = soma::data::bundled("digits").unwrap();
    let (train, val) = all.split(0.2, 3).unwrap();
    let net = Network::mlp(&[64, 32, 10], Activation::Relu, Activation::Identity).unwrap();
    let model = Model::new(net, Init::Pytorch, 8).unwrap();
    let config = TrainConfig {
        epochs: 2,
        batch_size: 64,
        ..Default::default()
    };
    let run = |g: &Gpu| {
        let mut t = Trainer::new(
            Device::Gpu(g),
            &model,
            Loss::SoftmaxCrossEntropy,
            Optimizer::adam(1e-3),
            &train,
            Some(&val),
            &config,
        )
        .unwrap();
        let streamed = t.plan().train.as_ref().unwrap().streamed.is_some();
        let m1 = t.run_epoch(|_| {}).unwrap();
        let m2 = t.run_epoch(|_| {}).unwrap();
        (streamed, m1, m2, t.parameters().unwrap())
    };
    let (s_small, a1, a2, pa) = run(&small);
    let (s_big, b1, b2, pb) = run(big);
    assert!(s_small, "the 64 KiB device streams the table");
    assert!(!s_big, "the full device keeps it resident");
    let bits = |p: &Parameters| -> Vec<u32> {
        p.layers
            .iter()
            .flat_map(|l| l.weight.iter().chain(l.bias.iter().flatten()))
            .map(|v| v.to_bits())
            .collect()
    };
    assert_eq!(bits(&pa), bits(&pb), "same weights, streamed or resident");
    assert_eq!(a1.train_loss.to_bits(), b1.train_loss.to_bits());
    assert_eq!(a2.val_loss, b2.val_loss, "the validation set streams too");
    assert_eq!(a2.val_accuracy, b2.val_accuracy);
}

/// Where the parameters' shared buffer (every weight and bias, so that one dispatch updates
/// them all) is over the device's binding limit but each tensor fits, every tensor keeps a
/// buffer of its own and the optimizer updates them one dispatch each: the run trains, bit
/// for bit as on a device where the shared buffer fits.
#[test]
fn parameters_over_one_binding_keep_buffers_of_their_own() {
    let test = "parameters_over_one_binding_keep_buffers_of_their_own";
    // 64-60-60-10: weights of 15.0, 14.1 and 2.3 KiB, each under 16 KiB, together over it.
    let tiny = wgpu::Limits {
        max_storage_buffer_binding_size: 16 << 10,
        max_buffer_size: 16 << 10,
        ..wgpu::Limits::default()
    };
    let Some((device, queue)) = host_device(test, Some(tiny)) else {
        return;
    };
    let errors = count_uncaptured(&device);
    let small = Gpu::from_wgpu(device, queue);
    let (big_device, big_queue) = host_device(test, None).unwrap();
    let big = Gpu::from_wgpu(big_device, big_queue);
    let net = Network::mlp(&[64, 60, 60, 10], Activation::Tanh, Activation::Identity).unwrap();
    let m = Model::new(net, Init::Pytorch, 6).unwrap();
    // 60 rows (15 KiB of features, resident on both): two steps of 32, one partial.
    let train = digits(60);
    let run = |gpu: &Gpu| {
        let mut t = trainer(gpu, &m, &train);
        let kernels: Vec<&str> = t.profile_step().unwrap().iter().map(|k| k.0).collect();
        let updates = kernels.iter().filter(|k| k.contains("update")).count();
        t.run_steps(t.steps_left()).unwrap();
        (updates, t.parameters().unwrap())
    };
    let (small_updates, small_params) = run(&small);
    let (big_updates, big_params) = run(&big);
    assert_eq!(
        small_updates, 6,
        "one update per tensor where the arena does not fit"
    );
    assert_eq!(big_updates, 1, "one update for all where it fits");
    assert_bitwise(test, &small_params, &big_params);
    assert_eq!(errors.load(Ordering::Relaxed), 0);
}

/// A device that binds only four storage buffers per stage (the downlevel limit) trains
/// with Adam, and refuses RMSprop (five: the parameter, three state tensors, the gradient)
/// with an error that names the limit, before any step runs.
#[test]
fn rmsprop_on_a_four_binding_device_is_a_clear_error() {
    let test = "rmsprop_on_a_four_binding_device_is_a_clear_error";
    let four = wgpu::Limits {
        max_storage_buffers_per_shader_stage: 4,
        ..wgpu::Limits::default()
    };
    let Some((device, queue)) = host_device(test, Some(four)) else {
        return;
    };
    let errors = count_uncaptured(&device);
    let gpu = Gpu::from_wgpu(device, queue);
    let net = Network::mlp(&[64, 16, 10], Activation::Relu, Activation::Identity).unwrap();
    let m = Model::new(net, Init::Pytorch, 3).unwrap();
    let train = digits(64);
    let config = TrainConfig {
        epochs: 1,
        batch_size: 32,
        ..Default::default()
    };
    let new = |opt: Optimizer| {
        Trainer::new(
            Device::Gpu(&gpu),
            &m,
            Loss::SoftmaxCrossEntropy,
            opt,
            &train,
            None,
            &config,
        )
    };
    new(Optimizer::adam(1e-3)).unwrap().run_steps(2).unwrap();
    let err = match new(Optimizer::rmsprop(1e-3)) {
        Ok(_) => panic!("RMSprop built on a device that binds 4 storage buffers"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("rmsprop") && err.contains("max_storage_buffers_per_shader_stage"),
        "{err}"
    );
    assert_eq!(errors.load(Ordering::Relaxed), 0);
}
