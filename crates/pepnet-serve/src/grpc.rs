//! The gRPC side of the server (tonic): `inference.GRPCInferenceService` from
//! `proto/inference.proto`, the Open Inference Protocol's gRPC service.
//!
//! A request's tensors are the HTTP ones ([`oip`](super::oip)): one per feature, a multi-hot
//! feature as ids plus `<feature>.lengths`. Their elements come either in `contents`, in the
//! field of their datatype (`int64_contents` for INT64, `uint64_contents` for UINT64,
//! `int_contents` for INT32, `uint_contents` for UINT32, `fp32_contents`, `fp64_contents`), or
//! as little-endian bytes in `raw_input_contents`, one entry per input (all inputs or none).
//! The response carries one FP32 tensor `[N]` per task, in `fp32_contents`, or in
//! `raw_output_contents` when the request sent raw inputs (as Triton's clients expect).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use super::metrics::Protocol;
use super::oip::{self, Data, InferRequest, Tensor, LENGTHS};
use super::{AppRef, Refusal, Refused};
use pepnet_core::batch::{Batch, Column};
use pepnet_core::spec::ModelSpec;

/// The messages, client and server generated from `proto/inference.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::model_infer_request::InferInputTensor;
use proto::model_infer_response::InferOutputTensor;
use proto::model_metadata_response::TensorMetadata;
use proto::{InferTensorContents, ModelInferRequest, ModelInferResponse};

/// Serves gRPC on `listener` until `stop` completes, then answers what it holds.
pub(super) async fn serve(
    app: AppRef,
    listener: tokio::net::TcpListener,
    max_message_bytes: usize,
    stop: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let service = service(app, max_message_bytes);
    tonic::transport::Server::builder()
        // What a load balancer expects of a long-lived connection: pings that find a dead
        // peer, and no connection closed under a client that is idle between bursts.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(service)
        // TCP_NODELAY: without it a unary call waits ~40 ms for Nagle's algorithm.
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            stop,
        )
        .await
}

fn status(Refused(refusal, message): Refused) -> Status {
    match refusal {
        Refusal::BadRequest => Status::invalid_argument(message),
        Refusal::UnknownModel => Status::not_found(message),
        Refusal::Overloaded => Status::resource_exhausted(message),
        Refusal::Timeout => Status::deadline_exceeded(message),
        Refusal::Unavailable => Status::unavailable(message),
        Refusal::Internal => Status::internal(message),
    }
}

/// Decodes a gRPC inference request against the model; the error names the tensor, element
/// and rule, as [`oip::decode`]'s does.
pub fn decode(request: &ModelInferRequest, spec: &ModelSpec) -> Result<InferRequest, String> {
    let raw = &request.raw_input_contents;
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(format!(
            "raw_input_contents has {} entries for {} inputs; give one per input, or none",
            raw.len(),
            request.inputs.len()
        ));
    }
    let tensors = request
        .inputs
        .iter()
        .enumerate()
        .map(|(i, input)| read_tensor(input, raw.get(i).map(|b| &b[..])))
        .collect::<Result<Vec<_>, _>>()?;
    let id = (!request.id.is_empty()).then(|| request.id.clone());
    let outputs = (!request.outputs.is_empty())
        .then(|| request.outputs.iter().map(|o| o.name.as_str()).collect());
    oip::assemble(spec, id, tensors, outputs)
}

fn read_tensor<'a>(
    input: &'a InferInputTensor,
    raw: Option<&'a [u8]>,
) -> Result<Tensor<'a>, String> {
    let name = input.name.as_str();
    let shape = input
        .shape
        .iter()
        .map(|&d| u64::try_from(d))
        .collect::<Result<Vec<u64>, _>>()
        .map_err(|_| {
            format!(
                "input tensor '{name}': shape {:?} has a negative dimension",
                input.shape
            )
        })?;
    let datatype = input.datatype.as_str();
    let data = match raw {
        Some(bytes) => raw_elements(name, datatype, bytes, input.contents.as_ref())?,
        None => typed_elements(name, datatype, input.contents.as_ref())?,
    };
    Tensor::new(name, shape, datatype, data)
}

fn raw_elements<'a>(
    name: &str,
    datatype: &str,
    bytes: &'a [u8],
    contents: Option<&InferTensorContents>,
) -> Result<Data<'a>, String> {
    if contents.is_some_and(|c| !fields(c).is_empty()) {
        return Err(format!(
            "input tensor '{name}' has both contents and raw_input_contents; give one"
        ));
    }
    oip::little_endian(name, datatype, bytes)
}

/// The names of the contents' fields that hold elements.
fn fields(c: &InferTensorContents) -> Vec<&'static str> {
    [
        ("bool_contents", c.bool_contents.is_empty()),
        ("int_contents", c.int_contents.is_empty()),
        ("int64_contents", c.int64_contents.is_empty()),
        ("uint_contents", c.uint_contents.is_empty()),
        ("uint64_contents", c.uint64_contents.is_empty()),
        ("fp32_contents", c.fp32_contents.is_empty()),
        ("fp64_contents", c.fp64_contents.is_empty()),
        ("bytes_contents", c.bytes_contents.is_empty()),
    ]
    .into_iter()
    .filter(|(_, empty)| !empty)
    .map(|(field, _)| field)
    .collect()
}

fn typed_elements<'a>(
    name: &str,
    datatype: &str,
    contents: Option<&'a InferTensorContents>,
) -> Result<Data<'a>, String> {
    let field = match datatype {
        "INT64" => "int64_contents",
        "UINT64" => "uint64_contents",
        "INT32" => "int_contents",
        "UINT32" => "uint_contents",
        "FP32" => "fp32_contents",
        "FP64" => "fp64_contents",
        other => {
            return Err(format!(
                "input tensor '{name}': datatype {other}, expected {}",
                oip::READABLE
            ))
        }
    };
    let Some(c) = contents else {
        return Ok(Data::Elements(Vec::new()));
    };
    if let Some(wrong) = fields(c).into_iter().find(|&f| f != field) {
        return Err(format!(
            "input tensor '{name}': datatype {datatype} takes its elements in contents.{field}, \
             found contents.{wrong}"
        ));
    }
    Ok(match datatype {
        "INT64" => Data::I64(&c.int64_contents),
        "UINT64" => Data::U64(&c.uint64_contents),
        "INT32" => Data::I32(&c.int_contents),
        "UINT32" => Data::U32(&c.uint_contents),
        "FP32" => Data::F32(&c.fp32_contents),
        _ => Data::F64(&c.fp64_contents),
    })
}

/// The answer to a decoded request: one FP32 tensor `[N]` per output asked for, raw when
/// `raw` (the request sent raw inputs).
pub fn response(
    spec: &ModelSpec,
    name: &str,
    version: &str,
    request: &InferRequest,
    scores: &[f32],
    raw: bool,
) -> ModelInferResponse {
    let t = spec.n_tasks();
    let n = scores.len() / t;
    let mut out = ModelInferResponse {
        model_name: name.into(),
        model_version: version.into(),
        id: request.id.clone().unwrap_or_default(),
        ..Default::default()
    };
    for &task in &request.outputs {
        let values: Vec<f32> = (0..n).map(|i| scores[i * t + task]).collect();
        let mut tensor = InferOutputTensor {
            name: spec.tasks[task].clone(),
            datatype: "FP32".into(),
            shape: vec![n as i64],
            ..Default::default()
        };
        if raw {
            out.raw_output_contents
                .push(values.iter().flat_map(|v| v.to_le_bytes()).collect());
        } else {
            tensor.contents = Some(InferTensorContents {
                fp32_contents: values,
                ..Default::default()
            });
        }
        out.outputs.push(tensor);
    }
    out
}

/// The request a client would send for `batch` (the inverse of [`decode`]): typed contents,
/// or raw little-endian bytes when `raw`.
pub fn request(
    spec: &ModelSpec,
    name: &str,
    batch: &Batch,
    id: Option<&str>,
    raw: bool,
) -> ModelInferRequest {
    let mut out = ModelInferRequest {
        model_name: name.into(),
        id: id.unwrap_or_default().into(),
        ..Default::default()
    };
    let mut push = |name: String, datatype: &str, contents: InferTensorContents, bytes: Vec<u8>| {
        let n = bytes.len() / oip::element_bytes(datatype).expect("a datatype pepnet writes");
        let mut tensor = InferInputTensor {
            name,
            datatype: datatype.into(),
            shape: vec![n as i64],
            ..Default::default()
        };
        if raw {
            out.raw_input_contents.push(bytes.into());
        } else {
            tensor.contents = Some(contents);
        }
        out.inputs.push(tensor);
    };
    let ids = |hashed: bool, ids: &[u64]| {
        let bytes = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
        match hashed {
            true => (
                "UINT64",
                InferTensorContents {
                    uint64_contents: ids.to_vec(),
                    ..Default::default()
                },
                bytes,
            ),
            // Vocabulary ids fit an i64 (the spec bounds vocabularies).
            false => (
                "INT64",
                InferTensorContents {
                    int64_contents: ids.iter().map(|&v| v as i64).collect(),
                    ..Default::default()
                },
                bytes,
            ),
        }
    };
    for (f, column) in spec.features.iter().zip(&batch.columns) {
        match column {
            Column::Sparse(values) => {
                let (datatype, contents, bytes) = ids(f.hashed, values);
                push(f.name.clone(), datatype, contents, bytes);
            }
            Column::Dense(values) => push(
                f.name.clone(),
                "FP32",
                InferTensorContents {
                    fp32_contents: values.clone(),
                    ..Default::default()
                },
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            Column::MultiHot { offsets, ids: all } => {
                let (datatype, contents, bytes) = ids(f.hashed, all);
                push(f.name.clone(), datatype, contents, bytes);
                let lengths: Vec<i32> = offsets.windows(2).map(|w| (w[1] - w[0]) as i32).collect();
                let bytes = lengths.iter().flat_map(|v| v.to_le_bytes()).collect();
                push(
                    format!("{}{LENGTHS}", f.name),
                    "INT32",
                    InferTensorContents {
                        int_contents: lengths,
                        ..Default::default()
                    },
                    bytes,
                );
            }
        }
    }
    out
}

/// A gRPC client's deadline, from the `grpc-timeout` header (`<digits><unit>`, the unit one of
/// H, M, S, m, u, n).
fn client_deadline<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC service over `app`, messages limited to `max_message_bytes` (after
/// decompression), gzip accepted in and sent out when the client accepts it.
pub(super) fn service(app: AppRef, max_message_bytes: usize) -> GrpcService {
    let inner = GrpcInferenceServiceServer::new(Service(app.clone()))
        .max_decoding_message_size(max_message_bytes)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip);
    let count = Arc::new(move |code| app.metrics.count(Protocol::Grpc, code_name(code)));
    GrpcService { inner, count }
}

/// The Open Inference Protocol's gRPC service (`inference.GRPCInferenceService`), ready to add
/// to a tonic server. It counts every answer to `ModelInfer` by its code, refusals by tonic
/// itself (a message beyond the size limit: OUT_OF_RANGE) included.
#[derive(Clone)]
pub struct GrpcService {
    inner: GrpcInferenceServiceServer<Service>,
    count: Arc<dyn Fn(tonic::Code) + Send + Sync>,
}

impl tonic::server::NamedService for GrpcService {
    const NAME: &'static str =
        <GrpcInferenceServiceServer<Service> as tonic::server::NamedService>::NAME;
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<B> tower_service::Service<http::Request<B>> for GrpcService
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tower_service::Service::<http::Request<B>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let inference = request.uri().path().ends_with("/ModelInfer");
        let answer = self.inner.call(request);
        let count = self.count.clone();
        Box::pin(async move {
            let response = answer.await?;
            if inference {
                // An error is a trailers-only answer: its status is in the headers. A success
                // carries it in the trailers, after the message.
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from);
                count(code);
            }
            Ok(response)
        })
    }
}

/// A gRPC code's name, as `/metrics` shows it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The handlers of [`GrpcService`].
pub struct Service(AppRef);

impl Service {
    /// Whether `name` (and `version`, if given) is served.
    fn check(&self, name: &str, version: &str) -> Result<(), Status> {
        self.0.check_model(name, version).map_err(status)
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Service {
    async fn server_live(
        &self,
        _: Request<proto::ServerLiveRequest>,
    ) -> Result<Response<proto::ServerLiveResponse>, Status> {
        Ok(Response::new(proto::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<proto::ServerReadyRequest>,
    ) -> Result<Response<proto::ServerReadyResponse>, Status> {
        Ok(Response::new(proto::ServerReadyResponse { ready: true }))
    }

    async fn model_ready(
        &self,
        request: Request<proto::ModelReadyRequest>,
    ) -> Result<Response<proto::ModelReadyResponse>, Status> {
        let r = request.into_inner();
        self.check(&r.name, &r.version)?;
        Ok(Response::new(proto::ModelReadyResponse { ready: true }))
    }

    async fn server_metadata(
        &self,
        _: Request<proto::ServerMetadataRequest>,
    ) -> Result<Response<proto::ServerMetadataResponse>, Status> {
        Ok(Response::new(proto::ServerMetadataResponse {
            name: oip::SERVER_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: oip::EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<proto::ModelMetadataRequest>,
    ) -> Result<Response<proto::ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let served = self.0.served(&r.name, &r.version).map_err(status)?;
        let loaded = self.0.loaded(&r.name).map_err(status)?;
        let tensor = |name: String, datatype: &str| TensorMetadata {
            name,
            datatype: datatype.into(),
            shape: vec![-1],
        };
        Ok(Response::new(proto::ModelMetadataResponse {
            name: served.name.clone(),
            versions: loaded.versions.iter().map(|v| v.version.clone()).collect(),
            platform: oip::SERVER_NAME.into(),
            inputs: oip::input_tensors(&served.spec)
                .into_iter()
                .map(|(name, datatype)| tensor(name, datatype))
                .collect(),
            outputs: served
                .spec
                .tasks
                .iter()
                .map(|t| tensor(t.clone(), "FP32"))
                .collect(),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        // tonic's own timer on the same deadline answers CANCELLED; finishing a little earlier
        // lets the client get DEADLINE_EXCEEDED, and the metrics count it.
        let deadline =
            client_deadline(&request).map(|d| d - (d / 10).min(Duration::from_millis(5)));
        let r = request.into_inner();
        let scored = self
            .0
            .infer((&r.model_name, &r.model_version), deadline, |spec| {
                decode(&r, spec)
            })
            .await
            .map_err(status)?;
        Ok(Response::new(response(
            &scored.served.spec,
            &scored.served.name,
            &scored.served.version,
            &scored.request,
            &scored.scores,
            !r.raw_input_contents.is_empty(),
        )))
    }

    async fn model_config(
        &self,
        request: Request<proto::ModelConfigRequest>,
    ) -> Result<Response<proto::ModelConfigResponse>, Status> {
        let r = request.into_inner();
        let config = self.0.config(&r.name, &r.version).map_err(status)?;
        Ok(Response::new(proto::ModelConfigResponse {
            config: Some(config),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<proto::ModelStatisticsRequest>,
    ) -> Result<Response<proto::ModelStatisticsResponse>, Status> {
        let r = request.into_inner();
        let model_stats = self.0.statistics(&r.name, &r.version).map_err(status)?;
        Ok(Response::new(proto::ModelStatisticsResponse {
            model_stats,
        }))
    }

    async fn repository_index(
        &self,
        request: Request<proto::RepositoryIndexRequest>,
    ) -> Result<Response<proto::RepositoryIndexResponse>, Status> {
        let r = request.into_inner();
        let models = self
            .0
            .index(r.ready)
            .into_iter()
            .map(|e| proto::repository_index_response::ModelIndex {
                name: e.name,
                version: e.version,
                state: e.state.into(),
                reason: e.reason,
            })
            .collect();
        Ok(Response::new(proto::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<proto::RepositoryModelLoadRequest>,
    ) -> Result<Response<proto::RepositoryModelLoadResponse>, Status> {
        let r = request.into_inner();
        refuse_parameters(r.parameters.keys())?;
        if !self.0.source.knows(&r.model_name) {
            return Err(Status::not_found(format!(
                "unknown model '{}': not in the model repository",
                r.model_name
            )));
        }
        let app = self.0.clone();
        match tokio::task::spawn_blocking(move || app.load(&r.model_name)).await {
            Ok(Ok(_)) => Ok(Response::new(proto::RepositoryModelLoadResponse {})),
            Ok(Err(e)) => Err(Status::invalid_argument(e.to_string())),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }

    async fn repository_model_unload(
        &self,
        request: Request<proto::RepositoryModelUnloadRequest>,
    ) -> Result<Response<proto::RepositoryModelUnloadResponse>, Status> {
        let r = request.into_inner();
        refuse_parameters(r.parameters.keys())?;
        self.0.unload(&r.model_name).map_err(status)?;
        Ok(Response::new(proto::RepositoryModelUnloadResponse {}))
    }
}

/// Load and unload parameters (Triton's overrides of a configuration or files) are refused
/// rather than ignored.
fn refuse_parameters<'a>(mut keys: impl Iterator<Item = &'a String>) -> Result<(), Status> {
    // unload_dependents (what tritonclient sends) concerns ensembles, which pepnet has not.
    match keys.find(|k| *k != "unload_dependents") {
        Some(key) => Err(Status::invalid_argument(format!(
            "parameters.{key}: load and unload parameters are not supported; the repository's \
             files are what is loaded"
        ))),
        None => Ok(()),
    }
}
