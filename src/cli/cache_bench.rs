//! `pepnet cache-bench`: the embedding cache's hit rates per eviction policy, and scoring
//! throughput through the cache against the same model fully resident.

use clap::Args;

use pepnet::cache::EvictionPolicy;
use pepnet::tools::cache_bench as bench;
use pepnet::Result;

use super::{at_least_one, Adapter, Report};

/// Embedding-cache benchmark: hit rates of the score, LRU and LFU policies on Zipf id
/// streams, and scoring throughput with the cache against the same model fully resident.
#[derive(Args)]
pub struct CacheBench {
    /// Distinct ids of the hit-rate streams (at least 1).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub distinct: u64,
    /// Lookups per stream (the first fifth warms the cache; at least 1).
    #[arg(long, default_value_t = 2_000_000, value_parser = at_least_one())]
    pub lookups: usize,
    /// Ids per batch (at least 1).
    #[arg(long, default_value_t = 4096, value_parser = at_least_one())]
    pub batch: usize,
    /// Skip the GPU throughput part.
    #[arg(long)]
    pub no_throughput: bool,
    /// Throughput: distinct users and items of the model.
    #[arg(long, default_value_t = 20_000, value_parser = at_least_one())]
    pub users: usize,
    #[arg(long, default_value_t = 100_000, value_parser = at_least_one())]
    pub items: usize,
    /// Throughput: timed batches and samples per batch.
    #[arg(long, default_value_t = 8, value_parser = at_least_one())]
    pub batches: usize,
    #[arg(long, default_value_t = 2048, value_parser = at_least_one())]
    pub rows: usize,
    #[command(flatten)]
    pub report: Report,
    #[command(flatten)]
    pub adapter: Adapter,
}

impl CacheBench {
    pub fn run(self) -> Result<()> {
        let (distinct, lookups, batch) = (self.distinct, self.lookups, self.batch);
        let policies = [
            EvictionPolicy::score(),
            EvictionPolicy::Lru,
            EvictionPolicy::Lfu,
        ];
        let shares = [0.01, 0.05, 0.20];
        let rates = bench::hit_rates(
            distinct,
            lookups,
            batch,
            &[0.8, 1.0, 1.2],
            &shares,
            &policies,
        )?;
        println!(
            "hit rates: {distinct} distinct ids, {lookups} Zipf lookups in batches of {batch} (first fifth warms up)"
        );
        println!(
            "{:>8} {:>7} {:>9} {:>10} {:>10} {:>10}",
            "exponent", "cache", "rows", "score", "lru", "lfu"
        );
        for row in rates.chunks(policies.len()) {
            println!(
                "{:>8.1} {:>6.0}% {:>9} {:>9.2}% {:>9.2}% {:>9.2}%",
                row[0].exponent,
                100.0 * row[0].cache_share,
                row[0].capacity_rows,
                100.0 * row[0].hit_rate,
                100.0 * row[1].hit_rate,
                100.0 * row[2].hit_rate
            );
        }
        let mut speeds = Vec::new();
        if !self.no_throughput {
            let (users, items, batches, rows) = (self.users, self.items, self.batches, self.rows);
            let ctx = self.adapter.open()?;
            println!(
                "\nthroughput on {}: {users} users + {items} items, Zipf 1.0, {batches} batches of {rows}",
                ctx.info.name
            );
            speeds =
                bench::throughput(&ctx, users, items, &[0.01, 0.05, 0.20, 1.0], batches, rows)?;
            println!(
                "{:<12} {:>12} {:>9} {:>11} {:>10}",
                "setup", "samples/s", "hit%", "resolve µs", "gather µs"
            );
            let us = |t: Option<f64>| t.map_or("-".to_string(), |t| format!("{t:.0}"));
            for s in &speeds {
                println!(
                    "{:<12} {:>12.0} {:>8.2}% {:>11} {:>10}",
                    s.setup,
                    s.samples_per_s,
                    100.0 * s.hit_rate,
                    us(s.resolve_us),
                    us(s.gather_us)
                );
            }
        }
        self.report
            .write(&serde_json::json!({"hit_rates": rates, "throughput": speeds}))
    }
}
