//! The gRPC request decoder of `pepnet serve` (`pepnet_serve::grpc::decode`) on arbitrary
//! protobuf bytes (a `ModelInferRequest`), against the fixed fuzz spec. A request it accepts is
//! a valid batch for the spec, its outputs are tasks, and encoding the batch again (typed and
//! raw) decodes to the same batch.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pepnet_serve::grpc;
use pepnet_serve::proto::ModelInferRequest;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let spec = pepnet_fuzz::spec();
    let Ok(message) = ModelInferRequest::decode(data) else {
        return;
    };
    let Ok(request) = grpc::decode(&message, spec) else {
        return;
    };
    request
        .batch
        .validate(spec, "decoded", 1)
        .expect("a decoded request fits the spec");
    assert!(request.outputs.iter().all(|&t| t < spec.n_tasks()));
    for raw in [false, true] {
        let again = grpc::request(spec, "m", &request.batch, request.id.as_deref(), raw);
        let bytes = again.encode_to_vec();
        let message = ModelInferRequest::decode(bytes.as_slice()).expect("protobuf");
        let round = grpc::decode(&message, spec).expect("an encoded batch decodes");
        assert_eq!(round.batch, request.batch, "a batch changed in a round trip (raw {raw})");
    }
});
