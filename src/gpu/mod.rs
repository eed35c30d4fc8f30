//! The GPU side: the device, and one module per WGSL kernel (its pipeline, parameter structs
//! and dispatch arithmetic). Kernels are compiled once per [`GpuContext`] and shared by every
//! engine built on it.

pub mod act;
pub mod gather;
pub mod linear;
pub mod loss;
pub mod mmoe_mix;
pub mod optimizer;
pub mod resolve;
pub mod scatter;

use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};

/// `shaders/prelude.wgsl`, compiled first into every kernel: the batch-size uniform and the
/// flat thread index of [`dispatch_flat`]'s dispatches.
pub const PRELUDE: &str = include_str!("../../shaders/prelude.wgsl");

/// Invocations per workgroup of a one-dimensional dispatch: the prelude's `FLAT_WORKGROUP`.
pub const FLAT_WORKGROUP: u64 = 256;

/// Environment variable that picks an adapter by (case-insensitive) name substring, e.g.
/// `PEPNET_ADAPTER=llvmpipe` for Mesa's lavapipe. wgpu's own `WGPU_BACKEND` also applies.
pub const ADAPTER_ENV: &str = "PEPNET_ADAPTER";

/// Environment variable that, set to `off`, keeps the device from using cooperative matrices
/// (tensor cores) even where it has them: f16 then runs on the f16 SIMT kernels.
pub const COOP_ENV: &str = "PEPNET_COOP";

/// A device, its queue, and every kernel compiled for it.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    /// Optional features the device was opened with (timestamp queries, when the adapter has them).
    pub features: wgpu::Features,
    /// Cooperative-matrix shapes the adapter offers (any types), as `pepnet info` lists them.
    pub coop_offered: Vec<wgpu::CooperativeMatrixProperties>,
    pub gather: gather::GatherKernel,
    pub gather_backward: gather::backward::GatherBackwardKernel,
    pub linear: linear::LinearKernel,
    pub linear_backward: linear::backward::LinearBackwardKernel,
    pub loss: loss::LossKernel,
    pub mmoe_mix: mmoe_mix::MmoeMixKernel,
    pub optimizer: optimizer::OptimizerKernels,
    pub resolve: resolve::ResolveKernel,
    pub scatter: scatter::ScatterKernel,
    /// The first fault the device reported outside an error scope (lost, out of memory, a
    /// failed validation), kept for the next readback to return as an error: wgpu's default
    /// would panic, or a lost device hang a wait.
    faults: Arc<Mutex<Option<String>>>,
}

/// What `pepnet info` shows of an adapter.
#[derive(Debug, Clone)]
pub struct AdapterSummary {
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    /// Cooperative-matrix shapes (tensor cores) the adapter offers.
    pub coop: Vec<wgpu::CooperativeMatrixProperties>,
}

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

/// Every adapter wgpu can see, as `pepnet info` lists them.
pub fn list_adapters() -> Vec<AdapterSummary> {
    let adapters = pollster::block_on(instance().enumerate_adapters(wgpu::Backends::all()));
    adapters
        .into_iter()
        .map(|a| AdapterSummary {
            info: a.get_info(),
            limits: a.limits(),
            features: a.features(),
            coop: a.cooperative_matrix_properties(),
        })
        .collect()
}

impl GpuContext {
    /// Opens a device. `adapter` is a case-insensitive substring of the adapter's name; `None`
    /// reads [`ADAPTER_ENV`], and without it wgpu's high-performance choice is taken.
    pub fn new(adapter: Option<&str>) -> Result<Arc<Self>> {
        let wanted = adapter
            .map(str::to_string)
            .or_else(|| std::env::var(ADAPTER_ENV).ok().filter(|s| !s.is_empty()));
        let instance = instance();
        let adapter = match &wanted {
            Some(name) => {
                let all = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
                let names: Vec<String> = all.iter().map(|a| a.get_info().name).collect();
                all.into_iter()
                    .find(|a| {
                        a.get_info()
                            .name
                            .to_lowercase()
                            .contains(&name.to_lowercase())
                    })
                    .ok_or_else(|| {
                        Error::Gpu(format!(
                            "no adapter whose name contains '{name}'; adapters found: {names:?}"
                        ))
                    })?
            }
            None => pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            }))
            .map_err(|e| {
                Error::Gpu(format!(
                    "no GPU adapter found ({e}); install a Vulkan driver, e.g. Mesa's lavapipe \
                     (Debian: mesa-vulkan-drivers)"
                ))
            })?,
        };
        let info = adapter.get_info();
        // The defaults are far below what hardware offers (storage binding size above all).
        let limits = adapter.limits();
        // Timestamps let `pepnet bench` time each kernel; scoring never needs them. f16 shaders
        // and cooperative matrices run the f16 precision on tensor cores.
        let coop_offered = adapter.cooperative_matrix_properties();
        let coop_wanted = std::env::var(COOP_ENV).map_or(true, |v| v != "off");
        let coop_features =
            wgpu::Features::SHADER_F16 | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        let coop = (coop_wanted && adapter.features().contains(coop_features))
            .then(|| {
                linear::CoopShape::choose(
                    &coop_offered,
                    info.subgroup_min_size,
                    info.subgroup_max_size,
                    &limits,
                )
            })
            .flatten();
        // f16 shaders also let the f16 precision store activations as f16.
        let mut features =
            adapter.features() & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SHADER_F16);
        if coop.is_some() {
            features |= coop_features;
        }
        let descriptor = wgpu::DeviceDescriptor {
            label: Some("pepnet"),
            required_limits: limits.clone(),
            required_features: features,
            // SAFETY: experimental features are enabled only to request cooperative matrices,
            // whose one kernel (linear_coop.wgsl) is tested against its f64 reference on every
            // device that offers them.
            experimental_features: unsafe { wgpu::ExperimentalFeatures::enabled() },
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&descriptor))
            .map_err(|e| Error::Gpu(format!("{}: could not open the device: {e}", info.name)))?;

        let faults: Arc<Mutex<Option<String>>> = Arc::default();
        let record = |faults: &Arc<Mutex<Option<String>>>, fault: String| {
            let mut slot = faults.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert(fault);
        };
        let f = faults.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let fault = match &e {
                wgpu::Error::OutOfMemory { .. } => format!("the device ran out of memory ({e})"),
                _ => format!("the device reported an error: {e}"),
            };
            record(&f, fault);
        }));
        let f = faults.clone();
        device.set_device_lost_callback(move |reason, message| {
            record(&f, format!("the device was lost ({reason:?}): {message}"));
        });
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let gather = gather::GatherKernel::new(&device);
        let linear = linear::LinearKernel::new(&device, coop);
        let gather_backward = gather::backward::GatherBackwardKernel::new(&device);
        let linear_backward = linear::backward::LinearBackwardKernel::new(&device, coop, &limits);
        let loss = loss::LossKernel::new(&device);
        let mmoe_mix = mmoe_mix::MmoeMixKernel::new(&device);
        let optimizer = optimizer::OptimizerKernels::new(&device);
        let resolve = resolve::ResolveKernel::new(&device);
        let scatter = scatter::ScatterKernel::new(&device);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!(
                "{}: could not build the kernels: {e}",
                info.name
            )));
        }
        Ok(Arc::new(Self {
            device,
            queue,
            info,
            limits,
            features,
            coop_offered,
            gather,
            gather_backward,
            linear,
            linear_backward,
            loss,
            mmoe_mix,
            optimizer,
            resolve,
            scatter,
            faults,
        }))
    }

    /// The device's first fault so far, as an error (see `faults`).
    pub fn check_faults(&self) -> Result<()> {
        match &*self.faults.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(fault) => Err(Error::Gpu(format!(
                "{}: {fault}; nothing more can run on it",
                self.info.name
            ))),
            None => Ok(()),
        }
    }

    /// A warning when this device is a slow fallback, with how to get the fast one: OpenGL
    /// (wgpu's last resort when no Vulkan driver is installed, hundreds of times slower), or a
    /// CPU implementation of Vulkan (the right choice only on a machine without a GPU).
    pub fn fallback_warning(&self) -> Option<String> {
        match (self.info.backend, self.info.device_type) {
            (wgpu::Backend::Gl, _) => Some(format!(
                "running on OpenGL ({}): no Vulkan driver was found, and this backend is \
                 hundreds of times slower. Install one (Debian: apt-get install \
                 mesa-vulkan-drivers libvulkan1, or run ./setup.sh), or your GPU's Vulkan \
                 driver",
                self.info.name
            )),
            (_, wgpu::DeviceType::Cpu) => Some(format!(
                "running on {}, a CPU implementation of Vulkan: fine where there is no GPU; on \
                 a machine with one, install its Vulkan driver (check with `pepnet info`)",
                self.info.name
            )),
            _ => None,
        }
    }

    /// The largest byte size one storage binding may have on this device, and at most 4 GiB:
    /// kernels index bindings with u32 offsets.
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
            .min(u32::MAX as u64 & !3)
    }

    /// A storage buffer holding `data` (a zero-length slice gets one word, since bindings
    /// cannot be empty).
    pub fn storage_buffer<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> wgpu::Buffer {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let contents: &[u8] = if bytes.is_empty() { &[0; 4] } else { bytes };
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
            })
    }

    /// A uniform buffer holding `value`.
    pub fn uniform_buffer<T: bytemuck::Pod>(&self, label: &str, value: &T) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::bytes_of(value),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// Submits `encoder` (which must end by copying what is wanted into `staging`, a
    /// MAP_READ buffer) and returns the first `len` f32s of `staging`. Blocks until the GPU is done.
    pub fn submit_and_read(
        &self,
        encoder: wgpu::CommandEncoder,
        staging: &wgpu::Buffer,
        len: usize,
    ) -> Result<Vec<f32>> {
        let submission = self.queue.submit([encoder.finish()]);
        let bytes = self.read_mapped(staging, (len * 4) as u64, Some(submission))?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Waits for `submission` (the latest one if `None`), then copies the first `bytes` of a
    /// MAP_READ buffer to the host. Waiting for one's own submission, not the latest, keeps
    /// threads that score at once from waiting on each other's batches.
    pub fn read_mapped(
        &self,
        staging: &wgpu::Buffer,
        bytes: u64,
        submission: Option<wgpu::SubmissionIndex>,
    ) -> Result<Vec<u8>> {
        self.check_faults()?;
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let slice = staging.slice(..bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: submission,
                timeout: None,
            })
            .map_err(|e| {
                self.check_faults().err().unwrap_or_else(|| {
                    Error::Gpu(format!(
                        "the GPU did not run the work (a lost device or a refused \
                             submission): {e}"
                    ))
                })
            })?;
        let mapped = rx.recv();
        // A fault explains a failed map better than the map's own error does.
        self.check_faults()?;
        mapped
            .map_err(|_| Error::Gpu("the readback was dropped".into()))?
            .map_err(|e| Error::Gpu(format!("mapping the readback buffer: {e}")))?;
        let out = slice
            .get_mapped_range()
            .map_err(|e| Error::Gpu(format!("reading the readback buffer: {e}")))?
            .to_vec();
        staging.unmap();
        Ok(out)
    }

    /// Reads the first `len` f32s of a COPY_SRC buffer (for tests and tools, not hot paths).
    pub fn read_buffer(&self, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
        let staging = self.staging_buffer("readback", (len * 4) as u64);
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, (len * 4) as u64);
        self.submit_and_read(encoder, &staging, len)
    }

    /// A zero-filled storage buffer of `bytes` (wgpu zero-initialises every buffer).
    pub fn zeroed_storage(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    }

    /// A buffer to read results back through.
    pub fn staging_buffer(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }
}

/// Records a dispatch of `threads` one-dimensional invocations in workgroups of
/// [`FLAT_WORKGROUP`], spilling into y past the 65535-workgroup limit of one dimension (the
/// prelude's `flat_index` folds x and y back into one index).
pub(crate) fn dispatch_flat(
    pass: &mut wgpu::ComputePass,
    pipeline: &wgpu::ComputePipeline,
    bind_group: &wgpu::BindGroup,
    threads: u64,
) {
    let groups = threads.div_ceil(FLAT_WORKGROUP).max(1);
    let (x, y) = if groups <= 65535 {
        (groups as u32, 1)
    } else {
        (65535, groups.div_ceil(65535) as u32)
    };
    pass.set_pipeline(pipeline);
    pass.set_bind_group(0, bind_group, &[]);
    pass.dispatch_workgroups(x, y, 1);
}

/// Compiles a WGSL source into a compute pipeline of entry point `main` with an automatic layout.
pub(crate) fn compute_pipeline(
    device: &wgpu::Device,
    label: &str,
    source: &str,
) -> wgpu::ComputePipeline {
    entry_pipelines(device, label, source, &["main"]).remove(0)
}

/// Compiles a WGSL source once into one pipeline per entry point, each with an automatic layout
/// (holding only the bindings that entry point uses).
pub(crate) fn entry_pipelines(
    device: &wgpu::Device,
    label: &str,
    source: &str,
    entry_points: &[&str],
) -> Vec<wgpu::ComputePipeline> {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(label),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    entry_points
        .iter()
        .map(|entry| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            })
        })
        .collect()
}

/// A bind group for `pipeline` (automatic layout) with each buffer bound whole at its binding:
/// for entry points that use only some of a shader's bindings.
pub(crate) fn bind_buffers(
    device: &wgpu::Device,
    pipeline: &wgpu::ComputePipeline,
    label: &str,
    buffers: &[(u32, &wgpu::Buffer)],
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry> = buffers
        .iter()
        .map(|&(binding, b)| wgpu::BindGroupEntry {
            binding,
            resource: b.as_entire_binding(),
        })
        .collect();
    device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(label),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    })
}

/// Bind group entries for buffers bound whole at bindings 0, 1, 2, ...
pub(crate) fn whole_buffers<'a>(buffers: &[&'a wgpu::Buffer]) -> Vec<wgpu::BindGroupEntry<'a>> {
    buffers
        .iter()
        .enumerate()
        .map(|(i, b)| wgpu::BindGroupEntry {
            binding: i as u32,
            resource: b.as_entire_binding(),
        })
        .collect()
}

/// The `Batch` uniform every kernel reads: how many rows this batch has.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BatchParams {
    pub rows: u32,
    pub _pad: [u32; 3],
}
