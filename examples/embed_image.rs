//! soma inside a host's GPU program: a host that owns its wgpu device and runs a frame loop
//! learns a picture as a neural field, a few training steps a frame, and draws every frame
//! with its own compute shader from the network's output, without soma ever waiting on the
//! GPU on the host's behalf.
//!
//! - The host opens its own instance, adapter and device (with the limits
//!   `soma::embed::required_limits` asks for) and hands them to soma with `Gpu::from_wgpu`.
//! - The picture is `assets/flower_64.png` (a 64 x 64 copy of scikit-learn's `flower.jpg`,
//!   CC BY 2.0, flickr user vultilion; see `assets/README.md`). Each pixel is a training row:
//!   its position (x, y) in [0, 1] with Fourier features sin/cos(2^k π x), sin/cos(2^k π y),
//!   k = 0..6, computed on the host once, to its RGB colour in [0, 1]. The network is an MLP
//!   30-128-128-3 (ReLU, sigmoid output) trained with MSE and Adam (lr 3e-3, batch 256 by
//!   default). One epoch is 16 shuffled passes over the pixels, so that the frame budget has
//!   room to grow within an epoch (a frame's steps never cross an epoch's end).
//! - Every frame: `FrameBudget::train_for` submits as many steps as fit the per-frame GPU
//!   time budget (`--budget-ms`, default 50); then one compute pass of the host's records
//!   soma's inference pass over all pixels (`Inference::record`, reading the resident
//!   weights) and the host's own shader, which turns soma's output buffer into RGBA8 pixels
//!   in the host's frame buffer. The host waits for its previous frame before starting the
//!   next (one frame in flight, as a swapchain would), ends an epoch when its steps are used
//!   up (`Trainer::end_epoch`, a wait the host chooses to place there), and polls the running
//!   loss without blocking (`start_loss_readback` / `try_take`).
//! - Every `--every` frames (default 25), and the last one, the host copies its frame buffer
//!   out and writes `frame_NNNN.png`; the final frame is also `final.png`. It prints the PSNR
//!   of each saved frame against the 64 x 64 original, and the time.
//!
//! ```text
//! cargo run --release --example embed_image                       # frames under target/embed_image/
//! cargo run --release --example embed_image -- out/ --seconds 30 --budget-ms 50 --every 25 --batch 256
//! ```

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use soma::embed::{self, BudgetConfig, FrameBudget, Inference, Workload};
use soma::{
    data::{Dataset, Targets},
    Activation, Device, Error, Gpu, Init, Loss, Model, Network, Optimizer, TrainConfig, Trainer,
};

/// Frequencies 2^0 .. 2^6 (times π): the finest has a period of 2 pixels, the Nyquist limit.
const OCTAVES: usize = 7;
/// Passes over the pixels in one epoch.
const REPEATS: usize = 16;
const ATTRIBUTION: &str = "Derived from flower.jpg by flickr user vultilion (flickr.com/photos/vultilion, photo 6056698931), CC BY 2.0 (https://creativecommons.org/licenses/by/2.0/); downscaled and rendered by a neural network";

/// The host's own shader: soma's output `(pixels, 3)` f32 in, packed RGBA8 out.
const HOST_WGSL: &str = r#"
@group(0) @binding(0) var<storage, read> rgb: array<f32>;
@group(0) @binding(1) var<storage, read_write> frame: array<u32>;

@compute @workgroup_size(64)
fn shade(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if (i >= arrayLength(&frame)) {
        return;
    }
    let c = clamp(vec3<f32>(rgb[3u * i], rgb[3u * i + 1u], rgb[3u * i + 2u]), vec3(0.0), vec3(1.0));
    let q = vec3<u32>(round(c * 255.0));
    frame[i] = q.x | (q.y << 8u) | (q.z << 16u) | (255u << 24u);
}
"#;

struct Args {
    out: PathBuf,
    seconds: f64,
    budget: Duration,
    every: usize,
    batch: usize,
}

fn parse_args() -> soma::Result<Args> {
    let mut args = Args {
        out: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/embed_image")),
        seconds: 30.0,
        budget: Duration::from_millis(50),
        every: 25,
        batch: 256,
    };
    let mut it = std::env::args().skip(1);
    let bad = |what: &str| {
        Error::Config(format!(
            "{what} (usage: embed_image [OUT_DIR] [--seconds S] [--budget-ms MS] [--every N] [--batch B])"
        ))
    };
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> soma::Result<f64> {
            it.next()
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v > 0.0)
                .ok_or_else(|| bad(&format!("{name} needs a positive number")))
        };
        match a.as_str() {
            "--seconds" => args.seconds = value("--seconds")?,
            "--budget-ms" => args.budget = Duration::from_secs_f64(value("--budget-ms")? / 1e3),
            "--every" => args.every = value("--every")?.max(1.0) as usize,
            "--batch" => args.batch = value("--batch")?.max(1.0) as usize,
            s if s.starts_with("--") => return Err(bad(&format!("unknown option {s}"))),
            s => args.out = PathBuf::from(s),
        }
    }
    Ok(args)
}

/// An 8-bit RGB image.
struct Image {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

fn read_png(path: &Path) -> soma::Result<Image> {
    let format = |message: String| Error::Format {
        path: path.to_path_buf(),
        line: None,
        message,
    };
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .map_err(|e| format(e.to_string()))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| format("the image is too large to decode".into()))?;
    let mut buf = vec![0; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| format(e.to_string()))?;
    if info.color_type != png::ColorType::Rgb || info.bit_depth != png::BitDepth::Eight {
        return Err(format(format!(
            "expected 8-bit RGB, got {:?} {:?}",
            info.color_type, info.bit_depth
        )));
    }
    buf.truncate(info.buffer_size());
    Ok(Image {
        width: info.width as usize,
        height: info.height as usize,
        rgb: buf,
    })
}

fn write_png(path: &Path, image: &Image) -> soma::Result<()> {
    let io = |e: std::io::Error| Error::io(path, e);
    let encoding = |e: png::EncodingError| Error::io(path, std::io::Error::other(e));
    let file = File::create(path).map_err(io)?;
    let mut encoder = png::Encoder::new(
        BufWriter::new(file),
        image.width as u32,
        image.height as u32,
    );
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder
        .add_text_chunk("Copyright".into(), ATTRIBUTION.into())
        .map_err(encoding)?;
    let mut writer = encoder.write_header().map_err(encoding)?;
    writer.write_image_data(&image.rgb).map_err(encoding)?;
    writer.finish().map_err(encoding)
}

/// Peak signal-to-noise ratio of two 8-bit images, in dB.
fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let mse = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (255.0f64.powi(2) / mse.max(1e-12)).log10()
}

/// Position and Fourier features of every pixel, row by row.
fn features(width: usize, height: usize) -> Vec<f32> {
    let mut f = Vec::with_capacity(width * height * (2 + 4 * OCTAVES));
    for py in 0..height {
        for px in 0..width {
            let x = (px as f32 + 0.5) / width as f32;
            let y = (py as f32 + 0.5) / height as f32;
            f.extend([x, y]);
            for k in 0..OCTAVES {
                let w = (1u32 << k) as f32 * std::f32::consts::PI;
                f.extend([(w * x).sin(), (w * x).cos(), (w * y).sin(), (w * y).cos()]);
            }
        }
    }
    f
}

/// The host's device: its own instance and adapter, and the limits soma says it needs.
fn host_device(
    workload: &Workload<'_>,
) -> soma::Result<(wgpu::Adapter, wgpu::Device, wgpu::Queue)> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY);
    let instance = wgpu::Instance::new(desc);
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }))
    .map_err(|e| Error::NoAdapter {
        detail: format!(" ({e})"),
    })?;
    let limits = embed::required_limits(workload)?;
    if !limits.check_limits(&adapter.limits()) {
        return Err(Error::Config(format!(
            "adapter {} does not reach the limits this picture needs",
            adapter.get_info().name
        )));
    }
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("host"),
        required_features: adapter.features() & wgpu::Features::TIMESTAMP_QUERY,
        required_limits: limits,
        ..Default::default()
    }))
    .map_err(|e| Error::RequestDevice {
        adapter: adapter.get_info().name,
        message: e.to_string(),
    })?;
    Ok((adapter, device, queue))
}

/// The host's own pipeline and buffers: soma's output in, its frame buffer out, and a
/// staging buffer for screenshots.
struct Shader {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    frame: wgpu::Buffer,
    staging: wgpu::Buffer,
    pixels: u32,
}

impl Shader {
    fn new(device: &wgpu::Device, rgb: &wgpu::Buffer, pixels: usize) -> Shader {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("host shade"),
            source: wgpu::ShaderSource::Wgsl(HOST_WGSL.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("host shade"),
            layout: None,
            module: &module,
            entry_point: Some("shade"),
            compilation_options: Default::default(),
            cache: None,
        });
        let frame = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("host frame"),
            size: pixels as u64 * 4,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("host screenshot"),
            size: pixels as u64 * 4,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("host shade"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: rgb.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: frame.as_entire_binding(),
                },
            ],
        });
        Shader {
            pipeline,
            bind_group,
            frame,
            staging,
            pixels: pixels as u32,
        }
    }

    fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(self.pixels.div_ceil(64), 1, 1);
    }

    /// The host's screenshot: waits for the frame (the host's choice) and unpacks RGBA8.
    fn screenshot(&self, device: &wgpu::Device) -> soma::Result<Vec<u8>> {
        self.staging.map_async(wgpu::MapMode::Read, .., |_| {});
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::DeviceLost(e.to_string()))?;
        let rgb = {
            let view = self
                .staging
                .get_mapped_range(..)
                .map_err(|e| Error::Readback {
                    label: "host screenshot".into(),
                    message: e.to_string(),
                })?;
            view.chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect()
        };
        self.staging.unmap();
        Ok(rgb)
    }
}

fn main() -> soma::Result<()> {
    env_logger::init();
    let args = parse_args()?;
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/flower_64.png");
    let image = read_png(&source)?;
    let pixels = image.width * image.height;
    let width = 2 + 4 * OCTAVES;

    // The training set: every pixel, REPEATS times (each epoch shuffles all of them).
    let x = features(image.width, image.height);
    let rgb: Vec<f32> = image.rgb.iter().map(|&b| b as f32 / 255.0).collect();
    let train = Dataset::new(
        "flower_64",
        x.repeat(REPEATS),
        width,
        Targets::Values {
            values: rgb.repeat(REPEATS),
            width: 3,
        },
    )?;
    let network = Network::mlp(&[width, 128, 128, 3], Activation::Relu, Activation::Sigmoid)?;
    let model = Model::new(network, Init::Pytorch, 0)?;
    let optimizer = Optimizer::adam(3e-3);
    let workload = Workload {
        network: &model.network,
        loss: Loss::Mse,
        optimizer,
        train: &train,
        validation: None,
        batch_size: args.batch,
        inference_rows: pixels,
    };

    // The host's device, handed to soma.
    let (adapter, device, queue) = host_device(&workload)?;
    let gpu = Gpu::from_wgpu(device.clone(), queue.clone());
    let info = adapter.get_info();
    println!(
        "host device: {} ({:?}, driver {} {}); timestamp queries: {}",
        info.name,
        info.backend,
        info.driver,
        info.driver_info,
        gpu.adapter().timestamp_queries
    );

    let config = TrainConfig {
        epochs: usize::MAX,
        batch_size: args.batch,
        shuffle: true,
        seed: 0,
        ..Default::default()
    };
    let mut trainer = Trainer::new(
        Device::Gpu(&gpu),
        &model,
        Loss::Mse,
        optimizer,
        &train,
        None,
        &config,
    )?;
    let inference = Inference::new(&trainer, pixels)?;
    queue.write_buffer(inference.input().buffer(), 0, bytemuck::cast_slice(&x));
    let shader = Shader::new(&device, inference.output().buffer(), pixels);
    let mut budget = FrameBudget::new(&gpu, BudgetConfig::default())?;
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;
    println!(
        "picture: {} ({} x {}); network {}-128-128-3; batch {}; budget {:?} of GPU time a frame, measured by {:?}",
        source.display(),
        image.width,
        image.height,
        width,
        args.batch,
        args.budget,
        budget.clock()
    );

    let start = Instant::now();
    let mut previous: Option<wgpu::SubmissionIndex> = None;
    let mut loss_readback = None;
    let mut loss = f32::NAN;
    let (mut frame, mut steps, mut epochs) = (0usize, 0usize, 0usize);
    let final_psnr = loop {
        // One frame in flight: wait for the previous one, as a swapchain would.
        if let Some(index) = previous.take() {
            device
                .poll(wgpu::PollType::Wait {
                    submission_index: Some(index),
                    timeout: None,
                })
                .map_err(|e| Error::DeviceLost(e.to_string()))?;
        }
        let last = start.elapsed().as_secs_f64() >= args.seconds;
        if !last {
            if trainer.steps_left() == 0 {
                trainer.end_epoch()?;
                epochs += 1;
            }
            steps += budget.train_for(&mut trainer, args.budget)?;
        }

        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("host frame"),
        });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("host frame"),
                timestamp_writes: None,
            });
            inference.record(&mut pass);
            shader.record(&mut pass);
        }
        let save = last || frame % args.every == 0;
        if save {
            encoder.copy_buffer_to_buffer(&shader.frame, 0, &shader.staging, 0, pixels as u64 * 4);
        }
        previous = Some(queue.submit([encoder.finish()]));

        // The running loss, read back without waiting: started now, taken a later frame.
        match loss_readback.as_mut() {
            None => loss_readback = Some(trainer.start_loss_readback()?),
            Some(readback) => {
                if let Some(l) = readback.try_take()? {
                    loss = l;
                    loss_readback = None;
                }
            }
        }

        if save {
            let frame_rgb = shader.screenshot(&device)?;
            let db = psnr(&frame_rgb, &image.rgb);
            let rendered = Image {
                width: image.width,
                height: image.height,
                rgb: frame_rgb,
            };
            write_png(&args.out.join(format!("frame_{frame:04}.png")), &rendered)?;
            println!(
                "frame {frame:4}  {:6.1} s  {steps:6} steps  epoch {epochs:3}  {:3} steps/frame  {:>9} a step  loss {:>7}  PSNR {db:5.2} dB",
                start.elapsed().as_secs_f64(),
                budget.last().map_or(0, |m| m.steps),
                budget
                    .per_step()
                    .map_or("-".into(), |d| format!("{:.2} ms", d.as_secs_f64() * 1e3)),
                if loss.is_nan() {
                    "-".into()
                } else {
                    format!("{loss:.5}")
                },
            );
            if last {
                write_png(&args.out.join("final.png"), &rendered)?;
                break db;
            }
        }
        frame += 1;
    };
    println!(
        "final frame {frame}: PSNR {final_psnr:.2} dB against the 64 x 64 original (target 20 dB: {}) after {steps} steps ({:.1} epochs of {REPEATS} passes) in {:.1} s on {}; frames in {}",
        if final_psnr >= 20.0 { "met" } else { "missed" },
        steps as f64 / trainer.plan().train.as_ref().map_or(1, |d| d.steps) as f64,
        start.elapsed().as_secs_f64(),
        info.name,
        args.out.display()
    );
    Ok(())
}
