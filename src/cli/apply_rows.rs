//! `pepnet apply-rows`: new rows for hashed features merged into a model directory.

use std::path::PathBuf;

use clap::Args;

use pepnet::{Model, Result};

/// Merge a safetensors file of new rows for hashed features (emb.<f>.ids beside emb.<f>)
/// into a model directory: known ids' rows are replaced, new ids added.
#[derive(Args)]
pub struct ApplyRows {
    /// Model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// The rows file.
    #[arg(long)]
    pub rows: PathBuf,
    /// Where to write the updated model (default: in place, atomically per file).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl ApplyRows {
    pub fn run(self) -> Result<()> {
        let mut model = Model::load(&self.model)?;
        let updates = pepnet::store::read_rows_file(&self.rows, &model.spec)?;
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
