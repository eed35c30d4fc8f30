//! `Weights::from_safetensors` against the fixed fuzz spec (plain, multi-hot, dense and hashed
//! features); for weights it accepts, a write/read round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pepnet_core::Weights;

fuzz_target!(|data: &[u8]| {
    let spec = pepnet_fuzz::spec();
    let Ok(weights) = Weights::from_safetensors(data, "fuzz.safetensors", spec) else {
        return;
    };
    for (name, t) in weights.iter() {
        assert_eq!(t.data.len(), t.shape.iter().product::<usize>(), "{name}");
    }
    for f in spec.features.iter().filter(|f| f.hashed) {
        let h = weights.hashed(&f.name).expect("a hashed feature has its rows");
        assert_eq!(h.rows.len(), h.ids.len() * spec.d());
    }
    let _ = pepnet_core::store::MemoryStore::from_weights(spec, &weights);
    let bytes = weights.to_safetensors();
    let again = Weights::from_safetensors(&bytes, "again.safetensors", spec)
        .expect("the crate reads what it writes");
    assert_eq!(again, weights);
});
