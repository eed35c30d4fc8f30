//! The Open Inference Protocol request decoder of `pepnet serve` (`pepnet_serve::oip::decode`)
//! on arbitrary bytes, against the fixed fuzz spec. A request it accepts is a valid batch for
//! the spec, its outputs are tasks, and encoding the batch again decodes to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pepnet_serve::oip;

fuzz_target!(|data: &[u8]| {
    let spec = pepnet_fuzz::spec();
    let Ok(request) = oip::decode(data, spec) else {
        return;
    };
    request
        .batch
        .validate(spec, "decoded", 1)
        .expect("a decoded request fits the spec");
    assert!(request.outputs.iter().all(|&t| t < spec.n_tasks()));
    let again = serde_json::to_vec(&oip::request(spec, &request.batch, request.id.as_deref()))
        .expect("JSON");
    let round = oip::decode(&again, spec).expect("an encoded batch decodes");
    assert_eq!(round.batch, request.batch, "a batch changed in an encode/decode round trip");
});
