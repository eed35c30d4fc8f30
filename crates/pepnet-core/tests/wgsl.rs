//! Every kernel's WGSL source parses and validates with naga, and every file in `shaders/` is
//! part of one. Needs no GPU: the cooperative-matrix kernel is validated here in both of its
//! builds, lavapipe's 8×8×8 and NVIDIA's 16×16×16, whatever device this machine has.

use std::path::Path;

use naga::valid::Capabilities;
use pepnet_core::gpu::act::ActStorage;
use pepnet_core::gpu::linear::CoopShape;

/// The two cooperative-matrix builds: lavapipe's (8×8×8 on 8-wide subgroups) and NVIDIA's
/// tensor cores (16×16×16 on 32-wide subgroups).
const COOP_SHAPES: [CoopShape; 2] = [
    CoopShape {
        size: 8,
        subgroup: 8,
    },
    CoopShape {
        size: 16,
        subgroup: 32,
    },
];

/// Every kernel's complete source (a kernel may be a shared prelude followed by its own file),
/// with the capabilities it needs. Every Vulkan, Metal and D3D12 device has f16 packing
/// (`unpack2x16float`); the cooperative-matrix builds need f16 and cooperative matrices.
fn sources() -> Vec<(String, String, Capabilities)> {
    use pepnet_core::gpu::{
        gather, gather::backward as gather_backward, linear, linear::backward as linear_backward,
        loss, mmoe_mix, optimizer, resolve, scatter,
    };
    let base = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    let mut all: Vec<(String, String, Capabilities)> = [
        ("gather", gather::source(ActStorage::F32)),
        ("gather_backward", gather_backward::SOURCE.to_string()),
        ("linear", linear::source(ActStorage::F32)),
        ("linear_backward", linear_backward::source()),
        ("loss", loss::SOURCE.to_string()),
        ("mmoe_mix", mmoe_mix::source(ActStorage::F32)),
        ("optimizer", optimizer::SOURCE.to_string()),
        ("resolve", resolve::SOURCE.to_string()),
        ("scatter", scatter::SOURCE.to_string()),
    ]
    .into_iter()
    .map(|(name, source)| (name.to_string(), source, base))
    .collect();
    // Over f16 activation storage (f16 scoring): f16 shaders.
    let f16 = base | Capabilities::SHADER_FLOAT16;
    all.extend(
        [
            ("gather f16 act", gather::source(ActStorage::F16)),
            ("linear f16 act", linear::source(ActStorage::F16)),
            ("mmoe_mix f16 act", mmoe_mix::source(ActStorage::F16)),
        ]
        .map(|(name, source)| (name.to_string(), source, f16)),
    );
    for shape in COOP_SHAPES {
        let caps = base | Capabilities::SHADER_FLOAT16 | Capabilities::COOPERATIVE_MATRIX;
        for storage in [ActStorage::F32, ActStorage::F16] {
            all.push((
                format!(
                    "linear coop {0}x{0}x{0} over {1} act",
                    shape.size,
                    storage.name()
                ),
                shape.source(storage),
                caps,
            ));
        }
        all.push((
            format!("linear_backward coop {0}x{0}x{0}", shape.size),
            linear_backward::coop_source(shape),
            caps,
        ));
    }
    all
}

fn validate(
    name: &str,
    source: &str,
    caps: Capabilities,
) -> (naga::Module, naga::valid::ModuleInfo) {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
    (module, info)
}

#[test]
fn every_kernel_validates() {
    for (name, source, caps) in sources() {
        validate(&name, &source, caps);
    }
}

/// Bytes of workgroup memory each entry point of `module` uses.
fn workgroup_bytes(module: &naga::Module, info: &naga::valid::ModuleInfo) -> Vec<(String, u32)> {
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(module.to_ctx()).unwrap();
    module
        .entry_points
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let used = info.get_entry_point(i);
            let bytes = module
                .global_variables
                .iter()
                .filter(|(h, g)| g.space == naga::AddressSpace::WorkGroup && !used[*h].is_empty())
                .map(|(_, g)| layouter[g.ty].size)
                .sum();
            (entry.name.clone(), bytes)
        })
        .collect()
}

/// The host decides where the tensor-core kernel fits from `CoopShape::workgroup_bytes`: it
/// must be what the shader declares.
#[test]
fn coop_workgroup_memory_is_what_the_host_expects() {
    for shape in COOP_SHAPES {
        let source = shape.source(ActStorage::F16);
        let caps = Capabilities::all();
        let (module, info) = validate("coop", &source, caps);
        let bytes = workgroup_bytes(&module, &info);
        let coop = bytes
            .iter()
            .find(|(name, _)| name == "main_coop")
            .unwrap()
            .1;
        assert_eq!(coop, shape.workgroup_bytes(), "{shape:?}");
    }
}

#[test]
fn every_shader_file_is_compiled_into_a_kernel() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "wgsl") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            sources().iter().any(|(_, s, _)| s.contains(text.as_str())),
            "{} is in no kernel's source",
            path.display()
        );
        count += 1;
    }
    assert_eq!(
        count, 16,
        "nine kernels, the prelude every kernel shares, the linear kernels' shared part, the \
         two tensor-core entry points, the f16 rounding and the two activation storages' \
         preludes"
    );
}

/// The Rust mirrors of the WGSL structs have the sizes naga lays the WGSL structs out with.
#[test]
fn rust_structs_match_wgsl_layouts() {
    use pepnet_core::gpu::{
        gather, gather::backward as gather_backward, linear, linear::backward as linear_backward,
        loss, mmoe_mix, optimizer, resolve, scatter, BatchParams,
    };
    let size_of = |source: &str, name: &str| -> u32 {
        let module = naga::front::wgsl::parse_str(source).unwrap();
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(module.to_ctx()).unwrap();
        let (handle, _) = module
            .types
            .iter()
            .find(|(_, t)| t.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no struct {name}"));
        layouter[handle].size
    };
    assert_eq!(
        size_of(&linear::source(ActStorage::F32), "Problem") as usize,
        size_of_val(&linear::ProblemGpu {
            ..bytemuck::Zeroable::zeroed()
        })
    );
    assert_eq!(
        size_of(&linear::source(ActStorage::F32), "Span") as usize,
        std::mem::size_of::<linear::SpanParams>()
    );
    assert_eq!(
        size_of(&linear::source(ActStorage::F32), "Batch") as usize,
        std::mem::size_of::<BatchParams>()
    );
    assert_eq!(
        size_of(&gather::source(ActStorage::F32), "Feature") as usize,
        std::mem::size_of::<gather::FeatureGpu>()
    );
    assert_eq!(
        size_of(&gather::source(ActStorage::F32), "Params") as usize,
        std::mem::size_of::<gather::GatherParams>()
    );
    assert_eq!(
        size_of(&mmoe_mix::source(ActStorage::F32), "Params") as usize,
        std::mem::size_of::<mmoe_mix::MixParams>()
    );
    assert_eq!(
        size_of(optimizer::SOURCE, "Adam") as usize,
        std::mem::size_of::<optimizer::AdamParams>()
    );
    assert_eq!(
        size_of(optimizer::SOURCE, "AdaGrad") as usize,
        std::mem::size_of::<optimizer::AdaGradParams>()
    );
    assert_eq!(
        size_of(resolve::SOURCE, "Params") as usize,
        std::mem::size_of::<resolve::ResolveParams>()
    );
    assert_eq!(
        size_of(scatter::SOURCE, "Params") as usize,
        std::mem::size_of::<scatter::ScatterParams>()
    );
    // The backward reads the forward's problem table: the two WGSL structs must agree.
    assert_eq!(
        size_of(&linear_backward::source(), "Problem") as usize,
        std::mem::size_of::<linear::ProblemGpu>()
    );
    assert_eq!(
        size_of(&linear_backward::source(), "InputGroup") as usize,
        std::mem::size_of::<linear_backward::InputGroupGpu>()
    );
    assert_eq!(
        size_of(&linear_backward::source(), "Span") as usize,
        std::mem::size_of::<linear::SpanParams>()
    );
    assert_eq!(
        size_of(loss::SOURCE, "Params") as usize,
        std::mem::size_of::<loss::LossParams>()
    );
    assert_eq!(
        size_of(gather_backward::SOURCE, "Feature") as usize,
        std::mem::size_of::<gather_backward::FeatureGradGpu>()
    );
    assert_eq!(
        size_of(gather_backward::SOURCE, "Use") as usize,
        std::mem::size_of::<gather_backward::UseGpu>()
    );
    assert_eq!(
        size_of(gather_backward::SOURCE, "Params") as usize,
        std::mem::size_of::<gather_backward::RowGradParams>()
    );
}

/// Every entry point fits the 16 KiB of workgroup memory that WebGPU guarantees on any device,
/// except the tensor-core one, which is built only where the device has room for it.
#[test]
fn every_entry_point_fits_16_kib_of_workgroup_memory() {
    for (name, source, caps) in sources() {
        let (module, info) = validate(&name, &source, caps);
        for (entry, bytes) in workgroup_bytes(&module, &info) {
            assert!(
                entry.ends_with("_coop") || bytes <= 16384,
                "{name} {entry}: {bytes} bytes of workgroup memory"
            );
        }
    }
}
