//! `store::read_rows_file`, the reader of `pepnet apply-rows`' file of new hashed-feature rows,
//! then the merge `apply-rows` does into a model's stored rows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pepnet_core::store::{read_rows_file, EmbeddingStore, MemoryStore};
use pepnet_core::Weights;

fuzz_target!(|data: &[u8]| {
    let spec = pepnet_fuzz::spec();
    let path = pepnet_fuzz::scratch_file("rows.safetensors", data);
    let Ok(updates) = read_rows_file(&path, spec) else {
        return;
    };
    static FRESH: std::sync::OnceLock<Weights> = std::sync::OnceLock::new();
    let mut weights = FRESH.get_or_init(|| Weights::init(spec, 0)).clone();
    for (f, update) in &updates {
        let feature = &spec.features[*f];
        assert!(feature.hashed, "rows for a feature that is not hashed");
        let table = weights
            .hashed_mut(&feature.name)
            .expect("hashed features have stored rows");
        let before = table.ids.len();
        let (replaced, added) = table.merge(update);
        assert_eq!(replaced + added, update.ids.len());
        assert_eq!(table.ids.len(), before + added);
        assert_eq!(table.rows.len(), table.ids.len() * spec.d());
    }
    let store = MemoryStore::from_weights(spec, &weights);
    let total: usize = updates.iter().map(|(_, u)| u.ids.len()).sum();
    assert_eq!(store.len(), total);
});
