//! `pepnet apply-rows`: new rows for hashed features merged into a model directory, or written
//! to the Redis Cluster store that scoring processes read.

use std::path::PathBuf;

use clap::Args;

use pepnet::store::redis::RedisStore;
use pepnet::store::EmbeddingStore;
use pepnet::{Model, Result};

/// Merge a safetensors file of new rows for hashed features (emb.<f>.ids beside emb.<f>)
/// into a model directory, or write them to a store (--store): known ids' rows are replaced,
/// new ids added.
#[derive(Args)]
pub struct ApplyRows {
    /// Model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// The rows file.
    #[arg(long)]
    pub rows: PathBuf,
    /// Where to write the updated model (default: in place, atomically per file).
    #[arg(long, conflicts_with = "store")]
    pub out: Option<PathBuf>,
    /// Write the rows to this store instead of the model directory (which is only read).
    #[command(flatten)]
    pub store: super::StoreFlags,
}

impl ApplyRows {
    pub fn run(self) -> Result<()> {
        let mut model = Model::load(&self.model)?;
        let updates = pepnet::store::read_rows_file(&self.rows, &model.spec)?;
        if let Some(redis) = self.store.redis() {
            let mut store = RedisStore::open(redis.clone(), &model.spec)?;
            let d = model.spec.d();
            let mut refused: Vec<(String, usize, u64)> = Vec::new();
            for (f, update) in &updates {
                let (mut written, mut capped, mut first_capped) = (0, 0, None);
                for (i, &id) in update.ids.iter().enumerate() {
                    match store.put((*f as u32, id), &update.rows[i * d..(i + 1) * d])? {
                        true => written += 1,
                        false => {
                            capped += 1;
                            first_capped.get_or_insert(id);
                        }
                    }
                }
                let name = &model.spec.features[*f].name;
                eprintln!("{name}: {written} rows written, {capped} refused by the update cap");
                if let Some(id) = first_capped {
                    refused.push((name.clone(), capped, id));
                }
            }
            eprintln!(
                "wrote to namespace '{}' on {}",
                redis.namespace,
                redis.nodes.join(",")
            );
            // A write the cap refused did not happen: the caller must know.
            if let Some((name, capped, id)) = refused.first() {
                let policy = store.policy();
                return Err(pepnet::Error::Store(format!(
                    "{}: {capped} row(s) of feature '{name}' (the first: id {id}) were not \
                     written: each id takes at most {} writes per {} s (the namespace's update \
                     policy); the other rows were written",
                    self.rows.display(),
                    policy.max_updates.unwrap_or(u32::MAX),
                    policy.window_secs
                )));
            }
            return Ok(());
        }
        for (f, update) in &updates {
            let name = model.spec.features[*f].name.clone();
            let table = model
                .weights
                .hashed_mut(&name)
                .expect("hashed features have stored rows");
            let (replaced, added) = table.merge(update);
            eprintln!("{name}: {replaced} rows replaced, {added} added");
        }
        let out = self.out.as_ref().unwrap_or(&self.model);
        model.save(out)?;
        eprintln!("wrote {}", out.display());
        Ok(())
    }
}
