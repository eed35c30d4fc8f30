//! The GPU side: the device, and one module per WGSL kernel (its pipeline, parameter structs
//! and dispatch arithmetic). Each kernel is compiled once per [`GpuContext`], the first time it
//! is used, and shared by every engine built on it: scoring never compiles the training
//! kernels.

pub mod act;
pub mod gather;
pub mod linear;
pub mod loss;
pub mod mmoe_mix;
pub mod optimizer;
pub mod resolve;
pub mod scatter;

use std::sync::{Arc, Mutex, OnceLock};

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

/// What the tensor-core kernels need of a device.
const COOP_FEATURES: wgpu::Features =
    wgpu::Features::SHADER_F16.union(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);

/// The tensor-core shape to build the linear kernels for on a device with `features` (those of
/// its adapter, or of the device handed over), unless [`COOP_ENV`] is `off`.
fn coop_shape(
    features: wgpu::Features,
    offered: &[wgpu::CooperativeMatrixProperties],
    info: &wgpu::AdapterInfo,
    limits: &wgpu::Limits,
) -> Option<linear::CoopShape> {
    let wanted = std::env::var(COOP_ENV).map_or(true, |v| v != "off");
    (wanted && features.contains(COOP_FEATURES))
        .then(|| {
            linear::CoopShape::choose(
                offered,
                info.subgroup_min_size,
                info.subgroup_max_size,
                limits,
            )
        })
        .flatten()
}

/// A device, its queue, and the kernels compiled for it (each on first use).
pub struct GpuContext {
    /// The device every buffer and pipeline lives on.
    pub device: wgpu::Device,
    /// Its queue: every write and submission goes through it.
    pub queue: wgpu::Queue,
    /// The adapter's name, backend and subgroup sizes.
    pub info: wgpu::AdapterInfo,
    /// The device's limits (binding sizes, workgroup memory...).
    pub limits: wgpu::Limits,
    /// Optional features the device was opened with (timestamp queries, when the adapter has them).
    pub features: wgpu::Features,
    /// Cooperative-matrix shapes the adapter offers (any types), as `pepnet info` lists them.
    pub coop_offered: Vec<wgpu::CooperativeMatrixProperties>,
    /// The tensor-core shape the linear kernels are built for, if the device runs one.
    coop: Option<linear::CoopShape>,
    kernels: Kernels,
    /// The first fault the device reported outside an error scope (lost, out of memory, a
    /// failed validation), or a kernel that did not build, kept for the next readback to
    /// return as an error: wgpu's default would panic, or a lost device hang a wait.
    faults: Arc<Mutex<Option<String>>>,
}

/// Every kernel family, each built the first time it is asked for.
#[derive(Default)]
struct Kernels {
    gather: OnceLock<gather::GatherKernel>,
    gather_backward: OnceLock<gather::backward::GatherBackwardKernel>,
    linear: OnceLock<linear::LinearKernel>,
    linear_backward: OnceLock<linear::backward::LinearBackwardKernel>,
    loss: OnceLock<loss::LossKernel>,
    mmoe_mix: OnceLock<mmoe_mix::MmoeMixKernel>,
    optimizer: OnceLock<optimizer::OptimizerKernels>,
    resolve: OnceLock<resolve::ResolveKernel>,
    scatter: OnceLock<scatter::ScatterKernel>,
}

/// What `pepnet info` shows of an adapter.
#[derive(Debug, Clone)]
pub struct AdapterSummary {
    /// Name, vendor, backend and driver.
    pub info: wgpu::AdapterInfo,
    /// The adapter's best limits.
    pub limits: wgpu::Limits,
    /// Optional features the adapter offers.
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
        let coop = coop_shape(adapter.features(), &coop_offered, &info, &limits);
        // f16 shaders also let the f16 precision store activations as f16.
        let mut features =
            adapter.features() & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SHADER_F16);
        if coop.is_some() {
            features |= COOP_FEATURES;
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
        Self::assemble(device, queue, info, coop_offered, coop, faults)
    }

    /// Adopts a device the host already has (a renderer's, another model's, a shared pool's),
    /// so that pepnet's buffers live on it beside the host's and no second device is opened.
    /// `info` is its adapter's. The device must have the limits pepnet's kernels are written
    /// for (WebGPU's defaults: workgroups of 256 invocations, 16 KiB of workgroup memory, 8
    /// storage buffers a stage); a device below one is refused with an error naming it. Its
    /// optional features are used where present: f16 shaders (f16 activations), timestamp
    /// queries (`pepnet bench`'s per-kernel times). Tensor cores need the adapter's
    /// cooperative-matrix shapes: see [`GpuContext::adopt_from`].
    ///
    /// The host keeps its own error handling: pepnet installs no uncaptured-error or
    /// device-lost callback on an adopted device (it reports its own kernels' build failures).
    ///
    /// ```no_run
    /// # fn main() -> pepnet_core::Result<()> {
    /// let instance = wgpu::Instance::default();
    /// let adapter = pollster::block_on(instance.request_adapter(&Default::default())).unwrap();
    /// let (device, queue) =
    ///     pollster::block_on(adapter.request_device(&Default::default())).unwrap();
    /// let ctx = pepnet_core::GpuContext::adopt(device, queue, adapter.get_info())?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn adopt(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
    ) -> Result<Arc<Self>> {
        Self::adopt_with(device, queue, info, Vec::new())
    }

    /// As [`GpuContext::adopt`], reading the adapter's info and cooperative-matrix shapes from
    /// `adapter` (the one `device` was requested from), so that f16 runs on tensor cores when
    /// the device was opened with `SHADER_F16 | EXPERIMENTAL_COOPERATIVE_MATRIX`.
    pub fn adopt_from(
        adapter: &wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
    ) -> Result<Arc<Self>> {
        let coop = adapter.cooperative_matrix_properties();
        Self::adopt_with(device, queue, adapter.get_info(), coop)
    }

    fn adopt_with(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
        coop_offered: Vec<wgpu::CooperativeMatrixProperties>,
    ) -> Result<Arc<Self>> {
        let limits = device.limits();
        check_limits(&limits).map_err(|missing| {
            Error::Gpu(format!(
                "{}: the device handed to pepnet has {missing}",
                info.name
            ))
        })?;
        let coop = coop_shape(device.features(), &coop_offered, &info, &limits);
        Self::assemble(device, queue, info, coop_offered, coop, Arc::default())
    }

    fn assemble(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
        coop_offered: Vec<wgpu::CooperativeMatrixProperties>,
        coop: Option<linear::CoopShape>,
        faults: Arc<Mutex<Option<String>>>,
    ) -> Result<Arc<Self>> {
        let ctx = Self {
            limits: device.limits(),
            features: device.features(),
            device,
            queue,
            info,
            coop_offered,
            coop,
            kernels: Kernels::default(),
            faults,
        };
        // The kernels every model scores with, built now so that a device that cannot build
        // them fails here, naming itself, rather than at the first batch.
        ctx.linear();
        ctx.gather();
        ctx.check_faults()?;
        Ok(Arc::new(ctx))
    }

    /// Builds a kernel family inside a validation scope; a failure is kept as the device's
    /// fault, which the next readback (or [`GpuContext::check_faults`]) returns.
    fn build<T>(&self, what: &str, build: impl FnOnce(&wgpu::Device) -> T) -> T {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let kernel = build(&self.device);
        if let Some(e) = pollster::block_on(scope.pop()) {
            let mut slot = self.faults.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert(format!("could not build the {what} kernel: {e}"));
        }
        kernel
    }

    /// The gather kernel (scoring and training).
    pub fn gather(&self) -> &gather::GatherKernel {
        (self.kernels.gather).get_or_init(|| self.build("gather", gather::GatherKernel::new))
    }

    /// The linear kernels (scoring and training).
    pub fn linear(&self) -> &linear::LinearKernel {
        (self.kernels.linear)
            .get_or_init(|| self.build("linear", |d| linear::LinearKernel::new(d, self.coop)))
    }

    /// The MMoE mix kernel (models with experts).
    pub fn mmoe_mix(&self) -> &mmoe_mix::MmoeMixKernel {
        (self.kernels.mmoe_mix).get_or_init(|| self.build("MMoE mix", mmoe_mix::MmoeMixKernel::new))
    }

    /// The cache's id lookup (models with hashed features).
    pub fn resolve(&self) -> &resolve::ResolveKernel {
        (self.kernels.resolve).get_or_init(|| self.build("resolve", resolve::ResolveKernel::new))
    }

    /// The cache's row and index writes (models with hashed features).
    pub fn scatter(&self) -> &scatter::ScatterKernel {
        (self.kernels.scatter).get_or_init(|| self.build("scatter", scatter::ScatterKernel::new))
    }

    /// The gather's backward (training only).
    pub fn gather_backward(&self) -> &gather::backward::GatherBackwardKernel {
        (self.kernels.gather_backward).get_or_init(|| {
            self.build(
                "gather backward",
                gather::backward::GatherBackwardKernel::new,
            )
        })
    }

    /// The linear kernels' backward (training only).
    pub fn linear_backward(&self) -> &linear::backward::LinearBackwardKernel {
        (self.kernels.linear_backward).get_or_init(|| {
            self.build("linear backward", |d| {
                linear::backward::LinearBackwardKernel::new(d, self.coop, &self.limits)
            })
        })
    }

    /// The loss kernel (training only).
    pub fn loss(&self) -> &loss::LossKernel {
        (self.kernels.loss).get_or_init(|| self.build("loss", loss::LossKernel::new))
    }

    /// The optimizers (training only).
    pub fn optimizer(&self) -> &optimizer::OptimizerKernels {
        (self.kernels.optimizer)
            .get_or_init(|| self.build("optimizer", optimizer::OptimizerKernels::new))
    }

    /// Builds every kernel family now, training's included (each is otherwise built the first
    /// time it is used): for a process that wants no compilation after start-up. Fails naming
    /// the kernel that did not build.
    pub fn compile_all(&self) -> Result<()> {
        self.gather();
        self.linear();
        self.mmoe_mix();
        self.resolve();
        self.scatter();
        self.gather_backward();
        self.linear_backward();
        self.loss();
        self.optimizer();
        self.check_faults()
    }

    /// Which kernel families have been compiled so far, by name: what a caller paid for at
    /// start-up (scoring builds no training kernel).
    pub fn compiled_kernels(&self) -> Vec<&'static str> {
        let k = &self.kernels;
        [
            ("gather", k.gather.get().is_some()),
            ("linear", k.linear.get().is_some()),
            ("mmoe_mix", k.mmoe_mix.get().is_some()),
            ("resolve", k.resolve.get().is_some()),
            ("scatter", k.scatter.get().is_some()),
            ("gather_backward", k.gather_backward.get().is_some()),
            ("linear_backward", k.linear_backward.get().is_some()),
            ("loss", k.loss.get().is_some()),
            ("optimizer", k.optimizer.get().is_some()),
        ]
        .into_iter()
        .filter_map(|(name, built)| built.then_some(name))
        .collect()
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

/// The limits pepnet's kernels are written for (WebGPU's defaults), each as (name, the
/// device's, the least needed); `Err` names the first one short, with both values.
pub fn check_limits(limits: &wgpu::Limits) -> std::result::Result<(), String> {
    let need = wgpu::Limits::default();
    let checks = [
        (
            "max_compute_invocations_per_workgroup",
            limits.max_compute_invocations_per_workgroup,
            need.max_compute_invocations_per_workgroup,
        ),
        (
            "max_compute_workgroup_size_x",
            limits.max_compute_workgroup_size_x,
            need.max_compute_workgroup_size_x,
        ),
        (
            "max_compute_workgroup_size_y",
            limits.max_compute_workgroup_size_y,
            16,
        ),
        (
            "max_compute_workgroup_storage_size",
            limits.max_compute_workgroup_storage_size,
            need.max_compute_workgroup_storage_size,
        ),
        (
            "max_compute_workgroups_per_dimension",
            limits.max_compute_workgroups_per_dimension,
            need.max_compute_workgroups_per_dimension,
        ),
        (
            "max_storage_buffers_per_shader_stage",
            limits.max_storage_buffers_per_shader_stage,
            need.max_storage_buffers_per_shader_stage,
        ),
        (
            "max_uniform_buffers_per_shader_stage",
            limits.max_uniform_buffers_per_shader_stage,
            2,
        ),
    ];
    match checks.iter().find(|(_, have, need)| have < need) {
        Some((name, have, need)) => Err(format!(
            "{name} = {have}, and pepnet's kernels need at least {need}; request the device \
             with at least wgpu::Limits::default() (or the adapter's own limits)"
        )),
        None => Ok(()),
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
    /// Samples in the batch.
    pub rows: u32,
    /// Padding to a 16-byte uniform.
    pub _pad: [u32; 3],
}
