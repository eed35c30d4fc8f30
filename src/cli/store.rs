//! `pepnet store`: the embedding store on a Redis Cluster.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use pepnet::store::redis::{self, RowType};
use pepnet::{Model, Result};

/// The embedding store on a Redis Cluster.
#[derive(Args)]
pub struct Store {
    #[command(subcommand)]
    pub command: StoreCommand,
}

#[derive(Subcommand)]
pub enum StoreCommand {
    Load(Load),
    Bench(Bench),
}

/// Time fetching a batch's misses from the store against the in-memory store: random known
/// ids of the model, `--keys` per fetch (a namespace loaded from the same model directory).
#[derive(Args)]
pub struct Bench {
    /// Model directory (loaded into the store's namespace).
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub store: super::StoreFlags,
    /// Keys per fetch.
    #[arg(long, default_value_t = 1024, value_parser = super::at_least_one())]
    pub keys: usize,
    /// Timed fetches.
    #[arg(long, default_value_t = 200, value_parser = super::at_least_one())]
    pub fetches: usize,
    /// Timed writes for the propagation delay (0: skip it). They rewrite existing rows with
    /// their own values, so the namespace's rows do not change.
    #[arg(long, default_value_t = 100)]
    pub writes: usize,
}

/// Bulk-load a model directory's hashed rows into a Redis Cluster namespace, pipelined.
#[derive(Args)]
pub struct Load {
    /// Model directory.
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub store: super::StoreFlags,
    /// How rows are stored: f32, or f16 (half the memory; exact for models scored at f16).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
    pub dtype: String,
    /// The update policy every process scoring from the namespace follows (kept in the store,
    /// so that it holds across them).
    #[command(flatten)]
    pub updates: super::UpdateFlags,
    /// Rows per pipeline (one round trip to every node at once).
    #[arg(long, default_value_t = 2048, value_parser = super::at_least_one())]
    pub chunk: usize,
    /// No progress bar (it is only drawn on a terminal anyway).
    #[arg(long)]
    pub quiet: bool,
}

impl Store {
    pub fn run(self) -> Result<()> {
        match self.command {
            StoreCommand::Load(c) => c.run(),
            StoreCommand::Bench(c) => c.run(),
        }
    }
}

impl Load {
    pub fn run(self) -> Result<()> {
        let options = self.store.redis().ok_or_else(|| {
            pepnet::Error::Store("store load needs --store redis://HOST:PORT[,...]".into())
        })?;
        let model = Model::load(&self.model)?;
        let row_type = RowType::parse(&self.dtype).expect("checked by clap");
        let bar = (!self.quiet).then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} rows {per_sec} eta {eta}",
                )
                .expect("a valid template"),
            );
            bar
        });
        let loaded = redis::load(
            &options,
            &model.spec,
            &model.weights,
            row_type,
            &self.updates.policy(),
            self.chunk,
            &mut |done, total| {
                if let Some(bar) = &bar {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                }
            },
        )?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        eprintln!(
            "loaded {} rows ({}) into namespace '{}' (generation {}) on {} in {:.3} s ({:.0} rows/s)",
            loaded.rows,
            row_type.name(),
            options.namespace,
            loaded.generation,
            options.nodes.join(","),
            loaded.seconds,
            loaded.rows as f64 / loaded.seconds.max(1e-9)
        );
        Ok(())
    }
}

impl Bench {
    pub fn run(self) -> Result<()> {
        use pepnet::store::{EmbeddingStore, Fetched, MemoryStore};
        use rand::{RngExt, SeedableRng};
        let options = self.store.redis().ok_or_else(|| {
            pepnet::Error::Store("store bench needs --store redis://HOST:PORT[,...]".into())
        })?;
        let model = Model::load(&self.model)?;
        let d = model.spec.d();
        let mut memory = MemoryStore::from_weights(&model.spec, &model.weights);
        let mut remote = redis::RedisStore::open(options.clone(), &model.spec)?;
        let keys = memory.keys().unwrap_or_default();
        if keys.is_empty() {
            return Err(pepnet::Error::Store(format!(
                "{} has no hashed rows to fetch",
                self.model.display()
            )));
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let fetches: Vec<Vec<pepnet::store::Key>> = (0..self.fetches + 5)
            .map(|_| {
                (0..self.keys)
                    .map(|_| keys[rng.random_range(0..keys.len())])
                    .collect()
            })
            .collect();
        println!(
            "{} fetches of {} random known rows (d = {d}) from namespace '{}' on {}",
            self.fetches,
            self.keys,
            options.namespace,
            options.nodes.join(",")
        );
        println!(
            "{:<8} {:>10} {:>10} {:>10} {:>12}",
            "store", "p50 ms", "p99 ms", "mean ms", "rows/s"
        );
        let stores: [(&str, &mut dyn EmbeddingStore); 2] =
            [("memory", &mut memory), ("redis", &mut remote)];
        for (name, store) in stores {
            let mut out = vec![0.0f32; self.keys * d];
            let mut found = vec![Fetched::Unknown; self.keys];
            let mut times = Vec::with_capacity(self.fetches);
            for (i, batch) in fetches.iter().enumerate() {
                let start = std::time::Instant::now();
                store.get_many(batch, &mut out, &mut found)?;
                if i >= 5 {
                    times.push(start.elapsed().as_secs_f64());
                }
                if let Some(k) = found.iter().position(|f| *f != Fetched::Row) {
                    return Err(pepnet::Error::Store(format!(
                        "{name}: key {:?} not found; load the model into the namespace first",
                        batch[k]
                    )));
                }
            }
            let total: f64 = times.iter().sum();
            times.sort_by(f64::total_cmp);
            let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize] * 1e3;
            println!(
                "{:<8} {:>10.3} {:>10.3} {:>10.3} {:>12.0}",
                name,
                at(0.5),
                at(0.99),
                total / times.len() as f64 * 1e3,
                (times.len() * self.keys) as f64 / total
            );
        }
        if self.writes > 0 {
            self.propagation(&options, &model, &mut memory, &keys)?;
        }
        Ok(())
    }

    /// The time from a write returning in one process to another process's store being told
    /// of it (the update stream), over `--writes` writes of existing rows.
    fn propagation(
        &self,
        options: &redis::RedisOptions,
        model: &Model,
        memory: &mut pepnet::store::MemoryStore,
        keys: &[pepnet::store::Key],
    ) -> Result<()> {
        use pepnet::store::{EmbeddingStore, Fetched};
        let d = model.spec.d();
        let mut writer = redis::RedisStore::open(options.clone(), &model.spec)?;
        let mut reader = redis::RedisStore::open(options.clone(), &model.spec)?;
        let mut times = Vec::with_capacity(self.writes);
        let mut row = vec![0.0f32; d];
        let mut found = [Fetched::Unknown];
        for i in 0..self.writes {
            let key = keys[i * 7919 % keys.len()];
            memory.get_many(&[key], &mut row, &mut found)?;
            reader.take_changed();
            let start = std::time::Instant::now();
            if !writer.put(key, &row)? {
                return Err(pepnet::Error::Store(
                    "the namespace's update cap refused a write; bench a namespace without one"
                        .into(),
                ));
            }
            let wrote = start.elapsed();
            let seen = loop {
                if reader.take_changed().contains(&key) {
                    break start.elapsed();
                }
                if start.elapsed() > std::time::Duration::from_secs(5) {
                    return Err(pepnet::Error::Store(
                        "a write was not seen on the update stream within 5 s".into(),
                    ));
                }
                std::thread::sleep(std::time::Duration::from_micros(50));
            };
            times.push((wrote.as_secs_f64(), (seen - wrote).as_secs_f64()));
        }
        let quantile = |mut v: Vec<f64>, q: f64| {
            v.sort_by(f64::total_cmp);
            v[((v.len() - 1) as f64 * q) as usize] * 1e3
        };
        let (writes, seen): (Vec<f64>, Vec<f64>) = times.into_iter().unzip();
        println!(
            "\n{} writes: the write (script + stream entry) p50 {:.3} ms, p99 {:.3} ms; \
             seen by another store after it returned: p50 {:.3} ms, p99 {:.3} ms",
            self.writes,
            quantile(writes.clone(), 0.5),
            quantile(writes, 0.99),
            quantile(seen.clone(), 0.5),
            quantile(seen, 0.99)
        );
        Ok(())
    }
}
