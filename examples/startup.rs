//! The time from nothing to a first score, as a service starting up pays it: open the GPU,
//! build the engine (upload, buffers, bind groups), score one batch. Kernels compile when first
//! needed, so scoring compiles only the scoring kernels; `--eager` compiles every kernel
//! (training's too) first, as every start did before kernels were compiled lazily.
//!
//!     cargo run --release --example startup [-- MODEL_DIR] [--eager]

use std::time::Instant;

use pepnet::synth::random_batch;
use pepnet::{Engine, EngineOptions, GpuContext, Model};

fn main() -> pepnet::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let eager = args.iter().any(|a| a == "--eager");
    let dir =
        (args.iter().find(|a| !a.starts_with("--"))).map_or("examples/kuairand", String::as_str);
    let model = Model::load(dir.as_ref())?;
    let batch = random_batch(&model.spec, 64, 1);

    let start = Instant::now();
    let ctx = GpuContext::new(None)?;
    if eager {
        ctx.compile_all()?;
    }
    let opened = start.elapsed();
    let engine = Engine::new(ctx.clone(), &model, &EngineOptions::default())?;
    let built = start.elapsed();
    engine.score(&batch)?;
    let scored = start.elapsed();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    println!(
        "{} on {}: device and kernels {:.1} ms, engine {:.1} ms, first score {:.1} ms, \
         total {:.1} ms; kernels compiled: {}",
        if eager { "eager" } else { "lazy" },
        ctx.info.name,
        ms(opened),
        ms(built - opened),
        ms(scored - built),
        ms(scored),
        ctx.compiled_kernels().join(" ")
    );
    Ok(())
}
