//! Scores three impressions with `pepnet-core` alone (no file formats, server or async runtime
//! compiled in): load a model directory, open a GPU, build an engine, score a batch.
//!
//! ```sh
//! cargo run --release -p embed-minimal -- examples/kuairand
//! ```
//!
//! It prints the scores as `pepnet score --carry request_id` writes them, for the first three
//! rows of `examples/kuairand/input.csv`, and they are the same bits.

use pepnet_core::{Batch, Column, Engine, EngineOptions, Error, GpuContext, Model, Result};

fn main() -> Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "examples/kuairand".into());
    let model = Model::load(dir.as_ref())?;
    let batch = three_rows(&model)?;
    let ctx = GpuContext::new(None)?;
    // Batch-invariant, as `pepnet score` and `pepnet serve` run: a row's scores do not depend
    // on the batch it is scored in.
    let options = EngineOptions {
        batch_invariant: true,
        ..Default::default()
    };
    let engine = Engine::new(ctx, &model, &options)?;
    let scores = engine.score(&batch)?;
    let tasks = &model.spec.tasks;
    println!("request_id,{}", tasks.join(","));
    for (i, p) in scores.chunks_exact(tasks.len()).enumerate() {
        let p: Vec<String> = p.iter().map(f32::to_string).collect();
        println!("r{i:05},{}", p.join(","));
    }
    Ok(())
}

/// The first three rows of `examples/kuairand/input.csv`, one column per feature in the spec's
/// order (a batch is columnar: ids, lists of ids, or numbers).
fn three_rows(model: &Model) -> Result<Batch> {
    let columns = model
        .spec
        .features
        .iter()
        .map(|f| {
            Ok(match f.name.as_str() {
                "tab" => Column::Sparse(vec![1, 0, 0]),
                "user_id" => Column::Sparse(vec![2, 1, 2]),
                "video_id" => Column::Sparse(vec![26, 3, 3]),
                "author_id" => Column::Sparse(vec![219, 120, 588]),
                "user_active_degree" => Column::Sparse(vec![0, 4, 4]),
                "video_type" => Column::Sparse(vec![0, 1, 3]),
                "tag_ids" => lists(&[&[9, 25], &[37, 25, 3, 14], &[29, 37]]),
                "recent_tag_ids" => lists(&[&[3, 4, 52, 34, 6], &[], &[23, 19, 15]]),
                "log_duration" => Column::Dense(vec![4.889, 3.544, 5.576]),
                "user_tab_ctr" => Column::Dense(vec![0.0383, 0.2383, 0.2404]),
                "video_tab_ctr" => Column::Dense(vec![0.0542, 0.189, 0.1338]),
                other => {
                    return Err(Error::Batch(format!(
                        "this example has no column for feature '{other}'; it scores the \
                         KuaiRand example model"
                    )))
                }
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Batch::new(columns))
}

/// A multi-hot column: each sample's ids.
fn lists(samples: &[&[u64]]) -> Column {
    let mut offsets = vec![0];
    let mut ids = Vec::new();
    for s in samples {
        ids.extend_from_slice(s);
        offsets.push(ids.len());
    }
    Column::MultiHot { offsets, ids }
}
