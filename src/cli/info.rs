//! `pepnet info`: the GPU adapters wgpu sees, with what matters here.

use clap::Args;

use pepnet::Result;

/// List the GPU adapters wgpu sees, with the limits and features that matter here.
#[derive(Args)]
pub struct Info {}

impl Info {
    pub fn run(self) -> Result<()> {
        let adapters = pepnet::gpu::list_adapters();
        if adapters.is_empty() {
            println!("no adapters found; install a Vulkan driver (e.g. Debian's mesa-vulkan-drivers for lavapipe)");
        }
        for (i, a) in adapters.iter().enumerate() {
            let (info, l) = (&a.info, &a.limits);
            println!("[{i}] {}", info.name);
            println!(
                "    backend {:?}, device type {:?}, driver {} {}",
                info.backend, info.device_type, info.driver, info.driver_info
            );
            println!(
                "    max storage binding {} MiB, max buffer {} MiB, storage buffers per stage {}, workgroup storage {} KiB, invocations per workgroup {}",
                l.max_storage_buffer_binding_size >> 20,
                l.max_buffer_size >> 20,
                l.max_storage_buffers_per_shader_stage,
                l.max_compute_workgroup_storage_size >> 10,
                l.max_compute_invocations_per_workgroup
            );
            println!(
                "    subgroup size {}..{}",
                info.subgroup_min_size, info.subgroup_max_size
            );
            let shapes: Vec<String> = a
                .coop
                .iter()
                .map(|p| {
                    format!(
                        "{}x{}x{} {:?}->{:?}",
                        p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type
                    )
                })
                .collect();
            let usable = pepnet::gpu::linear::CoopShape::choose(
                &a.coop,
                info.subgroup_min_size,
                info.subgroup_max_size,
                l,
            );
            println!(
                "    cooperative matrices (tensor cores): {}; f16 runs on {}",
                if shapes.is_empty() {
                    "none".to_string()
                } else {
                    shapes.join(", ")
                },
                match usable {
                    Some(shape) if a.features.contains(wgpu::Features::SHADER_F16) =>
                        format!("f16 coop {0}x{0}x{0}", shape.size),
                    _ => "the f16 SIMT kernels".to_string(),
                }
            );
            let wanted = [
                ("shader-f16", wgpu::Features::SHADER_F16),
                (
                    "cooperative-matrix",
                    wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX,
                ),
                ("subgroup", wgpu::Features::SUBGROUP),
                ("timestamp-query", wgpu::Features::TIMESTAMP_QUERY),
            ];
            let have: Vec<&str> = wanted
                .iter()
                .filter(|(_, f)| a.features.contains(*f))
                .map(|(n, _)| *n)
                .collect();
            println!(
                "    features: {}",
                if have.is_empty() {
                    "none of interest".to_string()
                } else {
                    have.join(", ")
                }
            );
        }
        Ok(())
    }
}
