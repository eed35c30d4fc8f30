//! `pepnet serve --grpc` end to end, through a real gRPC client (tonic, over HTTP/2 on
//! loopback): the Open Inference Protocol's `inference.GRPCInferenceService`; scores equal to
//! `pepnet score` bit for bit with typed and raw contents at any concurrency; every kind of
//! malformed request an INVALID_ARGUMENT naming the tensor; overload a RESOURCE_EXHAUSTED the
//! server recovers from; a client's deadline honoured.

mod common;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tonic::transport::Channel;
use tonic::Code;

use common::server::*;
use pepnet::serve::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use pepnet::serve::proto::{
    InferTensorContents, ModelInferRequest, ModelInferResponse, ModelMetadataRequest,
    ModelReadyRequest, ServerLiveRequest, ServerReadyRequest,
};
use pepnet::ModelSpec;

type Client = GrpcInferenceServiceClient<Channel>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn client(server: &Server) -> Client {
    GrpcInferenceServiceClient::connect(server.grpc.clone())
        .await
        .expect("the gRPC listener accepts")
}

fn spec() -> ModelSpec {
    ModelSpec::load(&Path::new(MODEL).join("model.json")).unwrap()
}

/// The gRPC request for the example's `rows`: the HTTP request's batch (decoded by the
/// library) re-encoded as protobuf tensors, typed or raw.
fn grpc_request(
    spec: &ModelSpec,
    metadata: &Value,
    header: &[String],
    rows: &[Vec<String>],
    raw: bool,
) -> ModelInferRequest {
    let body = serde_json::to_vec(&request(metadata, header, rows)).unwrap();
    let batch = pepnet::serve::oip::decode(&body, spec).unwrap().batch;
    pepnet::serve::grpc::request(spec, "pepnet", &batch, Some("t"), raw)
}

/// The position of input tensor `name` in `r`.
fn index(r: &ModelInferRequest, name: &str) -> usize {
    r.inputs.iter().position(|i| i.name == name).unwrap()
}

/// Input tensor `name` of `r`.
fn input<'a>(
    r: &'a mut ModelInferRequest,
    name: &str,
) -> &'a mut pepnet::serve::proto::model_infer_request::InferInputTensor {
    let i = index(r, name);
    &mut r.inputs[i]
}

/// Takes input tensor `name`'s contents out of `r`.
fn contents(r: &mut ModelInferRequest, name: &str) -> InferTensorContents {
    let i = index(r, name);
    r.inputs[i].contents.take().unwrap()
}

fn http_metadata(server: &Server) -> Value {
    let (_, text) = get(&format!("{}/v2/models/pepnet", server.url));
    serde_json::from_str(&text).unwrap()
}

/// Every output's values, read from `contents` or from the raw bytes.
fn outputs(answer: &ModelInferResponse) -> Vec<(String, Vec<f32>)> {
    answer
        .outputs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            assert_eq!(o.datatype, "FP32");
            let values: Vec<f32> = match answer.raw_output_contents.get(i) {
                Some(bytes) => bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                None => o.contents.as_ref().unwrap().fp32_contents.clone(),
            };
            assert_eq!(o.shape, [values.len() as i64]);
            (o.name.clone(), values)
        })
        .collect()
}

#[test]
fn grpc_scores_equal_pepnet_score_bit_for_bit_typed_and_raw() {
    let dir = tempfile::tempdir().unwrap();
    let expected = score_file(dir.path());
    let spec = spec();
    let server = Server::start(&["--max-delay-ms", "3"]);
    let metadata = http_metadata(&server);
    let (header, rows) = rows();
    let rt = runtime();
    let sent = rt.block_on(async {
        let mut c = client(&server).await;
        let live = c.server_live(ServerLiveRequest {}).await.unwrap();
        assert!(live.into_inner().live);
        assert!(
            c.server_ready(ServerReadyRequest {})
                .await
                .unwrap()
                .into_inner()
                .ready
        );
        let ready = c
            .model_ready(ModelReadyRequest {
                name: "pepnet".into(),
                version: "1".into(),
            })
            .await
            .unwrap();
        assert!(ready.into_inner().ready);
        let m = c
            .model_metadata(ModelMetadataRequest {
                name: "pepnet".into(),
                version: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        // The same tensors as the HTTP metadata lists.
        let http: Vec<(String, String)> = metadata["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["name"].as_str().unwrap().into(),
                    i["datatype"].as_str().unwrap().into(),
                )
            })
            .collect();
        let grpc: Vec<(String, String)> = m
            .inputs
            .iter()
            .map(|i| (i.name.clone(), i.datatype.clone()))
            .collect();
        assert_eq!(grpc, http);
        assert_eq!(m.outputs.len(), spec.tasks.len());
        assert_eq!(m.versions, ["1"]);

        let mut sent = 0;
        for (raw, concurrency) in [(false, 1), (true, 1), (false, 8), (true, 8)] {
            // Requests of 1 to 37 rows, sent by `concurrency` clients at once.
            let mut chunks = Vec::new();
            let (mut at, mut size) = (0, 1);
            while at < rows.len() {
                let end = (at + size).min(rows.len());
                chunks.push(at..end);
                at = end;
                size = size * 7 % 37 + 1;
            }
            sent += chunks.len();
            let mut tasks = Vec::new();
            for k in 0..concurrency {
                let mut c = c.clone();
                let mine: Vec<_> = chunks
                    .iter()
                    .skip(k)
                    .step_by(concurrency)
                    .cloned()
                    .collect();
                let requests: Vec<_> = mine
                    .iter()
                    .map(|r| grpc_request(&spec, &metadata, &header, &rows[r.clone()], raw))
                    .collect();
                tasks.push(tokio::spawn(async move {
                    let mut answers = Vec::new();
                    for (range, request) in mine.into_iter().zip(requests) {
                        let answer = c.model_infer(request).await.unwrap().into_inner();
                        answers.push((range, answer));
                    }
                    answers
                }));
            }
            for task in tasks {
                for (range, answer) in task.await.unwrap() {
                    assert_eq!(
                        (answer.id.as_str(), answer.model_version.as_str()),
                        ("t", "1")
                    );
                    assert_eq!(answer.raw_output_contents.is_empty(), !raw);
                    for (t, (name, values)) in outputs(&answer).into_iter().enumerate() {
                        assert_eq!(name, spec.tasks[t]);
                        assert_eq!(values.len(), range.len());
                        for (k, got) in values.into_iter().enumerate() {
                            let want = expected[range.start + k][t];
                            assert_eq!(
                                got.to_bits(),
                                want.to_bits(),
                                "row {}, task {name}: served {got}, scored {want} (raw {raw}, \
                                 concurrency {concurrency})",
                                range.start + k + 1
                            );
                        }
                    }
                }
            }
        }
        sent
    });
    let (_, metrics) = get(&format!("{}/metrics", server.url));
    assert!(
        metrics.contains(&format!(
            "pepnet_requests_total{{protocol=\"grpc\",code=\"OK\"}} {sent}\n"
        )),
        "{metrics}"
    );
}

/// Every kind of malformed request is an INVALID_ARGUMENT naming the tensor (and element) and
/// the rule, an unknown model or version a NOT_FOUND; the server answers the next good request.
#[test]
fn malformed_grpc_requests_are_invalid_argument_naming_the_tensor() {
    let spec = spec();
    let server = Server::start(&[]);
    let metadata = http_metadata(&server);
    let (header, rows) = rows();
    let good = grpc_request(&spec, &metadata, &header, &rows[..2], false);
    let good_raw = grpc_request(&spec, &metadata, &header, &rows[..2], true);
    type Edit = Box<dyn Fn(&mut ModelInferRequest)>;
    let cases: Vec<(&str, bool, Edit, Code, &[&str])> = vec![
        (
            "unknown tensor",
            false,
            Box::new(|r| r.inputs[0].name = "nope".into()),
            Code::InvalidArgument,
            &["'nope'", "the model's inputs are"],
        ),
        (
            "missing tensor",
            false,
            Box::new(|r| {
                let i = index(r, "video_type");
                r.inputs.remove(i);
            }),
            Code::InvalidArgument,
            &["'video_type' is missing"],
        ),
        (
            "elements in the wrong field",
            false,
            Box::new(|r| input(r, "user_id").datatype = "FP32".into()),
            Code::InvalidArgument,
            &[
                "'user_id'",
                "contents.fp32_contents",
                "contents.int64_contents",
            ],
        ),
        (
            "a datatype pepnet does not read",
            false,
            Box::new(|r| input(r, "log_duration").datatype = "BYTES".into()),
            Code::InvalidArgument,
            &["'log_duration'", "datatype BYTES"],
        ),
        (
            "NaN",
            false,
            Box::new(|r| {
                let mut c = contents(r, "log_duration");
                c.fp32_contents[1] = f32::NAN;
                input(r, "log_duration").contents = Some(c);
            }),
            Code::InvalidArgument,
            &["'log_duration', element 1", "finite"],
        ),
        (
            "id out of the vocabulary",
            false,
            Box::new(|r| {
                let mut c = contents(r, "video_type");
                c.int64_contents[0] = 4;
                input(r, "video_type").contents = Some(c);
            }),
            Code::InvalidArgument,
            &["video_type", "sample 1"],
        ),
        (
            "negative id",
            false,
            Box::new(|r| {
                let mut c = contents(r, "author_id");
                c.int64_contents[1] = -3;
                input(r, "author_id").contents = Some(c);
            }),
            Code::InvalidArgument,
            &["'author_id', element 1", "negative"],
        ),
        (
            "negative dimension",
            false,
            Box::new(|r| r.inputs[1].shape = vec![-2]),
            Code::InvalidArgument,
            &["negative dimension"],
        ),
        (
            "shape and elements disagree",
            false,
            Box::new(|r| r.inputs[1].shape = vec![3]),
            Code::InvalidArgument,
            &["shape [3] does not match its 2 values"],
        ),
        (
            "lengths that do not add up",
            false,
            Box::new(|r| {
                let mut c = contents(r, "tag_ids.lengths");
                c.int_contents[0] += 1;
                input(r, "tag_ids.lengths").contents = Some(c);
            }),
            Code::InvalidArgument,
            &["'tag_ids.lengths' counts"],
        ),
        (
            "unknown output",
            false,
            Box::new(|r| {
                r.outputs.push(
                    pepnet::serve::proto::model_infer_request::InferRequestedOutputTensor {
                        name: "dwell".into(),
                        ..Default::default()
                    },
                )
            }),
            Code::InvalidArgument,
            &["unknown output 'dwell'"],
        ),
        (
            "raw entries fewer than inputs",
            true,
            Box::new(|r| {
                r.raw_input_contents.pop();
            }),
            Code::InvalidArgument,
            &["raw_input_contents has"],
        ),
        (
            "raw bytes not whole elements",
            true,
            Box::new(|r| {
                let i = index(r, "user_id");
                let mut bytes = r.raw_input_contents[i].to_vec();
                bytes.push(0);
                r.raw_input_contents[i] = bytes.into();
            }),
            Code::InvalidArgument,
            &["'user_id'", "not a whole number of INT64 elements"],
        ),
        (
            "both contents and raw",
            true,
            Box::new(|r| {
                input(r, "tab").contents = Some(InferTensorContents {
                    int64_contents: vec![0, 1],
                    ..Default::default()
                })
            }),
            Code::InvalidArgument,
            &["'tab' has both contents and raw_input_contents"],
        ),
        (
            "unknown model",
            false,
            Box::new(|r| r.model_name = "other".into()),
            Code::NotFound,
            &["unknown model 'other'"],
        ),
        (
            "unknown version",
            false,
            Box::new(|r| r.model_version = "9".into()),
            Code::NotFound,
            &["version '9' is not served"],
        ),
    ];
    let rt = runtime();
    rt.block_on(async {
        let mut c = client(&server).await;
        for (what, raw, edit, code, needles) in &cases {
            let mut request = if *raw { good_raw.clone() } else { good.clone() };
            edit(&mut request);
            let status = c.model_infer(request).await.expect_err(what);
            assert_eq!(status.code(), *code, "{what}: {}", status.message());
            for needle in *needles {
                assert!(
                    status.message().contains(needle),
                    "{what}: '{}' lacks '{needle}'",
                    status.message()
                );
            }
        }
        // The server is unharmed.
        for request in [good, good_raw] {
            c.model_infer(request).await.unwrap();
        }
    });
    let (_, metrics) = get(&format!("{}/metrics", server.url));
    assert!(
        metrics.contains("pepnet_requests_total{protocol=\"grpc\",code=\"INVALID_ARGUMENT\"} 14\n"),
        "{metrics}"
    );
}

/// A full queue is RESOURCE_EXHAUSTED at once and the server recovers; a client's deadline
/// (`grpc-timeout`) shorter than the batching delay is DEADLINE_EXCEEDED from the server.
#[test]
fn grpc_overload_and_deadlines() {
    let spec = spec();
    let server = Server::start(&[
        "--max-delay-ms",
        "400",
        "--max-queued-rows",
        "4",
        "--in-flight",
        "1",
        "--timeout-ms",
        "20000",
    ]);
    let metadata = http_metadata(&server);
    let (header, rows) = rows();
    let three = grpc_request(&spec, &metadata, &header, &rows[..3], false);
    let rt = runtime();
    rt.block_on(async {
        let c = client(&server).await;
        let first = {
            let (mut c, three) = (c.clone(), three.clone());
            tokio::spawn(async move { c.model_infer(three).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let status = c.clone().model_infer(three.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("retry later"), "{status:?}");
        first.await.unwrap().unwrap();
        c.clone()
            .model_infer(three.clone())
            .await
            .expect("recovered");

        let mut hurried = tonic::Request::new(three.clone());
        hurried.set_timeout(Duration::from_millis(50));
        let start = std::time::Instant::now();
        let status = c.clone().model_infer(hurried).await.unwrap_err();
        // The server answers DEADLINE_EXCEEDED a little before the deadline; should tonic's
        // own timer on it win the race on a loaded machine, CANCELLED.
        assert!(
            matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
            "{status:?}"
        );
        assert!(
            start.elapsed() < Duration::from_millis(300),
            "not before the batch delay"
        );
    });
}

/// A reload under gRPC load: every answer is wholly the old model's or wholly the new one's (its
/// `model_version` says which, and its scores equal `pepnet score` with that model bit for bit);
/// none is lost.
#[test]
fn a_reload_under_grpc_load_answers_each_request_with_one_model() {
    let dir = tempfile::tempdir().unwrap();
    let (model, v2, expected) = two_versions(dir.path(), false);
    let spec = spec();
    // Generous: the new engine's pipelines compile beside the scoring on a CPU driver.
    let server = Server::start_model(&model, &["--max-delay-ms", "2", "--timeout-ms", "60000"]);
    let metadata = http_metadata(&server);
    let (header, rows) = rows();
    let requests: Vec<(usize, ModelInferRequest)> = (0..rows.len() - 5)
        .step_by(3)
        .map(|at| {
            let raw = at % 2 == 0;
            (
                at,
                grpc_request(&spec, &metadata, &header, &rows[at..at + 5], raw),
            )
        })
        .collect();
    let reloaded = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rt = runtime();
    let answers = rt.block_on(async {
        let c = client(&server).await;
        let mut clients = Vec::new();
        for k in 0..4 {
            let (mut c, requests, reloaded) = (c.clone(), requests.clone(), reloaded.clone());
            clients.push(tokio::spawn(async move {
                let mut out = Vec::new();
                let mut after = 0;
                for (at, request) in requests.into_iter().skip(k).step_by(4).cycle() {
                    out.push((at, c.model_infer(request).await.unwrap().into_inner()));
                    if reloaded.load(std::sync::atomic::Ordering::SeqCst) {
                        after += 1;
                        if after == 5 {
                            break;
                        }
                    }
                }
                out
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        publish(&v2, &model);
        let load = format!("{}/v2/repository/models/pepnet/load", server.url);
        let (status, body) =
            tokio::task::spawn_blocking(move || post(&load, &serde_json::json!({})))
                .await
                .unwrap();
        assert_eq!(status, 200, "{body}");
        reloaded.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut answers = Vec::new();
        for c in clients {
            answers.extend(c.await.unwrap());
        }
        answers
    });
    let mut seen = [0, 0];
    for (at, answer) in &answers {
        let v = match answer.model_version.as_str() {
            "1" => 0,
            "2" => 1,
            other => panic!("version {other}"),
        };
        seen[v] += 1;
        for (t, (_, values)) in outputs(answer).into_iter().enumerate() {
            for (k, got) in values.into_iter().enumerate() {
                assert_eq!(
                    got.to_bits(),
                    expected[v][at + k][t].to_bits(),
                    "row {}: an answer mixing models (version {})",
                    at + k + 1,
                    v + 1
                );
            }
        }
    }
    assert!(seen[0] > 0 && seen[1] >= 16, "answers by version: {seen:?}");
}
