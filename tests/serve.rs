//! `pepnet serve` end to end, through a real HTTP client over loopback: the Open Inference
//! Protocol's health, metadata and infer; scores equal to `pepnet score` on the same rows bit
//! for bit whatever the concurrency; every kind of malformed request a 400 naming the tensor;
//! overload a 429 that the server recovers from; a graceful stop that answers what it has.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use common::server::*;

#[test]
fn served_scores_equal_pepnet_score_bit_for_bit_at_any_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let expected = score_file(dir.path());
    let mut server = Server::start(&["--max-delay-ms", "3"]);
    let base = format!("{}/v2", server.url);
    assert_eq!(get(&format!("{base}/health/live")).0, 200);
    assert_eq!(get(&format!("{base}/health/ready")).0, 200);
    assert_eq!(get(&format!("{base}/models/pepnet/ready")).0, 200);
    let (status, text) = get(&format!("{base}/models/pepnet"));
    assert_eq!(status, 200);
    let metadata: Value = serde_json::from_str(&text).unwrap();
    let tasks: Vec<&str> = metadata["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        tasks,
        ["click", "like", "follow", "comment", "forward", "long_view"]
    );
    assert!(metadata["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["name"] == "tag_ids.lengths"));

    let (header, rows) = rows();
    let infer = format!("{base}/models/pepnet/infer");
    for concurrency in [1usize, 8] {
        // Requests of 1 to 37 rows, sent by `concurrency` clients at once.
        let mut chunks = Vec::new();
        let mut at = 0;
        let mut size = 1;
        while at < rows.len() {
            let end = (at + size).min(rows.len());
            chunks.push(at..end);
            at = end;
            size = size * 7 % 37 + 1;
        }
        let answers: Vec<(std::ops::Range<usize>, Value)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..concurrency)
                .map(|c| {
                    let (chunks, metadata, header, rows, infer) =
                        (&chunks, &metadata, &header, &rows, &infer);
                    s.spawn(move || {
                        chunks
                            .iter()
                            .skip(c)
                            .step_by(concurrency)
                            .map(|r| {
                                let (status, body) =
                                    post(infer, &request(metadata, header, &rows[r.clone()]));
                                assert_eq!(status, 200, "{body}");
                                (r.clone(), body)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        assert_eq!(answers.len(), chunks.len());
        for (range, body) in answers {
            assert_eq!(body["id"], "t");
            for (t, output) in body["outputs"].as_array().unwrap().iter().enumerate() {
                assert_eq!(output["name"], tasks[t]);
                assert_eq!(output["shape"], json!([range.len()]));
                for (k, p) in output["data"].as_array().unwrap().iter().enumerate() {
                    let got = p.as_f64().unwrap() as f32;
                    let want = expected[range.start + k][t];
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "row {}, task {}: served {got}, scored {want} (concurrency {concurrency})",
                        range.start + k + 1,
                        tasks[t]
                    );
                }
            }
        }
    }
    let (_, metrics) = get(&format!("{}/metrics", server.url));
    assert!(
        metrics.contains("pepnet_requests_total{protocol=\"http\",code=\"200\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("pepnet_rows_total {}", 2 * rows.len())),
        "{metrics}"
    );
    // Every request waited in the queue once; the batches' rows add up to all rows sent.
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().parse().unwrap()))
            .unwrap_or_else(|| panic!("{name} missing: {metrics}"))
    };
    let requests = value("pepnet_requests_total{protocol=\"http\",code=\"200\"}");
    let labels = "{model=\"pepnet\",version=\"1\"}";
    assert_eq!(
        value(&format!("pepnet_queue_milliseconds_count{labels}")),
        requests
    );
    assert_eq!(
        value(&format!("pepnet_batch_rows_sum{labels}")),
        (2 * rows.len()) as f64
    );
    assert_eq!(
        value("pepnet_batch_rows_bucket{model=\"pepnet\",version=\"1\",le=\"+Inf\"}"),
        value(&format!("pepnet_batch_rows_count{labels}"))
    );
    assert!(server.stop().success());
}

/// What clients discover a server by: `GET /v2` (name, version, extensions), health and
/// readiness with the bodies the KServe SDK reads, and the versioned paths, which answer for
/// the version served and 404 naming it for any other.
#[test]
fn server_metadata_health_bodies_and_versioned_paths() {
    let mut server = Server::start(&[]);
    let base = format!("{}/v2", server.url);
    let json_of = |url: &str| -> (u16, Value) {
        let (status, text) = get(url);
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    };
    let (status, server_metadata) = json_of(&base);
    assert_eq!(status, 200);
    assert_eq!(server_metadata["name"], "pepnet");
    assert_eq!(server_metadata["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        server_metadata["extensions"].is_array(),
        "{server_metadata}"
    );
    assert_eq!(
        json_of(&format!("{base}/health/live")),
        (200, json!({"live": true}))
    );
    assert_eq!(
        json_of(&format!("{base}/health/ready")),
        (200, json!({"ready": true}))
    );
    assert_eq!(
        json_of(&format!("{base}/models/pepnet/ready")),
        (200, json!({"name": "pepnet", "ready": true}))
    );

    let (_, metadata) = json_of(&format!("{base}/models/pepnet"));
    assert_eq!(metadata["versions"], json!(["1"]));
    assert_eq!(
        json_of(&format!("{base}/models/pepnet/versions/1")),
        (200, metadata.clone())
    );
    assert_eq!(
        json_of(&format!("{base}/models/pepnet/versions/1/ready")),
        (200, json!({"name": "pepnet", "ready": true}))
    );
    let (status, other) = json_of(&format!("{base}/models/pepnet/versions/2/ready"));
    assert_eq!(status, 404);
    let message = other["error"].as_str().unwrap();
    assert!(
        message.contains("version '2'") && message.contains("'1'"),
        "{message}"
    );

    let (header, rows) = rows();
    let body = request(&metadata, &header, &rows[..7]);
    let (status, unversioned) = post(&format!("{base}/models/pepnet/infer"), &body);
    assert_eq!(status, 200, "{unversioned}");
    let (status, versioned) = post(&format!("{base}/models/pepnet/versions/1/infer"), &body);
    assert_eq!(status, 200, "{versioned}");
    assert_eq!(versioned["outputs"], unversioned["outputs"]);
    assert_eq!(versioned["model_version"], "1");
    let (status, refused) = post(&format!("{base}/models/pepnet/versions/7/infer"), &body);
    assert_eq!(status, 404, "{refused}");
    assert!(server.stop().success());
}

/// An infer request as the binary tensor data extension sends it: `body`'s tensors moved out of
/// the JSON (each replaced by `parameters.binary_data_size`) into raw little-endian bytes after
/// it. Returns the bytes and the JSON header's length.
fn binary_request(body: &Value) -> (Vec<u8>, usize) {
    let mut header = body.clone();
    let mut tail = Vec::new();
    for input in header["inputs"].as_array_mut().unwrap() {
        let data = input.as_object_mut().unwrap().remove("data").unwrap();
        let before = tail.len();
        for v in data.as_array().unwrap() {
            match input["datatype"].as_str().unwrap() {
                "FP32" => tail.extend((v.as_f64().unwrap() as f32).to_le_bytes()),
                "INT32" => tail.extend((v.as_i64().unwrap() as i32).to_le_bytes()),
                "INT64" => tail.extend(v.as_i64().unwrap().to_le_bytes()),
                other => panic!("{other}"),
            }
        }
        input["parameters"] = json!({"binary_data_size": tail.len() - before});
    }
    let mut bytes = serde_json::to_vec(&header).unwrap();
    let length = bytes.len();
    bytes.extend(tail);
    (bytes, length)
}

/// Posts `bytes` with `Inference-Header-Content-Length: length`; returns the status, the
/// answer's header length (if binary) and its bytes.
fn post_binary(url: &str, bytes: &[u8], length: usize) -> (u16, Option<usize>, Vec<u8>) {
    let answer = agent()
        .post(url)
        .set("Inference-Header-Content-Length", &length.to_string())
        .send_bytes(bytes);
    let response = match answer {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{url}: {e}"),
    };
    let status = response.status();
    let header = response
        .header("Inference-Header-Content-Length")
        .map(|v| v.parse().unwrap());
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut response.into_reader(), &mut body).unwrap();
    (status, header, body)
}

/// The binary tensor data extension (what tritonclient and the KServe SDK send by default):
/// binary inputs score as the same JSON inputs do, outputs come back binary when asked (all, or
/// some), and every disagreement between the sizes, the shapes and the bytes is a 400 naming
/// the tensor.
#[test]
fn binary_tensor_data_in_and_out() {
    let mut server = Server::start(&[]);
    let base = format!("{}/v2", server.url);
    let infer = format!("{base}/models/pepnet/infer");
    let (_, text) = get(&format!("{base}/models/pepnet"));
    let metadata: Value = serde_json::from_str(&text).unwrap();
    let tasks: Vec<String> = metadata["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap().to_string())
        .collect();
    let (header, rows) = rows();
    let body = request(&metadata, &header, &rows[..23]);
    let (status, json_answer) = post(&infer, &body);
    assert_eq!(status, 200, "{json_answer}");
    let json_bits = |answer: &Value, task: &str| -> Vec<u32> {
        let output = answer["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == task)
            .unwrap();
        output["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p.as_f64().unwrap() as f32).to_bits())
            .collect()
    };

    // Binary in, JSON out.
    let (bytes, length) = binary_request(&body);
    let (status, none, answer) = post_binary(&infer, &bytes, length);
    assert_eq!(
        (status, none),
        (200, None),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["outputs"], json_answer["outputs"]);

    // Binary in, binary out: every output (binary_data_output), then one of two.
    let mut all = body.clone();
    all["parameters"] = json!({"binary_data_output": true});
    let some = {
        let mut b = body.clone();
        b["outputs"] = json!([
            {"name": tasks[2], "parameters": {"binary_data": true}},
            {"name": tasks[0]}
        ]);
        b
    };
    for (what, request_body, binary_tasks) in [
        ("all binary", all, tasks.clone()),
        ("one binary", some, vec![tasks[2].clone()]),
    ] {
        let (bytes, length) = binary_request(&request_body);
        let (status, header_length, answer) = post_binary(&infer, &bytes, length);
        assert_eq!(status, 200, "{what}: {}", String::from_utf8_lossy(&answer));
        let header_length = header_length.expect("a binary answer says its header's length");
        let header: Value = serde_json::from_slice(&answer[..header_length]).unwrap();
        let mut tail = &answer[header_length..];
        for output in header["outputs"].as_array().unwrap() {
            let task = output["name"].as_str().unwrap();
            if binary_tasks.iter().any(|t| t == task) {
                assert!(output.get("data").is_none(), "{what}: {output}");
                let size = output["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
                assert_eq!(size, 4 * 23, "{what}");
                let bits: Vec<u32> = tail[..size]
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                assert_eq!(bits, json_bits(&json_answer, task), "{what}: {task}");
                tail = &tail[size..];
            } else {
                assert_eq!(output["data"].as_array().unwrap().len(), 23, "{what}");
            }
        }
        assert!(tail.is_empty(), "{what}: {} bytes left over", tail.len());
    }

    // Sizes, shapes and bytes that disagree: a 400 naming the tensor, nothing scored.
    let (bytes, length) = binary_request(&body);
    let first = body["inputs"][0]["name"].as_str().unwrap().to_string();
    let with_size = |size: Value| -> (Vec<u8>, usize) {
        let mut header: Value = serde_json::from_slice(&bytes[..length]).unwrap();
        header["inputs"][0]["parameters"]["binary_data_size"] = size;
        let mut out = serde_json::to_vec(&header).unwrap();
        let n = out.len();
        out.extend(&bytes[length..]);
        (out, n)
    };
    // (what, the body and its header's length, what the answer must name)
    type Case = (&'static str, (Vec<u8>, usize), Vec<String>);
    let cases: Vec<Case> = vec![
        (
            "header length past the body",
            (bytes.clone(), bytes.len() + 1),
            vec!["Inference-Header-Content-Length".into()],
        ),
        (
            "truncated bytes",
            (bytes[..bytes.len() - 3].to_vec(), length),
            vec!["past the end of the body".into()],
        ),
        (
            "a size that is not whole elements",
            with_size(json!(5)),
            vec![format!("'{first}'"), "whole number".into()],
        ),
        (
            "a size that disagrees with the shape",
            with_size(json!(8 * 22)),
            vec![format!("'{first}'"), "shape".into()],
        ),
        (
            "bytes left after the last tensor",
            ([bytes.clone(), vec![0; 8]].concat(), length),
            vec!["8 bytes of binary tensor data follow".into()],
        ),
        (
            "a negative size",
            with_size(json!(-8)),
            vec![format!("'{first}'"), "binary_data_size".into()],
        ),
    ];
    for (what, (bytes, length), needles) in cases {
        let (status, _, answer) = post_binary(&infer, &bytes, length);
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(status, 400, "{what}: {answer}");
        for n in needles {
            assert!(answer.contains(&n), "{what}: '{answer}' lacks '{n}'");
        }
    }
    // The server is unharmed.
    let (status, _) = post(&infer, &body);
    assert_eq!(status, 200);
    assert!(server.stop().success());
}

/// Every kind of malformed request is a 400 naming the tensor (and element) and the rule; the
/// server answers the next good request as before.
#[test]
fn malformed_requests_are_400s_naming_the_tensor() {
    let server = Server::start(&[]);
    let base = format!("{}/v2/models/pepnet", server.url);
    let infer = format!("{base}/infer");
    let (_, text) = get(&base);
    let metadata: Value = serde_json::from_str(&text).unwrap();
    let (header, rows) = rows();
    let good = request(&metadata, &header, &rows[..3]);
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut r = good.clone();
        f(&mut r);
        r
    };
    let input = |r: &mut Value, name: &str| -> usize {
        r["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .position(|i| i["name"] == name)
            .unwrap()
    };
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        ("not an object", json!([1, 2]), vec!["JSON object"]),
        ("no inputs", json!({"id": "x"}), vec!["'inputs'"]),
        (
            "unknown tensor",
            edit(&|r| {
                r["inputs"].as_array_mut().unwrap().push(
                    json!({"name": "colour", "shape": [3], "datatype": "INT64", "data": [1, 2, 3]}),
                )
            }),
            vec!["unknown input tensor 'colour'"],
        ),
        (
            "missing tensor",
            edit(&|r| {
                let i = input(r, "user_id");
                r["inputs"].as_array_mut().unwrap().remove(i);
            }),
            vec!["'user_id' is missing"],
        ),
        (
            "wrong datatype",
            edit(&|r| {
                let i = input(r, "user_id");
                r["inputs"][i]["datatype"] = json!("FP32");
            }),
            vec!["'user_id'", "datatype FP32"],
        ),
        (
            "shape against data",
            edit(&|r| {
                let i = input(r, "user_id");
                r["inputs"][i]["shape"] = json!([4]);
            }),
            vec!["'user_id'", "shape [4]", "3 values"],
        ),
        (
            "samples differ",
            edit(&|r| {
                let i = input(r, "user_id");
                r["inputs"][i]["shape"] = json!([2]);
                r["inputs"][i]["data"].as_array_mut().unwrap().pop();
            }),
            vec!["2 samples", "the others 3"],
        ),
        (
            "id out of range",
            edit(&|r| {
                let i = input(r, "user_id");
                r["inputs"][i]["data"][1] = json!(1_000_000);
            }),
            vec!["sample 2", "'user_id'", "1000000"],
        ),
        (
            "negative id",
            edit(&|r| {
                let i = input(r, "video_id");
                r["inputs"][i]["data"][0] = json!(-5);
            }),
            vec!["'video_id', element 0", "negative"],
        ),
        (
            "a string for a number",
            edit(&|r| {
                let i = input(r, "log_duration");
                r["inputs"][i]["data"][2] = json!("NaN");
            }),
            vec!["'log_duration', element 2", "not a number"],
        ),
        (
            "beyond f32",
            edit(&|r| {
                let i = input(r, "log_duration");
                r["inputs"][i]["data"][0] = json!(1e39);
            }),
            vec!["'log_duration', element 0", "does not fit an f32"],
        ),
        (
            "lengths against ids",
            edit(&|r| {
                let i = input(r, "tag_ids.lengths");
                r["inputs"][i]["data"][0] = json!(40);
            }),
            vec!["'tag_ids.lengths'", "'tag_ids' holds"],
        ),
        (
            "duplicate tensor",
            edit(&|r| {
                let i = input(r, "tab");
                let copy = r["inputs"][i].clone();
                r["inputs"].as_array_mut().unwrap().push(copy);
            }),
            vec!["'tab' is given twice"],
        ),
        (
            "unknown output",
            edit(&|r| r["outputs"] = json!([{"name": "purchase"}])),
            vec!["unknown output 'purchase'"],
        ),
    ];
    for (what, body, needles) in cases {
        let (status, answer) = post(&infer, &body);
        assert_eq!(status, 400, "{what}: {answer}");
        let message = answer["error"].as_str().unwrap_or_default();
        for n in needles {
            assert!(message.contains(n), "{what}: '{message}' lacks '{n}'");
        }
    }
    // Not JSON at all, an unknown model, a body beyond the limit.
    let raw = agent().post(&infer).send_string("{\"inputs\": [");
    assert!(matches!(raw, Err(ureq::Error::Status(400, _))));
    let (status, _) = post(&format!("{}/v2/models/other/infer", server.url), &good);
    assert_eq!(status, 404);
    // The oversize body is refused from its headers alone: send them, never the body, and the
    // answer must still come (a server that waited for the body would time this read out).
    let (status, answer) = declare_oversized_body(&server.url, "/v2/models/pepnet/infer", 17 << 20);
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer.contains("17825792 bytes") && answer.contains("--max-body-bytes"),
        "{answer}"
    );
    // The server is unharmed.
    let (status, answer) = post(&infer, &good);
    assert_eq!(status, 200, "{answer}");
}

/// Sends a POST's headers declaring `length` body bytes and none of the body; returns the
/// status and the whole answer, read within 10 s.
fn declare_oversized_body(url: &str, path: &str, length: usize) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .expect("the server answers an oversize declaration without reading the body");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

/// A full queue answers 429 at once, without queueing; the server recovers when it drains.
/// A SIGTERM lets the requests in flight finish, then the server exits cleanly.
#[test]
fn overload_is_a_429_and_a_stop_is_graceful() {
    let mut server = Server::start(&[
        "--max-delay-ms",
        "400",
        "--max-queued-rows",
        "4",
        "--in-flight",
        "1",
        "--timeout-ms",
        "20000",
    ]);
    let base = format!("{}/v2/models/pepnet", server.url);
    let infer = format!("{base}/infer");
    let (_, text) = get(&base);
    let metadata: Value = serde_json::from_str(&text).unwrap();
    let (header, rows) = rows();
    let three = request(&metadata, &header, &rows[..3]);
    let first = {
        let (infer, three) = (infer.clone(), three.clone());
        std::thread::spawn(move || post(&infer, &three))
    };
    std::thread::sleep(Duration::from_millis(100));
    // 3 rows wait for their batch to fill; 3 more exceed the queue's 4.
    let (status, answer) = post(&infer, &three);
    assert_eq!(status, 429, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("retry later"));
    assert_eq!(first.join().unwrap().0, 200);
    assert_eq!(post(&infer, &three).0, 200, "recovered");

    // In flight when the signal comes: answered, then the server stops.
    let last = {
        let (infer, three) = (infer.clone(), three.clone());
        std::thread::spawn(move || post(&infer, &three))
    };
    std::thread::sleep(Duration::from_millis(100));
    let status = server.stop();
    assert_eq!(last.join().unwrap().0, 200);
    assert!(status.success(), "{status:?}");
}

/// `pepnet loadgen` against a server: closed and open loop, every request answered, and only
/// loopback addresses.
#[test]
fn loadgen_measures_a_server_over_loopback() {
    let server = Server::start(&[]);
    let addr = server.url.trim_start_matches("http://").to_string();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("load.json");
    for mode in [["--concurrency", "4"], ["--rate", "200"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_pepnet"))
            .args([
                "loadgen",
                "--http",
                &addr,
                "--model",
                MODEL,
                "--requests",
                "24",
                "--rows",
                "5",
            ])
            .args(mode)
            .arg("--json")
            .arg(&json)
            .output()
            .unwrap();
        common::cli::ok(&out, "pepnet loadgen");
        let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(report["ok"], 24, "{report}");
        assert_eq!(report["failed"], 0);
        assert!(
            report["latency_ms_p99"].as_f64().unwrap()
                >= report["latency_ms_p50"].as_f64().unwrap()
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_pepnet"))
        .args(["loadgen", "--http", "192.0.2.1:80", "--model", MODEL])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only to loopback"));
}

/// A reload under load, to a model of another spec: every answer is wholly the old model's or
/// wholly the new one's (its `model_version` says which, and its scores equal `pepnet score`
/// with that model bit for bit); none is lost. A model directory that does not load leaves the old model serving;
/// SIGHUP reloads too.
#[test]
fn a_reload_swaps_the_model_whole_and_loses_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Version 2 changes the spec too (other tower widths): a new engine, not new weights.
    let (model, v2, expected) = two_versions(d, true);

    // Building the new engine (its pipelines compiled on a CPU driver) can slow scoring on a
    // busy machine: the timeout is generous, this test is about consistency.
    let mut server = Server::start_model(&model, &["--max-delay-ms", "2", "--timeout-ms", "60000"]);
    let base = format!("{}/v2", server.url);
    let (_, text) = get(&format!("{base}/models/pepnet"));
    let metadata: Value = serde_json::from_str(&text).unwrap();
    let (header, rows) = rows();
    let infer = format!("{base}/models/pepnet/infer");
    let reloaded = std::sync::atomic::AtomicBool::new(false);
    let answers: Vec<(usize, Value)> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..4)
            .map(|c| {
                let (metadata, header, rows, infer, reloaded) =
                    (&metadata, &header, &rows, &infer, &reloaded);
                s.spawn(move || {
                    let mut out = Vec::new();
                    let mut after = 0;
                    for i in 0.. {
                        let at = (c * 50 + i * 7) % (rows.len() - 5);
                        let (status, body) =
                            post(infer, &request(metadata, header, &rows[at..at + 5]));
                        assert_eq!(status, 200, "{body}");
                        out.push((at, body));
                        if reloaded.load(std::sync::atomic::Ordering::SeqCst) {
                            after += 1;
                            if after == 5 {
                                break;
                            }
                        }
                    }
                    out
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        publish(&v2, &model);
        let (status, body) = post(&format!("{base}/repository/models/pepnet/load"), &json!({}));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["model_version"], "2");
        reloaded.store(true, std::sync::atomic::Ordering::SeqCst);
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    });
    let mut seen = [0, 0];
    for (at, body) in &answers {
        seen[answered_version(body, *at, &expected)] += 1;
    }
    // Each client sends 5 requests after the reload answered; the first may have left before.
    assert!(seen[0] > 0 && seen[1] >= 16, "answers by version: {seen:?}");

    // A broken directory: refused, the model of version 2 still serves.
    std::fs::write(model.join("model.json"), "{").unwrap();
    let (status, body) = post(&format!("{base}/repository/models/pepnet/load"), &json!({}));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("model.json"),
        "{body}"
    );
    let (status, body) = post(&infer, &request(&metadata, &header, &rows[..2]));
    assert_eq!((status, body["model_version"].as_str()), (200, Some("2")));

    // SIGHUP, the directory fixed: version 4 (the failed load used number 3).
    std::fs::copy(v2.join("model.json"), model.join("model.json")).unwrap();
    send_signal(server.child.id(), "HUP");
    let mut version = String::new();
    for _ in 0..100 {
        let (_, text) = get(&format!("{base}/models/pepnet"));
        let m: Value = serde_json::from_str(&text).unwrap();
        version = m["versions"][0].as_str().unwrap().to_string();
        if version != "2" {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(version, "4");
    assert!(server.stop().success());
}

/// A model with one hashed feature (`user_id`), initialised in `dir/model`.
fn hashed_model(dir: &Path) -> std::path::PathBuf {
    std::fs::write(dir.join("spec.json"), HASHED_SPEC).unwrap();
    let model = dir.join("model");
    let init = Command::new(env!("CARGO_BIN_EXE_pepnet"))
        .arg("init")
        .arg("--spec")
        .arg(dir.join("spec.json"))
        .arg("--out")
        .arg(&model)
        .output()
        .unwrap();
    assert!(init.status.success());
    model
}

/// Rows for hashed ids posted to a running server change the scores of samples with those ids
/// at once, and no others.
#[test]
fn row_updates_reach_the_served_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = hashed_model(dir.path());
    let server = Server::start_model(&model, &[]);
    let base = format!("{}/v2/models/pepnet", server.url);
    let users = [7u64, u64::MAX];
    let before = user_scores(&base, &users);
    let answer = agent()
        .post(&format!("{base}/rows"))
        .send_bytes(&user_rows(&[7], &[0.9, -0.7, 0.5, 1.1]))
        .unwrap()
        .into_json::<Value>()
        .unwrap();
    assert_eq!(answer["rows"], 1);
    let after = user_scores(&base, &users);
    assert_ne!(before[0], after[0], "user 7's new row changes its score");
    let (_, metrics) = get(&format!("{}/metrics", server.url));
    assert!(
        metrics
            .contains("pepnet_cache_hit_ratio{model=\"pepnet\",version=\"1\",feature=\"user_id\"}"),
        "{metrics}"
    );
    assert_eq!(before[1], after[1], "another user's score is untouched");
    // Rows for a feature the model does not hash: a 400 naming the tensor.
    let ids = 7u64.to_le_bytes();
    let bad = safetensors::serialize(
        [(
            "emb.tab.ids",
            safetensors::tensor::TensorView::new(safetensors::Dtype::U64, vec![1], &ids).unwrap(),
        )],
        None,
    )
    .unwrap();
    match agent().post(&format!("{base}/rows")).send_bytes(&bad) {
        Err(ureq::Error::Status(400, r)) => {
            let text = r.into_string().unwrap();
            assert!(text.contains("emb.tab.ids"), "{text}");
        }
        other => panic!("expected a 400, got {:?}", other.map(|r| r.status())),
    }
}

/// Ids not written for `--expire-after-secs` expire on the server's timer: they then read as
/// unknown ids do (the default row), in the cache and the store alike; the metric counts them,
/// and the expiry endpoint runs it on demand.
#[test]
fn expiry_runs_on_a_timer_and_expired_ids_read_as_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let model = hashed_model(dir.path());
    let server = Server::start_model(
        &model,
        &["--expire-after-secs", "1", "--expire-every-secs", "1"],
    );
    let base = format!("{}/v2/models/pepnet", server.url);
    // Two ids never written, to compare with.
    let unknown = user_scores(&base, &[1 << 40, (1 << 41) + 3]);
    let answer = agent()
        .post(&format!("{base}/rows"))
        .send_bytes(&user_rows(
            &[7, 8],
            &[0.9, -0.7, 0.5, 1.1, -0.2, 0.3, 0.8, -1.0],
        ))
        .unwrap()
        .into_json::<Value>()
        .unwrap();
    assert_eq!(
        (answer["rows"].as_u64(), answer["applied"].as_u64()),
        (Some(2), Some(2))
    );
    let written = user_scores(&base, &[7, 8]);
    assert_ne!(written, unknown, "the new rows change the scores");
    // Expiry within about two timer periods; wait at most 10 s.
    let start = std::time::Instant::now();
    while user_scores(&base, &[7, 8]) != unknown {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "ids 7 and 8 did not expire"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, metrics) = get(&format!("{}/metrics", server.url));
    let expired: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pepnet_expired_ids_total "))
        .unwrap_or_else(|| panic!("{metrics}"))
        .parse()
        .unwrap();
    assert!(expired >= 2.0, "{metrics}");
    let (status, answer) = post(&format!("{base}/expire"), &json!({}));
    assert_eq!(status, 200, "{answer}");
    assert!(answer["expired"].is_u64(), "{answer}");
    // The cache's counters as JSON.
    let (status, stats) = get(&format!("{base}/cache"));
    assert_eq!(status, 200, "{stats}");
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert!(stats["total"]["expired"].as_u64() >= Some(2), "{stats}");
    assert_eq!(stats["total"]["updates"].as_u64(), Some(2), "{stats}");
    assert_eq!(stats["policy"], "tinylfu", "{stats}");
}

/// Row updates while clients score: every answer sees one version of a row for all its samples
/// (the rows before an update or after it, never a mix), and no request is lost.
#[test]
fn row_updates_under_load_answer_each_request_with_one_version_of_a_row() {
    let dir = tempfile::tempdir().unwrap();
    let model = hashed_model(dir.path());
    let server = Server::start_model(&model, &["--max-delay-ms", "2"]);
    let base = format!("{}/v2/models/pepnet", server.url);
    let versions: [Vec<f32>; 2] = [vec![0.9, -0.7, 0.5, 1.1], vec![-1.2, 0.4, 0.3, -0.6]];
    // The score of user 7 on tab 0 under each version of its row (8 samples, tabs 0 and 1).
    let mut expected = Vec::new();
    for rows in &versions {
        let answer = agent()
            .post(&format!("{base}/rows"))
            .send_bytes(&user_rows(&[7], rows))
            .unwrap()
            .into_json::<Value>()
            .unwrap();
        assert_eq!(answer["applied"], 1);
        expected.push(user_scores(&base, &[7; 8]));
    }
    assert_ne!(expected[0], expected[1]);
    let done = std::sync::atomic::AtomicBool::new(false);
    let answers: Vec<Vec<u32>> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..4)
            .map(|_| {
                let (base, done) = (&base, &done);
                s.spawn(move || {
                    let mut out = Vec::new();
                    while !done.load(std::sync::atomic::Ordering::SeqCst) || out.len() < 5 {
                        out.push(user_scores(base, &[7; 8]));
                    }
                    out
                })
            })
            .collect();
        for i in 0..20 {
            let answer = agent()
                .post(&format!("{base}/rows"))
                .send_bytes(&user_rows(&[7], &versions[i % 2]))
                .unwrap()
                .into_json::<Value>()
                .unwrap();
            assert_eq!(answer["applied"], 1);
            std::thread::sleep(Duration::from_millis(15));
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    });
    let mut seen = [0, 0];
    for answer in &answers {
        let v = expected
            .iter()
            .position(|e| e == answer)
            .unwrap_or_else(|| panic!("an answer mixing row versions: {answer:?}"));
        seen[v] += 1;
    }
    assert!(answers.len() >= 20, "{} answers", answers.len());
    assert!(seen[0] > 0 && seen[1] > 0, "answers by version: {seen:?}");
}
