//! The engine as a host service embeds it: on a device the host opened and hands over, scored
//! through the async API on no particular runtime, with only the scoring kernels compiled.

use std::sync::Arc;

use pepnet_core::synth::random_batch;
use pepnet_core::{Engine, EngineOptions, GpuContext, Model};

fn model() -> Model {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/kuairand");
    Model::load(&dir).unwrap()
}

/// The host's own device on the adapter pepnet would pick, with `limits`.
fn host_device(limits: wgpu::Limits) -> (wgpu::Adapter, wgpu::Device, wgpu::Queue) {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }))
    .expect("an adapter");
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("host"),
        required_limits: limits,
        ..Default::default()
    }))
    .expect("a device");
    (adapter, device, queue)
}

#[test]
fn an_adopted_device_scores_as_pepnets_own() {
    let model = model();
    let batch = random_batch(&model.spec, 97, 11);
    let options = EngineOptions {
        batch_invariant: true,
        ..Default::default()
    };
    let own = Engine::new(GpuContext::new(None).unwrap(), &model, &options).unwrap();
    let (adapter, device, queue) = host_device(wgpu::Limits::default());
    let ctx = GpuContext::adopt_from(&adapter, device, queue).unwrap();
    let adopted = Engine::new(ctx.clone(), &model, &options).unwrap();
    let (a, b) = (own.score(&batch).unwrap(), adopted.score(&batch).unwrap());
    assert_eq!(a.len(), 97 * model.spec.n_tasks());
    assert!(
        a.iter().any(|&p| p != a[0]),
        "scores differ between samples"
    );
    assert_eq!(
        a.iter().map(|p| p.to_bits()).collect::<Vec<_>>(),
        b.iter().map(|p| p.to_bits()).collect::<Vec<_>>()
    );
    // The host's device stays the host's: it can still run its own work.
    let buffer = ctx.storage_buffer("host", &[1.0f32, 2.0, 3.0]);
    assert_eq!(ctx.read_buffer(&buffer, 3).unwrap(), vec![1.0, 2.0, 3.0]);
}

#[test]
fn a_device_below_the_kernels_limits_is_refused_naming_the_limit() {
    let (adapter, device, queue) = host_device(wgpu::Limits {
        max_compute_workgroup_storage_size: 8192,
        ..Default::default()
    });
    let err = GpuContext::adopt(device, queue, adapter.get_info())
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("max_compute_workgroup_storage_size = 8192")
            && err.contains("need at least 16384"),
        "{err}"
    );
}

#[test]
fn scoring_compiles_no_training_kernel() {
    let model = model();
    let ctx = GpuContext::new(None).unwrap();
    let engine = Engine::new(ctx.clone(), &model, &EngineOptions::default()).unwrap();
    engine
        .score(&random_batch(&model.spec, 5, 3))
        .expect("scores");
    let compiled = ctx.compiled_kernels();
    assert!(
        compiled.contains(&"linear") && compiled.contains(&"gather"),
        "{compiled:?}"
    );
    for training in ["gather_backward", "linear_backward", "loss", "optimizer"] {
        assert!(
            !compiled.contains(&training),
            "{training} compiled: {compiled:?}"
        );
    }
    // A training kernel asked for is built then.
    ctx.loss();
    assert!(ctx.compiled_kernels().contains(&"loss"));
}

#[test]
fn async_scores_equal_blocking_scores_on_no_particular_runtime() {
    let model = model();
    let options = EngineOptions {
        workspaces: 2,
        max_batch: 64,
        ..Default::default()
    };
    let engine = Arc::new(Engine::new(GpuContext::new(None).unwrap(), &model, &options).unwrap());
    let batches: Vec<_> = (0..6)
        .map(|i| random_batch(&model.spec, 1 + 37 * i, i as u64))
        .collect();
    let blocking: Vec<Vec<f32>> = batches.iter().map(|b| engine.score(b).unwrap()).collect();
    // All in flight at once, then awaited (pollster is an executor of one thread).
    let futures: Vec<_> = batches
        .iter()
        .map(|b| engine.score_async(b.clone()))
        .collect();
    for (future, expected) in futures.into_iter().zip(&blocking) {
        let scores = pollster::block_on(future).unwrap();
        assert_eq!(&scores, expected);
    }
    // A batch that does not fit the model fails through the future, naming the sample.
    let mut bad = batches[0].clone();
    bad.columns.pop();
    let err = engine.score_async(bad).wait().unwrap_err().to_string();
    assert!(err.contains("batch"), "{err}");
}

#[test]
fn the_engine_and_its_futures_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send + 'static>() {}
    send_sync::<Engine>();
    send_sync::<GpuContext>();
    send_sync::<pepnet_core::Batcher>();
    // Awaitable from a task any multi-threaded runtime may move between threads.
    send::<pepnet_core::Scoring>();
    send::<pepnet_core::batcher::Pending>();
}
