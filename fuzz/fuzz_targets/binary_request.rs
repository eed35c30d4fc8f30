//! The HTTP binary tensor data extension's decoder (`pepnet_serve::oip::decode_http` with an
//! `Inference-Header-Content-Length`) on arbitrary bytes, against the fixed fuzz spec. The
//! input's first two bytes are the header length (little-endian), the rest the body: a JSON
//! header, then raw little-endian tensors. A request it accepts is a valid batch for the spec,
//! with one binary flag per output, each output a task; and the JSON request for its batch
//! decodes to the same batch.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pepnet_serve::oip;

fuzz_target!(|data: &[u8]| {
    let Some((length, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let spec = pepnet_fuzz::spec();
    let header_length = u16::from_le_bytes(*length) as usize;
    let Ok(request) = oip::decode_http(body, Some(header_length), spec) else {
        return;
    };
    request
        .batch
        .validate(spec, "decoded", 1)
        .expect("a decoded request fits the spec");
    assert!(request.outputs.iter().all(|&t| t < spec.n_tasks()));
    assert_eq!(request.outputs.len(), request.binary_outputs.len());
    let json = serde_json::to_vec(&oip::request(spec, &request.batch, request.id.as_deref()))
        .expect("JSON");
    let round = oip::decode_http(&json, None, spec).expect("an encoded batch decodes");
    assert_eq!(round.batch, request.batch, "a batch changed in an encode/decode round trip");
});
