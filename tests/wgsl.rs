//! Every kernel's WGSL source parses and validates with naga, and every file in `shaders/` is
//! part of one. Needs no GPU.

use std::path::Path;

/// Every kernel's complete source (a kernel may be a shared prelude followed by its own file).
fn sources() -> Vec<(&'static str, &'static str)> {
    use pepnet::gpu::{
        gather, gather_backward, linear, linear_backward, loss, mmoe_mix, optimizer, resolve,
        scatter,
    };
    vec![
        ("gather", gather::SOURCE),
        ("gather_backward", gather_backward::SOURCE),
        ("linear", linear::SOURCE),
        ("linear_backward", linear_backward::SOURCE),
        ("loss", loss::SOURCE),
        ("mmoe_mix", mmoe_mix::SOURCE),
        ("optimizer", optimizer::SOURCE),
        ("resolve", resolve::SOURCE),
        ("scatter", scatter::SOURCE),
    ]
}

#[test]
fn every_kernel_validates() {
    for (name, source) in sources() {
        let module = naga::front::wgsl::parse_str(source)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
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
            sources().iter().any(|(_, s)| s.contains(text.as_str())),
            "{} is in no kernel's source",
            path.display()
        );
        count += 1;
    }
    assert_eq!(
        count, 10,
        "nine kernels and the linear kernels' shared prelude"
    );
}

/// The Rust mirrors of the WGSL structs have the sizes naga lays the WGSL structs out with.
#[test]
fn rust_structs_match_wgsl_layouts() {
    use pepnet::gpu::{
        gather, gather_backward, linear, linear_backward, loss, mmoe_mix, optimizer, resolve,
        scatter, BatchParams,
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
        size_of(linear::SOURCE, "Problem") as usize,
        size_of_val(&linear::ProblemGpu {
            ..bytemuck::Zeroable::zeroed()
        })
    );
    assert_eq!(
        size_of(linear::SOURCE, "Span") as usize,
        std::mem::size_of::<linear::SpanParams>()
    );
    assert_eq!(
        size_of(linear::SOURCE, "Batch") as usize,
        std::mem::size_of::<BatchParams>()
    );
    assert_eq!(
        size_of(gather::SOURCE, "Feature") as usize,
        std::mem::size_of::<gather::FeatureGpu>()
    );
    assert_eq!(
        size_of(gather::SOURCE, "Params") as usize,
        std::mem::size_of::<gather::GatherParams>()
    );
    assert_eq!(
        size_of(mmoe_mix::SOURCE, "Params") as usize,
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
        size_of(linear_backward::SOURCE, "Problem") as usize,
        std::mem::size_of::<linear::ProblemGpu>()
    );
    assert_eq!(
        size_of(linear_backward::SOURCE, "InputGroup") as usize,
        std::mem::size_of::<linear_backward::InputGroupGpu>()
    );
    assert_eq!(
        size_of(linear_backward::SOURCE, "Span") as usize,
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

/// Every entry point fits the 16 KiB of workgroup memory that WebGPU guarantees on any device.
#[test]
fn every_entry_point_fits_16_kib_of_workgroup_memory() {
    for (_, source) in sources() {
        let module = naga::front::wgsl::parse_str(source).unwrap();
        let info = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .unwrap();
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(module.to_ctx()).unwrap();
        for (i, entry) in module.entry_points.iter().enumerate() {
            let used = info.get_entry_point(i);
            let bytes: u32 = module
                .global_variables
                .iter()
                .filter(|(h, g)| g.space == naga::AddressSpace::WorkGroup && !used[*h].is_empty())
                .map(|(_, g)| layouter[g.ty].size)
                .sum();
            assert!(
                bytes <= 16384,
                "{}: {bytes} bytes of workgroup memory",
                entry.name
            );
        }
    }
}
