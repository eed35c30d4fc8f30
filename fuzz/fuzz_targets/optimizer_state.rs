//! `OptimizerState::from_safetensors`, what `OptimizerState::load` runs on the bytes of a model
//! directory's `optimizer.safetensors`, on arbitrary bytes against the fuzz spec.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pepnet_train::OptimizerState;

fuzz_target!(|data: &[u8]| {
    let spec = pepnet_fuzz::spec();
    if let Ok(state) = OptimizerState::from_safetensors(data, "optimizer.safetensors", spec) {
        state.check(spec).expect("a loaded state passes its own check");
    }
});
