//! Training through the library API: a fresh model from a spec, batches of labelled samples fed
//! to a GPU trainer, the loss read back now and then, and the trained model scored in memory.
//! The data here is the synthetic process of `pepnet gen-data` (docs/data.md).
//!
//!     cargo run --release --example train_model [-- SPEC.json]

use pepnet::train::{LabelledData, Trainer, TrainerOptions};
use pepnet::{Engine, EngineOptions, GpuContext, Model, ModelSpec};

fn main() -> pepnet::Result<()> {
    let spec_path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "examples/kuairand/model.json".into());
    let spec = ModelSpec::load(spec_path.as_ref())?;
    let model = Model::init(spec.clone(), 0).unwrap();

    // 8 192 labelled impressions, written and read back as `pepnet train` would.
    let dir = tempfile::tempdir().map_err(|source| pepnet::Error::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    let file = dir.path().join("train.csv");
    pepnet::datagen::write(&spec, 8192, 0, 1, &file)?;
    let data = LabelledData::read(&file, &spec, &spec.tasks)?;

    let ctx = GpuContext::new(None)?;
    println!("adapter: {}", ctx.info.name);
    let options = TrainerOptions {
        batch_size: 512,
        ..Default::default()
    };
    let mut trainer = Trainer::new(ctx.clone(), &model, None, &options)?;
    let t = spec.n_tasks();
    for epoch in 1..=3 {
        // In file order here; `pepnet::train::train` shuffles each epoch.
        for start in (0..data.len()).step_by(options.batch_size) {
            let end = (start + options.batch_size).min(data.len());
            let batch = data.batch.slice(start..end);
            trainer.step(&batch, &data.labels[start * t..end * t])?;
        }
        // Steps are submitted without waiting; reading the losses waits for them.
        let losses = trainer.losses()?;
        let mean = losses.iter().sum::<f32>() / losses.len() as f32;
        println!("epoch {epoch}: {} steps, mean loss {mean:.4}", losses.len());
    }

    // The trained model serves straight away.
    let trained = trainer.model()?;
    let engine = Engine::new(ctx, &trained, &EngineOptions::default())?;
    let scores = engine.score(&data.batch.slice(0..3))?;
    for (i, sample) in scores.chunks(t).enumerate() {
        println!("sample {i}: {:?}", sample);
    }
    Ok(())
}
