//! `pepnet serve --repository`: a directory of models with numbered versions, Triton's version
//! policy, the repository extension (index, load, unload) under load with every answer wholly
//! one version's and none lost, the statistics and model configuration extensions over HTTP
//! and gRPC, gzip both ways, and every refused request counted in `/metrics` by its code.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

use common::server::*;
use pepnet::serve::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use pepnet::serve::proto::{
    ModelConfigRequest, ModelInferRequest, ModelStatisticsRequest, RepositoryIndexRequest,
    RepositoryModelLoadRequest, RepositoryModelUnloadRequest,
};

fn copy_model(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["model.json", "weights.safetensors"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

/// Version `version` of model `model` appears whole: written under a hidden name (which the
/// repository skips), then renamed.
fn add_version(repo: &Path, model: &str, version: u64, from: &Path) {
    let hidden = repo.join(model).join(format!(".{version}.partial"));
    copy_model(from, &hidden);
    std::fs::rename(&hidden, repo.join(model).join(version.to_string())).unwrap();
}

fn json_of(url: &str) -> (u16, Value) {
    let (status, text) = get(url);
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The count of `pepnet_requests_total` for `protocol` and `code`.
fn requests_counted(base: &str, protocol: &str, code: &str) -> u64 {
    let (_, metrics) = get(&format!("{base}/metrics"));
    let key = format!("pepnet_requests_total{{protocol=\"{protocol}\",code=\"{code}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key).map(|v| v.parse().unwrap()))
        .unwrap_or(0)
}

/// A repository of two models. Under load on `ranker`: version 2 appears and is loaded (policy:
/// the latest), then the policy asks for both, then the model is unloaded and loaded again.
/// Every answer is wholly version 1's or 2's scores (bit for bit `pepnet score` with that
/// version) or, while unloaded, a 404 naming why; none is lost. The statistics count every
/// answer of each version, kept across reloads; the index, metadata and configuration follow.
#[test]
fn a_repository_loads_and_unloads_versions_under_load_and_answers_each_request_whole() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (v1, v2, expected) = two_versions(d, true);
    let repo = d.join("repo");
    add_version(&repo, "ranker", 1, &v1);
    add_version(&repo, "other", 3, &v1);
    // A directory that is not a version, and a file: both ignored.
    std::fs::create_dir_all(repo.join("ranker").join("drafts")).unwrap();
    std::fs::write(repo.join("ranker").join("README"), "notes").unwrap();

    let mut server =
        Server::start_repository(&repo, &["--max-delay-ms", "2", "--timeout-ms", "60000"]);
    let base = format!("{}/v2", server.url);
    let (status, index) = {
        let (status, body) = post(&format!("{base}/repository/index"), &json!({}));
        (status, body)
    };
    assert_eq!(status, 200, "{index}");
    assert_eq!(
        index,
        json!([
            {"name": "other", "version": "3", "state": "READY"},
            {"name": "ranker", "version": "1", "state": "READY"},
        ])
    );
    let (_, metadata) = json_of(&format!("{base}/models/ranker"));
    assert_eq!(metadata["versions"], json!(["1"]));
    let (header, rows) = rows();
    let infer = format!("{base}/models/ranker/infer");
    let phase = AtomicUsize::new(0);
    let answers: Vec<(usize, u16, Value)> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..4)
            .map(|c| {
                let (metadata, header, rows, infer, phase) =
                    (&metadata, &header, &rows, &infer, &phase);
                s.spawn(move || {
                    let mut out = Vec::new();
                    for i in 0.. {
                        let at = (c * 50 + i * 7) % (rows.len() - 5);
                        let (status, body) =
                            post(infer, &request(metadata, header, &rows[at..at + 5]));
                        out.push((at, status, body));
                        if phase.load(Ordering::SeqCst) == 4 && i % 8 == 7 {
                            break;
                        }
                    }
                    out
                })
            })
            .collect();
        let step = |phase_now: usize| {
            std::thread::sleep(Duration::from_millis(300));
            phase.store(phase_now, Ordering::SeqCst);
        };
        step(1);
        add_version(&repo, "ranker", 2, &v2);
        let (status, body) = post(&format!("{base}/repository/models/ranker/load"), &json!({}));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["versions"], json!(["2"]));
        step(2);
        std::fs::write(
            repo.join("ranker").join(pepnet::serve::CONFIG_FILE),
            r#"{"version_policy": {"latest": {"num_versions": 2}}}"#,
        )
        .unwrap();
        let (status, body) = post(&format!("{base}/repository/models/ranker/load"), &json!({}));
        assert_eq!(
            (status, &body["versions"]),
            (200, &json!(["1", "2"])),
            "{body}"
        );
        step(3);
        let (status, body) = post(
            &format!("{base}/repository/models/ranker/unload"),
            &json!({}),
        );
        assert_eq!(status, 200, "{body}");
        std::thread::sleep(Duration::from_millis(200));
        let (status, body) = post(&format!("{base}/repository/models/ranker/load"), &json!({}));
        assert_eq!(status, 200, "{body}");
        step(4);
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    });
    let mut seen = [0u64; 2];
    let mut unloaded = 0;
    for (at, status, body) in &answers {
        if *status == 404 {
            assert!(
                body["error"]
                    .as_str()
                    .unwrap()
                    .contains("not ready: unloaded"),
                "{body}"
            );
            unloaded += 1;
            continue;
        }
        assert_eq!(*status, 200, "{body}");
        seen[answered_version(body, *at, &expected)] += 1;
    }
    assert!(seen[0] > 0 && seen[1] > 0, "answers by version: {seen:?}");

    // Both versions served now; each by its path; the newest without one.
    let (_, metadata) = json_of(&format!("{base}/models/ranker"));
    assert_eq!(metadata["versions"], json!(["1", "2"]));
    for (version, v) in [("1", 0), ("2", 1)] {
        let (status, body) = post(
            &format!("{base}/models/ranker/versions/{version}/infer"),
            &request(&metadata, &header, &rows[..1]),
        );
        assert_eq!(status, 200, "{body}");
        let click = body["outputs"][0]["data"][0].as_f64().unwrap() as f32;
        assert_eq!(click.to_bits(), expected[v][0][0].to_bits());
    }

    // Statistics: every answer of ranker counted, by version, across the reloads.
    let (status, stats) = json_of(&format!("{base}/models/ranker/stats"));
    assert_eq!(status, 200, "{stats}");
    let by_version: Vec<(String, u64)> = stats["model_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["name"], "ranker");
            let i = &m["inference_stats"];
            assert_eq!(i["fail"]["count"], 0, "{m}");
            let success = i["success"]["count"].as_u64().unwrap();
            assert!(i["queue"]["count"].as_u64().unwrap() >= success, "{m}");
            assert!(i["compute_infer"]["ns"].as_u64().unwrap() > 0, "{m}");
            let batched: u64 = m["batch_stats"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| {
                    b["batch_size"].as_u64().unwrap()
                        * b["compute_infer"]["count"].as_u64().unwrap()
                })
                .sum();
            assert_eq!(batched, m["inference_count"].as_u64().unwrap(), "{m}");
            (m["version"].as_str().unwrap().to_string(), success)
        })
        .collect();
    assert_eq!(
        by_version,
        vec![("1".into(), seen[0] + 1), ("2".into(), seen[1] + 1)]
    );
    let (_, all) = json_of(&format!("{base}/models/stats"));
    assert_eq!(all["model_stats"].as_array().unwrap().len(), 3, "{all}");
    let (status, body) = json_of(&format!("{base}/models/ranker/versions/7/stats"));
    assert_eq!(status, 404, "{body}");
    assert_eq!(requests_counted(&server.url, "http", "404"), unloaded);

    // The configuration, in Triton's shape: ragged multi-hot ids, so no batch dimension.
    let (status, config) = json_of(&format!("{base}/models/ranker/config"));
    assert_eq!(status, 200, "{config}");
    assert_eq!(config["max_batch_size"], 0);
    assert_eq!(
        config["version_policy"],
        json!({"latest": {"num_versions": 2}})
    );
    assert_eq!(config["input"][0]["data_type"], "TYPE_INT64");
    assert_eq!(config["input"][0]["dims"], json!([-1]));
    assert_eq!(config["output"].as_array().unwrap().len(), 6);
    assert!(config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000);

    // The index after it all; a model not in the repository; load parameters refused.
    let (_, index) = post(&format!("{base}/repository/index"), &json!({"ready": true}));
    assert_eq!(index.as_array().unwrap().len(), 3, "{index}");
    let (status, body) = post(&format!("{base}/repository/models/nope/load"), &json!({}));
    assert_eq!(status, 404, "{body}");
    let (status, body) = post(
        &format!("{base}/repository/models/ranker/load"),
        &json!({"parameters": {"config": "{}"}}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("parameters.config"),
        "{body}"
    );

    // A version the policy asks for but the repository lacks: refused, what was served still is.
    std::fs::write(
        repo.join("ranker").join(pepnet::serve::CONFIG_FILE),
        r#"{"version_policy": {"specific": {"versions": [1, 5]}}}"#,
    )
    .unwrap();
    let (status, body) = post(&format!("{base}/repository/models/ranker/load"), &json!({}));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("version 5"),
        "{body}"
    );
    let (_, metadata) = json_of(&format!("{base}/models/ranker"));
    assert_eq!(metadata["versions"], json!(["1", "2"]));
    assert!(server.stop().success());
}

/// The same extensions over gRPC: index, configuration, statistics, unload and load; a
/// message beyond the size limit is OUT_OF_RANGE and counted.
#[test]
fn grpc_repository_configuration_statistics_and_refusals_counted() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    add_version(&repo, "ranker", 4, Path::new(MODEL));
    let mut server = Server::start_repository(&repo, &["--max-body-bytes", "4096"]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = GrpcInferenceServiceClient::connect(server.grpc.clone())
            .await
            .unwrap();
        let index = client
            .repository_index(RepositoryIndexRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(index.models.len(), 1);
        assert_eq!(
            (
                index.models[0].name.as_str(),
                index.models[0].version.as_str()
            ),
            ("ranker", "4")
        );
        let config = client
            .model_config(ModelConfigRequest {
                name: "ranker".into(),
                version: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .config
            .unwrap();
        assert_eq!(config.max_batch_size, 0);
        assert!(config.input.iter().any(|i| i.name == "tag_ids.lengths"));
        // A request of 5000 bytes, beyond the 4096 allowed.
        let big = ModelInferRequest {
            model_name: "ranker".into(),
            id: "x".repeat(5000),
            ..Default::default()
        };
        let refused = client.model_infer(big).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
        let stats = client
            .model_statistics(ModelStatisticsRequest {
                name: "ranker".into(),
                version: "4".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stats.model_stats.len(), 1);
        assert_eq!(stats.model_stats[0].version, "4");
        client
            .repository_model_unload(RepositoryModelUnloadRequest {
                model_name: "ranker".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let gone = client
            .model_config(ModelConfigRequest {
                name: "ranker".into(),
                version: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(gone.code(), tonic::Code::NotFound);
        client
            .repository_model_load(RepositoryModelLoadRequest {
                model_name: "ranker".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let missing = client
            .repository_model_load(RepositoryModelLoadRequest {
                model_name: "nope".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
    });
    // The client's connection closes with its runtime.
    drop(runtime);
    assert_eq!(requests_counted(&server.url, "grpc", "OUT_OF_RANGE"), 1);
    // HTTP's size refusal, declared before the body: counted as a 413.
    let length = 5000;
    let (status, _) = {
        let body = vec![b' '; length];
        match agent()
            .post(&format!("{}/v2/models/ranker/infer", server.url))
            .send_bytes(&body)
        {
            Ok(r) => (r.status(), ()),
            Err(ureq::Error::Status(code, _)) => (code, ()),
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(status, 413);
    assert_eq!(requests_counted(&server.url, "http", "413"), 1);
    assert!(server.stop().success());
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// gzip and deflate request bodies, a gzip response when asked; the same scores as plain JSON;
/// a body that is not gzip at all is refused and counted.
#[test]
fn compressed_requests_and_responses_score_the_same() {
    let mut server = Server::start(&[]);
    let base = format!("{}/v2", server.url);
    let (_, metadata) = json_of(&format!("{base}/models/pepnet"));
    let (header, rows) = rows();
    let body = serde_json::to_vec(&request(&metadata, &header, &rows[..9])).unwrap();
    let infer = format!("{base}/models/pepnet/infer");
    let (status, plain) = post(&infer, &serde_json::from_slice(&body).unwrap());
    assert_eq!(status, 200, "{plain}");
    let mut deflated = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    deflated.write_all(&body).unwrap();
    for (encoding, bytes) in [
        ("gzip", gzip(&body)),
        ("deflate", deflated.finish().unwrap()),
    ] {
        let response = agent()
            .post(&infer)
            .set("Content-Type", "application/json")
            .set("Content-Encoding", encoding)
            .set("Accept-Encoding", "gzip")
            .send_bytes(&bytes)
            .unwrap();
        assert_eq!(
            response.header("Content-Encoding"),
            Some("gzip"),
            "{encoding}"
        );
        let mut compressed = Vec::new();
        response.into_reader().read_to_end(&mut compressed).unwrap();
        let mut text = String::new();
        flate2::read::GzDecoder::new(&compressed[..])
            .read_to_string(&mut text)
            .unwrap();
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["outputs"], plain["outputs"], "{encoding}");
    }
    let refused = agent()
        .post(&infer)
        .set("Content-Encoding", "gzip")
        .send_bytes(b"not gzip");
    let code = match refused {
        Err(ureq::Error::Status(code, _)) => code,
        other => panic!("{:?}", other.map(|r| r.status())),
    };
    assert_eq!(code, 400);
    assert_eq!(requests_counted(&server.url, "http", "400"), 1);
    assert!(server.stop().success());
}
