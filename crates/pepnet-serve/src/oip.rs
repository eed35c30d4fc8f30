//! The Open Inference Protocol's (KServe v2) JSON messages for a PEPNet model: the metadata a
//! client reads, the inference request decoded into a [`Batch`], and the response.
//!
//! Tensors, one per feature, each `[N]` (or `[N, 1]`) for N samples:
//! - a sparse feature: its ids, `INT64` (`UINT64` for hashed ids above 2^63; `INT32` and
//!   `UINT32` are accepted too);
//! - a multi-hot feature: two tensors, `<feature>` with every sample's ids one after another
//!   (`[total]`) and `<feature>.lengths` (`[N]`, `INT32` or `INT64`) with each sample's count;
//! - a dense feature: `FP32` (or `FP64`) values.
//!
//! The response has one `FP32` tensor `[N]` per task (those the request's `outputs` names, or
//! all). Every error names the tensor, the element and the rule broken; nothing a client sends
//! can panic the decoder (it is fuzzed).

use std::collections::HashMap;

use serde_json::{json, Value};

use pepnet_core::batch::{Batch, Column};
use pepnet_core::spec::{FeatureKind, ModelSpec};

/// The most samples one request may carry.
pub const MAX_REQUEST_ROWS: usize = 1 << 16;

/// A decoded inference request.
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    /// The request's `id`, echoed in the response.
    pub id: Option<String>,
    pub batch: Batch,
    /// Task indices to return, in the order asked.
    pub outputs: Vec<usize>,
    /// Per output, whether the client asked for it as binary data (HTTP's binary tensor data
    /// extension: `parameters.binary_data` on the output, or `binary_data_output` on the
    /// request); always `false` over gRPC.
    pub binary_outputs: Vec<bool>,
}

/// The HTTP header that splits a body into its JSON part and the binary tensor data after it
/// (the binary tensor data extension).
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The suffix of a multi-hot feature's lengths tensor.
pub const LENGTHS: &str = ".lengths";

/// The model's input tensors: name and datatype, each of shape `[-1]`.
pub fn input_tensors(spec: &ModelSpec) -> Vec<(String, &'static str)> {
    let mut inputs = Vec::new();
    for f in &spec.features {
        let datatype = match f.kind {
            FeatureKind::Dense => "FP32",
            _ if f.hashed => "UINT64",
            _ => "INT64",
        };
        inputs.push((f.name.clone(), datatype));
        if f.kind == FeatureKind::MultiHot {
            inputs.push((format!("{}{LENGTHS}", f.name), "INT32"));
        }
    }
    inputs
}

/// The server's metadata (`GET /v2`, gRPC `ServerMetadata`): name, version, and the protocol
/// extensions it implements.
pub fn server_metadata() -> Value {
    json!({"name": SERVER_NAME, "version": env!("CARGO_PKG_VERSION"), "extensions": EXTENSIONS})
}

/// The protocol extensions the server implements, by Triton's names.
pub const EXTENSIONS: [&str; 4] = [
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "statistics",
];

/// The server's name in its metadata.
pub const SERVER_NAME: &str = "pepnet";

/// The model's metadata (`GET /v2/models/{name}`), with the versions served.
pub fn metadata(spec: &ModelSpec, name: &str, versions: &[&str]) -> Value {
    let inputs: Vec<Value> = input_tensors(spec)
        .into_iter()
        .map(|(name, datatype)| json!({"name": name, "datatype": datatype, "shape": [-1]}))
        .collect();
    let outputs: Vec<Value> = spec
        .tasks
        .iter()
        .map(|t| json!({"name": t, "datatype": "FP32", "shape": [-1]}))
        .collect();
    json!({
        "name": name,
        "versions": versions,
        "platform": "pepnet",
        "inputs": inputs,
        "outputs": outputs,
    })
}

/// The response to a request: one `[N]` FP32 tensor per output asked for.
pub fn response(
    spec: &ModelSpec,
    name: &str,
    version: &str,
    request: &InferRequest,
    scores: &[f32],
) -> Value {
    let t = spec.n_tasks();
    let n = scores.len() / t;
    let outputs: Vec<Value> = request
        .outputs
        .iter()
        .map(|&task| {
            let data: Vec<f32> = (0..n).map(|i| scores[i * t + task]).collect();
            json!({"name": spec.tasks[task], "datatype": "FP32", "shape": [n], "data": data})
        })
        .collect();
    let mut out = json!({"model_name": name, "model_version": version, "outputs": outputs});
    if let Some(id) = &request.id {
        out["id"] = json!(id);
    }
    out
}

/// The response as the binary tensor data extension sends it: the JSON header (outputs asked
/// for as binary carry `parameters.binary_data_size` instead of `data`), then those outputs'
/// f32s, little-endian, in output order. Returns the body and the header's length, for the
/// `Inference-Header-Content-Length` header.
pub fn binary_response(
    spec: &ModelSpec,
    name: &str,
    version: &str,
    request: &InferRequest,
    scores: &[f32],
) -> (Vec<u8>, usize) {
    let t = spec.n_tasks();
    let n = scores.len() / t;
    let mut tail = Vec::with_capacity(4 * n * request.outputs.len());
    let outputs: Vec<OutputHeader> = request
        .outputs
        .iter()
        .zip(&request.binary_outputs)
        .map(|(&task, &binary)| {
            let values = (0..n).map(|i| scores[i * t + task]);
            let (parameters, data) = match binary {
                true => {
                    tail.extend(values.flat_map(f32::to_le_bytes));
                    (
                        Some(BinarySize {
                            binary_data_size: 4 * n,
                        }),
                        None,
                    )
                }
                false => (None, Some(values.collect())),
            };
            OutputHeader {
                name: &spec.tasks[task],
                datatype: "FP32",
                shape: [n],
                parameters,
                data,
            }
        })
        .collect();
    let header = ResponseHeader {
        model_name: name,
        model_version: version,
        id: request.id.as_deref(),
        outputs,
    };
    let mut body = serde_json::to_vec(&header).expect("a response always serialises");
    let header_length = body.len();
    body.extend(tail);
    (body, header_length)
}

/// A binary response's JSON header, written straight from these fields (no tree of values).
#[derive(serde::Serialize)]
struct ResponseHeader<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputHeader<'a>>,
}

#[derive(serde::Serialize)]
struct OutputHeader<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: [usize; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Vec<f32>>,
}

#[derive(serde::Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

/// The request for `batch` as the binary tensor data extension sends it (what tritonclient and
/// the KServe SDK send by default): the JSON header, every input's `parameters.binary_data_size`
/// instead of `data`, then the inputs' little-endian bytes in order; every output asked for as
/// binary. Returns the body and the header's length (for `Inference-Header-Content-Length`).
pub fn binary_request(spec: &ModelSpec, batch: &Batch, id: Option<&str>) -> (Vec<u8>, usize) {
    let mut header = request(spec, batch, id);
    let mut tail = Vec::new();
    for input in header["inputs"].as_array_mut().expect("inputs is a list") {
        let object = input.as_object_mut().expect("an input is an object");
        let datatype = object["datatype"].as_str().expect("a datatype").to_string();
        let data = object.remove("data").expect("data");
        let start = tail.len();
        for v in data.as_array().expect("flat data") {
            match datatype.as_str() {
                "UINT64" => tail.extend(v.as_u64().expect("u64").to_le_bytes()),
                "INT64" => tail.extend(v.as_i64().expect("i64").to_le_bytes()),
                "INT32" => tail.extend((v.as_i64().expect("i32") as i32).to_le_bytes()),
                _ => tail.extend((v.as_f64().expect("f32") as f32).to_le_bytes()),
            }
        }
        object.insert(
            "parameters".into(),
            json!({"binary_data_size": tail.len() - start}),
        );
    }
    header["parameters"] = json!({"binary_data_output": true});
    let mut body = serde_json::to_vec(&header).expect("a request always serialises");
    let header_length = body.len();
    body.extend(tail);
    (body, header_length)
}

/// The request a client would send for `batch` (the inverse of [`decode`]), e.g. for a load
/// generator or a test.
pub fn request(spec: &ModelSpec, batch: &Batch, id: Option<&str>) -> Value {
    let mut inputs = Vec::new();
    for (f, column) in spec.features.iter().zip(&batch.columns) {
        let id_type = if f.hashed { "UINT64" } else { "INT64" };
        let tensor = |name: String, datatype: &str, data: Value, n: usize| json!({"name": name, "datatype": datatype, "shape": [n], "data": data});
        match column {
            Column::Sparse(ids) => {
                inputs.push(tensor(f.name.clone(), id_type, json!(ids), ids.len()))
            }
            Column::Dense(values) => {
                inputs.push(tensor(f.name.clone(), "FP32", json!(values), values.len()))
            }
            Column::MultiHot { offsets, ids } => {
                let lengths: Vec<usize> = offsets.windows(2).map(|w| w[1] - w[0]).collect();
                inputs.push(tensor(f.name.clone(), id_type, json!(ids), ids.len()));
                inputs.push(tensor(
                    format!("{}{LENGTHS}", f.name),
                    "INT32",
                    json!(lengths),
                    lengths.len(),
                ));
            }
        }
    }
    let mut out = json!({ "inputs": inputs });
    if let Some(id) = id {
        out["id"] = json!(id);
    }
    out
}

/// One element of an input tensor, whatever the protocol carried it in.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Element<'a> {
    Int(i128),
    Float(f64),
    /// A JSON value that is not a number (a string, a bool, null, an object).
    NotANumber(&'a Value),
}

impl std::fmt::Display for Element<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Element::Int(i) => write!(f, "{i}"),
            Element::Float(x) => write!(f, "{x:?}"),
            Element::NotANumber(v) => write!(f, "{v}"),
        }
    }
}

impl<'a> From<&'a Value> for Element<'a> {
    fn from(v: &'a Value) -> Self {
        match (v.as_u64(), v.as_i64(), v.as_f64()) {
            (Some(u), _, _) => Element::Int(u.into()),
            (_, Some(i), _) => Element::Int(i.into()),
            (_, _, Some(x)) => Element::Float(x),
            _ => Element::NotANumber(v),
        }
    }
}

/// An input tensor's elements as they came, borrowed where the protocol carries them typed:
/// JSON values read one by one, little-endian bytes of the tensor's datatype (HTTP's binary
/// data, gRPC's raw contents), or a gRPC contents field. Nothing is copied until each is
/// converted, once, into the batch's column.
pub(crate) enum Data<'a> {
    Elements(Vec<Element<'a>>),
    /// Little-endian elements of `size` bytes each (a whole number of them).
    Bytes(&'a [u8], usize),
    I32(&'a [i32]),
    U32(&'a [u32]),
    I64(&'a [i64]),
    U64(&'a [u64]),
    F32(&'a [f32]),
    F64(&'a [f64]),
}

impl Data<'_> {
    fn len(&self) -> usize {
        match self {
            Data::Elements(v) => v.len(),
            Data::Bytes(b, size) => b.len() / size,
            Data::I32(v) => v.len(),
            Data::U32(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::U64(v) => v.len(),
            Data::F32(v) => v.len(),
            Data::F64(v) => v.len(),
        }
    }
}

/// One input tensor as sent, in either protocol.
pub(crate) struct Tensor<'a> {
    pub name: &'a str,
    pub shape: Vec<u64>,
    pub datatype: &'a str,
    pub data: Data<'a>,
}

impl<'a> Tensor<'a> {
    /// The tensor, if its shape holds exactly the elements sent.
    pub fn new(
        name: &'a str,
        shape: Vec<u64>,
        datatype: &'a str,
        data: Data<'a>,
    ) -> Result<Self, String> {
        shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&e| e == data.len() as u64)
            .ok_or_else(|| {
                format!(
                    "input tensor '{name}': shape {shape:?} does not match its {} values",
                    data.len()
                )
            })?;
        Ok(Self {
            name,
            shape,
            datatype,
            data,
        })
    }
}

/// Decodes an inference request's JSON body against the model; the error says what is wrong,
/// naming the tensor and element.
pub fn decode(body: &[u8], spec: &ModelSpec) -> Result<InferRequest, String> {
    decode_http(body, None, spec)
}

/// Decodes an HTTP inference request: JSON, or, with the binary tensor data extension, a JSON
/// header of `header_length` bytes (the `Inference-Header-Content-Length` header) followed by
/// the tensors whose `parameters.binary_data_size` says so, little-endian, in input order.
/// Every size must agree with the bytes and the shape; the error names the tensor.
pub fn decode_http(
    body: &[u8],
    header_length: Option<usize>,
    spec: &ModelSpec,
) -> Result<InferRequest, String> {
    let (json, binary) = match header_length {
        None => (body, &[][..]),
        Some(n) if n <= body.len() => body.split_at(n),
        Some(n) => {
            return Err(format!(
                "Inference-Header-Content-Length is {n}, past the body's {} bytes",
                body.len()
            ))
        }
    };
    if header_length.is_some() {
        if let Ok(header) = serde_json::from_slice::<BinaryHeader>(json) {
            if header.inputs.iter().all(|i| !i.data) {
                return decode_binary(header, binary, spec);
            }
        }
    }
    decode_value(json, binary, spec)
}

/// The general path of [`decode_http`]: the JSON part read into a tree of values, then the
/// tensors from it (their data inline, or binary from `binary`).
fn decode_value(json: &[u8], binary: &[u8], spec: &ModelSpec) -> Result<InferRequest, String> {
    let value: Value =
        serde_json::from_slice(json).map_err(|e| format!("the body is not JSON: {e}"))?;
    // (A binding of its own, whose lifetime may shrink to the tree's, which tensors borrow.)
    let mut binary: &[u8] = binary;
    let object = value
        .as_object()
        .ok_or("the body must be a JSON object with 'inputs'")?;
    let id = match object.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("'id' must be a string".into()),
    };
    let inputs = object
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or("'inputs' must be a list of tensors")?;
    let tensors = inputs
        .iter()
        .enumerate()
        .map(|(i, input)| read_tensor(i, input, &mut binary))
        .collect::<Result<Vec<_>, _>>()?;
    if !binary.is_empty() {
        return Err(leftover(binary.len()));
    }
    let all_binary = flag(object.get("parameters"), "binary_data_output", "parameters")?;
    let (outputs, binary_outputs) = match object.get("outputs") {
        None | Some(Value::Null) => (None, None),
        Some(Value::Array(list)) => {
            let names = list
                .iter()
                .enumerate()
                .map(|(i, o)| {
                    o.get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| format!("outputs[{i}] needs a 'name'"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let binary = list
                .iter()
                .enumerate()
                .map(|(i, o)| {
                    let at = format!("outputs[{i}].parameters");
                    let own = flag(o.get("parameters"), "binary_data", &at)?;
                    Ok(own.or(all_binary).unwrap_or(false))
                })
                .collect::<Result<Vec<_>, String>>()?;
            (Some(names), Some(binary))
        }
        Some(_) => return Err("'outputs' must be a list of {\"name\": ...}".into()),
    };
    let mut request = assemble(spec, id, tensors, outputs)?;
    request.binary_outputs =
        binary_outputs.unwrap_or_else(|| vec![all_binary.unwrap_or(false); request.outputs.len()]);
    Ok(request)
}

/// A boolean parameter `key` of `parameters` (an object, if present); `at` names it in errors.
fn flag(parameters: Option<&Value>, key: &str, at: &str) -> Result<Option<bool>, String> {
    match parameters.and_then(|p| p.get(key)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(format!("{at}.{key} must be true or false, found {other}")),
    }
}

/// Builds the request from its tensors, in either protocol: one tensor (two for a multi-hot
/// feature) per feature, the same number of samples in each, every element valid for its
/// feature; `outputs` names the tasks to return (`None`: all).
pub(crate) fn assemble(
    spec: &ModelSpec,
    id: Option<String>,
    inputs: Vec<Tensor>,
    outputs: Option<Vec<&str>>,
) -> Result<InferRequest, String> {
    let mut tensors: HashMap<&str, Tensor> = HashMap::new();
    for tensor in inputs {
        if let Some(before) = tensors.insert(tensor.name, tensor) {
            return Err(format!("input tensor '{}' is given twice", before.name));
        }
    }
    let known = |name: &str| {
        spec.features.iter().any(|f| {
            f.name == name
                || (f.kind == FeatureKind::MultiHot
                    && name.strip_suffix(LENGTHS) == Some(f.name.as_str()))
        })
    };
    if let Some(name) = tensors.keys().find(|n| !known(n)) {
        let expected: Vec<String> = input_tensors(spec).into_iter().map(|(n, _)| n).collect();
        return Err(format!(
            "unknown input tensor '{name}'; the model's inputs are {expected:?}"
        ));
    }
    // Every per-sample tensor must have the same N.
    let mut rows: Option<usize> = None;
    let mut samples = |n: usize, tensor: &str| -> Result<(), String> {
        match rows.replace(n) {
            Some(m) if m != n => Err(format!(
                "input tensor '{tensor}' has {n} samples, the others {m}; every feature needs \
                 one value (or list) per sample"
            )),
            _ => Ok(()),
        }
    };
    let mut columns = Vec::with_capacity(spec.features.len());
    for f in &spec.features {
        let t = tensors
            .get(f.name.as_str())
            .ok_or_else(|| format!("input tensor '{}' is missing", f.name))?;
        let column = match f.kind {
            FeatureKind::Sparse => {
                let n = per_sample(t)?;
                samples(n, t.name)?;
                Column::Sparse(ids(t, f.hashed)?)
            }
            FeatureKind::Dense => {
                let n = per_sample(t)?;
                samples(n, t.name)?;
                Column::Dense(floats(t)?)
            }
            FeatureKind::MultiHot => {
                let lengths_name = format!("{}{LENGTHS}", f.name);
                let l = tensors.get(lengths_name.as_str()).ok_or_else(|| {
                    format!(
                        "input tensor '{lengths_name}' is missing: a multi-hot feature is two \
                         tensors, '{}' (every sample's ids, one after another) and \
                         '{lengths_name}' (each sample's count)",
                        f.name
                    )
                })?;
                let n = per_sample(l)?;
                samples(n, l.name)?;
                if t.shape.len() != 1 {
                    return Err(format!(
                        "input tensor '{}': shape {:?}, expected [total ids]",
                        t.name, t.shape
                    ));
                }
                let lengths = counts(l)?;
                let all = ids(t, f.hashed)?;
                let total: u64 = lengths.iter().map(|&c| c as u64).sum();
                if total != all.len() as u64 {
                    return Err(format!(
                        "input tensor '{lengths_name}' counts {total} ids in all, but '{}' holds {}",
                        f.name,
                        all.len()
                    ));
                }
                let mut offsets = Vec::with_capacity(lengths.len() + 1);
                offsets.push(0);
                for c in lengths {
                    offsets.push(offsets.last().expect("starts at 0") + c);
                }
                Column::MultiHot { offsets, ids: all }
            }
        };
        columns.push(column);
    }
    let outputs: Vec<usize> = match outputs {
        None => (0..spec.n_tasks()).collect(),
        Some(names) => names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                spec.tasks.iter().position(|t| t == name).ok_or_else(|| {
                    format!(
                        "outputs[{i}]: unknown output '{name}'; the model's outputs are {:?}",
                        spec.tasks
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let batch = Batch::new(columns);
    batch
        .validate(spec, "request", 1)
        .map_err(|e| e.to_string().replace("request: row ", "sample "))?;
    let binary_outputs = vec![false; outputs.len()];
    Ok(InferRequest {
        id,
        batch,
        outputs,
        binary_outputs,
    })
}

fn read_tensor<'a>(
    i: usize,
    input: &'a Value,
    binary: &mut &'a [u8],
) -> Result<Tensor<'a>, String> {
    let name = input
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("inputs[{i}] needs a 'name' string"))?;
    let shape = input
        .get("shape")
        .and_then(Value::as_array)
        .and_then(|s| s.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
        .ok_or_else(|| {
            format!("input tensor '{name}': 'shape' must be a list of non-negative integers")
        })?;
    let datatype = input
        .get("datatype")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("input tensor '{name}' needs a 'datatype' string"))?;
    let binary_size = input
        .get("parameters")
        .and_then(|p| p.get("binary_data_size"));
    let data = match (binary_size, input.get("data")) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "input tensor '{name}' has both 'data' and parameters.binary_data_size; give one"
            ))
        }
        (Some(size), None) => {
            let size = size.as_u64().ok_or_else(|| {
                format!(
                    "input tensor '{name}': parameters.binary_data_size must be a non-negative \
                     integer, found {size}"
                )
            })?;
            binary_bytes(name, datatype, size, binary)?
        }
        (None, Some(value)) => {
            let mut data = Vec::new();
            flatten(value, &mut data, 0).map_err(|m| format!("input tensor '{name}': {m}"))?;
            Data::Elements(data)
        }
        (None, None) => return Err(format!("input tensor '{name}' needs 'data'")),
    };
    Tensor::new(name, shape, datatype, data)
}

/// Binary input `name`'s `size` bytes, taken from the front of what is left of the body.
fn binary_bytes<'a>(
    name: &str,
    datatype: &str,
    size: u64,
    binary: &mut &'a [u8],
) -> Result<Data<'a>, String> {
    let size = usize::try_from(size)
        .ok()
        .filter(|&n| n <= binary.len())
        .ok_or_else(|| {
            format!(
                "input tensor '{name}': binary_data_size {size} is past the end of the body ({} \
                 bytes of binary data left)",
                binary.len()
            )
        })?;
    let (bytes, rest) = binary.split_at(size);
    *binary = rest;
    little_endian(name, datatype, bytes)
}

/// The JSON header of a request whose every input is binary, read straight into borrowed
/// fields (no tree of values): the fast path of [`decode_http`]. Anything it does not take as
/// written (another type, a string with escapes, a repeated key, `null` where a number goes)
/// fails it, and the general path reads the request instead, with its own messages.
#[derive(serde::Deserialize)]
struct BinaryHeader<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(borrow)]
    inputs: Vec<BinaryInput<'a>>,
    #[serde(default, borrow)]
    outputs: Option<Vec<BinaryOutput<'a>>>,
    #[serde(default)]
    parameters: Option<OutputFlags>,
}

#[derive(serde::Deserialize)]
struct BinaryInput<'a> {
    name: &'a str,
    shape: Vec<u64>,
    datatype: &'a str,
    #[serde(default)]
    parameters: Option<BinaryParameters>,
    /// Whether `data` is there at all (even `null`): then this is not the fast path's.
    #[serde(default, deserialize_with = "present")]
    data: bool,
}

#[derive(serde::Deserialize)]
struct BinaryParameters {
    #[serde(default, deserialize_with = "some_u64")]
    binary_data_size: Option<u64>,
}

#[derive(serde::Deserialize)]
struct BinaryOutput<'a> {
    name: &'a str,
    #[serde(default)]
    parameters: Option<BinaryFlag>,
}

#[derive(serde::Deserialize)]
struct BinaryFlag {
    binary_data: Option<bool>,
}

#[derive(serde::Deserialize)]
struct OutputFlags {
    binary_data_output: Option<bool>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

/// A u64 that must be one (`null` fails, unlike a plain `Option<u64>`).
fn some_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    u64::deserialize(d).map(Some)
}

use serde::Deserialize;

/// Decodes a request whose header [`BinaryHeader`] read: the same checks, in the same order and
/// words, as the general path.
fn decode_binary(
    header: BinaryHeader,
    mut binary: &[u8],
    spec: &ModelSpec,
) -> Result<InferRequest, String> {
    let mut tensors = Vec::with_capacity(header.inputs.len());
    for input in header.inputs {
        let (name, datatype) = (input.name, input.datatype);
        let size = input.parameters.and_then(|p| p.binary_data_size);
        let Some(size) = size else {
            return Err(format!("input tensor '{name}' needs 'data'"));
        };
        let data = binary_bytes(name, datatype, size, &mut binary)?;
        tensors.push(Tensor::new(name, input.shape, datatype, data)?);
    }
    if !binary.is_empty() {
        return Err(leftover(binary.len()));
    }
    let all_binary = header.parameters.and_then(|p| p.binary_data_output);
    let (outputs, binary_outputs) = match header.outputs {
        None => (None, None),
        Some(list) => {
            let binary = list
                .iter()
                .map(|o| {
                    let own = o.parameters.as_ref().and_then(|p| p.binary_data);
                    own.or(all_binary).unwrap_or(false)
                })
                .collect();
            (Some(list.iter().map(|o| o.name).collect()), Some(binary))
        }
    };
    let mut request = assemble(spec, header.id, tensors, outputs)?;
    request.binary_outputs =
        binary_outputs.unwrap_or_else(|| vec![all_binary.unwrap_or(false); request.outputs.len()]);
    Ok(request)
}

/// The error for binary data left after the last input's.
fn leftover(bytes: usize) -> String {
    format!(
        "{bytes} bytes of binary tensor data follow the last input's; each binary input's \
         parameters.binary_data_size must count its bytes"
    )
}

/// The element types pepnet reads as bytes, and the size of one.
pub(crate) fn element_bytes(datatype: &str) -> Option<usize> {
    match datatype {
        "INT32" | "UINT32" | "FP32" => Some(4),
        "INT64" | "UINT64" | "FP64" => Some(8),
        _ => None,
    }
}

/// The datatypes pepnet reads, for error messages.
pub(crate) const READABLE: &str = "INT64, UINT64, INT32, UINT32, FP32 or FP64";

/// The elements of tensor `name` sent as little-endian `datatype` bytes (gRPC's raw contents,
/// HTTP's binary tensor data).
pub(crate) fn little_endian<'a>(
    name: &str,
    datatype: &str,
    bytes: &'a [u8],
) -> Result<Data<'a>, String> {
    let size = element_bytes(datatype).ok_or_else(|| {
        format!("input tensor '{name}': datatype {datatype}, expected {READABLE}")
    })?;
    if !bytes.len().is_multiple_of(size) {
        return Err(format!(
            "input tensor '{name}': {} bytes of binary data are not a whole number of \
             {datatype} elements ({size} bytes each)",
            bytes.len()
        ));
    }
    Ok(Data::Bytes(bytes, size))
}

/// Converts every element of `t` with `f` (given its index), in order, stopping at the first
/// error. Each source is read in a loop of its own type: binary bytes and typed contents cost
/// a load and a check per element.
fn convert<T>(
    t: &Tensor,
    mut f: impl FnMut(usize, Element) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    let mut out = Vec::with_capacity(t.data.len());
    macro_rules! each {
        ($values:expr, $element:expr) => {
            for (i, v) in $values.enumerate() {
                out.push(f(i, $element(v))?);
            }
        };
    }
    macro_rules! le {
        ($bytes:expr, $ty:ty, $element:expr) => {
            each!(
                $bytes
                    .chunks_exact(std::mem::size_of::<$ty>())
                    .map(|c| <$ty>::from_le_bytes(c.try_into().expect("whole elements"))),
                $element
            )
        };
    }
    let int = |v: i128| Element::Int(v);
    match &t.data {
        Data::Elements(v) => each!(v.iter().copied(), |e| e),
        Data::Bytes(b, _) => match t.datatype {
            "INT32" => le!(b, i32, |v: i32| int(v.into())),
            "UINT32" => le!(b, u32, |v: u32| int(v.into())),
            "INT64" => le!(b, i64, |v: i64| int(v.into())),
            "UINT64" => le!(b, u64, |v: u64| int(v.into())),
            "FP32" => le!(b, f32, |v: f32| Element::Float(v.into())),
            _ => le!(b, f64, Element::Float),
        },
        Data::I32(v) => each!(v.iter(), |&v: &i32| int(v.into())),
        Data::U32(v) => each!(v.iter(), |&v: &u32| int(v.into())),
        Data::I64(v) => each!(v.iter(), |&v: &i64| int(v.into())),
        Data::U64(v) => each!(v.iter(), |&v: &u64| int(v.into())),
        Data::F32(v) => each!(v.iter(), |&v: &f32| Element::Float(v.into())),
        Data::F64(v) => each!(v.iter(), |&v: &f64| Element::Float(v)),
    }
    Ok(out)
}

/// The values of `data`, nested lists read in row-major order.
fn flatten<'a>(value: &'a Value, out: &mut Vec<Element<'a>>, depth: usize) -> Result<(), String> {
    match value {
        Value::Array(items) if depth < 8 => items
            .iter()
            .try_for_each(|item| flatten(item, out, depth + 1)),
        Value::Array(_) => Err("'data' is nested too deeply".into()),
        scalar => {
            out.push(scalar.into());
            Ok(())
        }
    }
}

/// Samples of a per-sample tensor: shape `[N]` or `[N, 1]`.
fn per_sample(t: &Tensor) -> Result<usize, String> {
    match t.shape.as_slice() {
        [n] | [n, 1] if *n as usize <= MAX_REQUEST_ROWS => Ok(*n as usize),
        [n] | [n, 1] => Err(format!(
            "input tensor '{}': {n} samples, more than one request may carry ({MAX_REQUEST_ROWS})",
            t.name
        )),
        other => Err(format!(
            "input tensor '{}': shape {other:?}, expected [N] or [N, 1] for N samples",
            t.name
        )),
    }
}

fn ids(t: &Tensor, hashed: bool) -> Result<Vec<u64>, String> {
    let signed = match t.datatype {
        "INT64" | "INT32" => true,
        "UINT64" | "UINT32" => false,
        other => {
            return Err(format!(
            "input tensor '{}': datatype {other}, expected INT64 (or UINT64, INT32, UINT32) ids",
            t.name
        ))
        }
    };
    if let Some(ids) = ids_in_place(t, hashed) {
        return Ok(ids);
    }
    convert(t, |i, v| {
        let bad = |why: &str| format!("input tensor '{}', element {i}: {v} {why}", t.name);
        match v {
            Element::Int(u)
                if u >= 0
                    && u <= if signed {
                        i64::MAX as i128
                    } else {
                        u64::MAX as i128
                    } =>
            {
                Ok(u as u64)
            }
            Element::Int(s) if signed && s >= i64::MIN as i128 && s < 0 => match hashed {
                true => Ok(s as i64 as u64),
                false => Err(bad("is negative; ids are not")),
            },
            _ => Err(bad(&format!(
                "is not an integer of datatype {}",
                t.datatype
            ))),
        }
    })
}

/// The ids of a tensor of 64-bit ids as bytes or typed contents (what every client sends), read
/// in one pass with no per-element branch but the sign; `None` when a signed id is negative
/// for a vocabulary feature (then [`ids`]' general path names it) or for any other datatype.
fn ids_in_place(t: &Tensor, hashed: bool) -> Option<Vec<u64>> {
    // Hashed ids are 64-bit patterns: a negative INT64 is the same id as its UINT64; a
    // vocabulary id must not be negative.
    let signed_fit = |ids: &[u64]| hashed || ids.iter().all(|&x| (x as i64) >= 0);
    match (&t.data, t.datatype) {
        (Data::Bytes(b, 8), "UINT64") => Some(le_u64(b)),
        (Data::Bytes(b, 8), "INT64") => Some(le_u64(b)).filter(|ids| signed_fit(ids)),
        (Data::U64(v), _) => Some(v.to_vec()),
        (Data::I64(v), _) => {
            (hashed || v.iter().all(|&x| x >= 0)).then(|| v.iter().map(|&x| x as u64).collect())
        }
        _ => None,
    }
}

/// Little-endian 8-byte words.
fn le_u64(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

fn counts(t: &Tensor) -> Result<Vec<usize>, String> {
    if !matches!(t.datatype, "INT32" | "INT64" | "UINT32" | "UINT64") {
        return Err(format!(
            "input tensor '{}': datatype {}, expected INT32 or INT64 counts",
            t.name, t.datatype
        ));
    }
    // INT32 counts as bytes or contents, read in one pass; one out of range goes to the general
    // path, which names it.
    let limit = MAX_REQUEST_ROWS as i64 * 64;
    let fast: Option<Vec<i32>> = match (&t.data, t.datatype) {
        (Data::Bytes(b, 4), "INT32") => Some(
            b.chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
        ),
        (Data::I32(v), _) => Some(v.to_vec()),
        _ => None,
    };
    if let Some(c) = fast.filter(|c| c.iter().all(|&c| (0..=limit).contains(&(c as i64)))) {
        return Ok(c.into_iter().map(|c| c as usize).collect());
    }
    convert(t, |i, v| {
        match v {
            Element::Int(c) if (0..=MAX_REQUEST_ROWS as i128 * 64).contains(&c) => Some(c as usize),
            _ => None,
        }
        .ok_or_else(|| {
            format!(
                "input tensor '{}', element {i}: {v} is not a count (a non-negative integer)",
                t.name
            )
        })
    })
}

fn floats(t: &Tensor) -> Result<Vec<f32>, String> {
    if !matches!(t.datatype, "FP32" | "FP64") {
        return Err(format!(
            "input tensor '{}': datatype {}, expected FP32 (or FP64) values",
            t.name, t.datatype
        ));
    }
    // FP32 values as bytes or contents, read in one pass; one not finite goes to the general
    // path, which names it.
    let fast: Option<Vec<f32>> = match (&t.data, t.datatype) {
        (Data::Bytes(b, 4), "FP32") => Some(
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
        ),
        (Data::F32(v), _) => Some(v.to_vec()),
        _ => None,
    };
    if let Some(v) = fast.filter(|v| v.iter().all(|x| x.is_finite())) {
        return Ok(v);
    }
    convert(t, |i, v| {
        let x = match v {
            Element::Int(i) => i as f64,
            Element::Float(x) => x,
            Element::NotANumber(_) => {
                return Err(format!(
                    "input tensor '{}', element {i}: {v} is not a number",
                    t.name
                ))
            }
        };
        let y = x as f32;
        match (x.is_finite(), y.is_finite()) {
            (true, true) => Ok(y),
            (false, _) => Err(format!(
                "input tensor '{}', element {i}: {x}; values must be finite",
                t.name
            )),
            (true, false) => Err(format!(
                "input tensor '{}', element {i}: {x} does not fit an f32",
                t.name
            )),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"{
      "embedding_dim": 4, "domain_feature": "tab", "tasks": ["click", "like"],
      "features": [
        {"name": "tab", "kind": "sparse", "vocab": 3, "roles": ["domain"]},
        {"name": "user", "kind": "sparse", "hashed": true, "roles": ["general"]},
        {"name": "tags", "kind": "multi_hot", "vocab": 9, "max_len": 3, "pooling": "sum", "roles": ["general"]},
        {"name": "dur", "kind": "dense", "roles": ["general"]}
      ],
      "towers": [3]
    }"#;

    fn spec() -> ModelSpec {
        ModelSpec::from_json(SPEC, "spec").unwrap()
    }

    /// The binary header's fast path decodes every request as the general path does: the same
    /// request, or the same error word for word.
    #[test]
    fn the_binary_fast_path_agrees_with_the_general_path() {
        let spec = spec();
        let batch = pepnet_core::synth::random_batch(&spec, 5, 3);
        let (body, n) = binary_request(&spec, &batch, Some("r"));
        let header: Value = serde_json::from_slice(&body[..n]).unwrap();
        let tail = body[n..].to_vec();
        let with = |edit: &dyn Fn(&mut Value), tail: &[u8]| {
            let mut h = header.clone();
            edit(&mut h);
            let mut body = serde_json::to_vec(&h).unwrap();
            let n = body.len();
            body.extend_from_slice(tail);
            (body, n)
        };
        let size = |i: usize| header["inputs"][i]["parameters"]["binary_data_size"].clone();
        let cases: Vec<(&str, (Vec<u8>, usize))> = vec![
            ("as sent", (body.clone(), n)),
            ("truncated", (body[..body.len() - 3].to_vec(), n)),
            (
                "bytes left over",
                with(&|_| {}, &[tail.as_slice(), &[0; 8]].concat()),
            ),
            (
                "size past the end",
                with(
                    &|h| h["inputs"][0]["parameters"]["binary_data_size"] = json!(1 << 20),
                    &tail,
                ),
            ),
            (
                "size not whole",
                with(
                    &|h| {
                        h["inputs"][0]["parameters"]["binary_data_size"] =
                            json!(size(0).as_u64().unwrap() - 1)
                    },
                    &tail,
                ),
            ),
            (
                "size null",
                with(
                    &|h| h["inputs"][1]["parameters"]["binary_data_size"] = Value::Null,
                    &tail,
                ),
            ),
            (
                "no size",
                with(&|h| h["inputs"][1]["parameters"] = json!({}), &tail),
            ),
            (
                "shape disagrees",
                with(&|h| h["inputs"][0]["shape"] = json!([4]), &tail),
            ),
            (
                "negative shape",
                with(&|h| h["inputs"][0]["shape"] = json!([-5]), &tail),
            ),
            (
                "wrong datatype",
                with(&|h| h["inputs"][0]["datatype"] = json!("FP16"), &tail),
            ),
            (
                "escaped name",
                with(&|h| h["inputs"][0]["name"] = json!("ta\"b"), &tail),
            ),
            (
                "unknown output",
                with(&|h| h["outputs"] = json!([{"name": "nope"}]), &tail),
            ),
            (
                "one output binary",
                with(
                    &|h| h["outputs"] = json!([{"name": "like", "parameters": {"binary_data": true}}, {"name": "click"}]),
                    &tail,
                ),
            ),
            (
                "flag not a bool",
                with(
                    &|h| h["parameters"] = json!({"binary_data_output": 1}),
                    &tail,
                ),
            ),
            ("id a number", with(&|h| h["id"] = json!(7), &tail)),
            (
                "data as well",
                with(&|h| h["inputs"][0]["data"] = Value::Null, &tail),
            ),
        ];
        for (what, (body, n)) in cases {
            let general = decode_value(&body[..n], &body[n..], &spec);
            assert_eq!(decode_http(&body, Some(n), &spec), general, "{what}");
        }
    }

    #[test]
    fn a_batch_encoded_as_a_request_decodes_to_itself() {
        let spec = spec();
        for n in [0, 1, 7] {
            let batch = pepnet_core::synth::random_batch(&spec, n, n as u64);
            let body = serde_json::to_vec(&request(&spec, &batch, Some("x"))).unwrap();
            let decoded = decode(&body, &spec).unwrap();
            assert_eq!(decoded.batch, batch);
            assert_eq!(decoded.id.as_deref(), Some("x"));
            assert_eq!(decoded.outputs, [0, 1]);
        }
    }

    #[test]
    fn nested_data_signed_hashed_ids_and_chosen_outputs() {
        let body = br#"{"inputs": [
            {"name": "tab", "datatype": "INT32", "shape": [2, 1], "data": [[0], [2]]},
            {"name": "user", "datatype": "INT64", "shape": [2], "data": [-1, 5]},
            {"name": "tags", "datatype": "INT64", "shape": [3], "data": [1, 2, 8]},
            {"name": "tags.lengths", "datatype": "INT32", "shape": [2], "data": [0, 3]},
            {"name": "dur", "datatype": "FP64", "shape": [2], "data": [0.5, -1]}
        ], "outputs": [{"name": "like"}]}"#;
        let r = decode(body, &spec()).unwrap();
        assert_eq!(r.batch.columns[0], Column::Sparse(vec![0, 2]));
        // A signed hashed id keeps its 64 bits, as the Parquet reader reads it.
        assert_eq!(r.batch.columns[1], Column::Sparse(vec![u64::MAX, 5]));
        assert_eq!(
            r.batch.columns[2],
            Column::MultiHot {
                offsets: vec![0, 0, 3],
                ids: vec![1, 2, 8]
            }
        );
        assert_eq!(r.outputs, [1]);
        let out = response(&spec(), "m", "1", &r, &[0.1, 0.2, 0.3, 0.4]);
        assert_eq!(out["outputs"][0]["name"], "like");
        assert_eq!(
            out["outputs"][0]["data"],
            serde_json::json!([0.2f32, 0.4f32])
        );
    }

    #[test]
    fn a_list_longer_than_max_len_names_the_sample_and_feature() {
        let body = br#"{"inputs": [
            {"name": "tab", "datatype": "INT64", "shape": [1], "data": [0]},
            {"name": "user", "datatype": "UINT64", "shape": [1], "data": [18446744073709551615]},
            {"name": "tags", "datatype": "INT64", "shape": [4], "data": [1, 2, 3, 4]},
            {"name": "tags.lengths", "datatype": "INT64", "shape": [1], "data": [4]},
            {"name": "dur", "datatype": "FP32", "shape": [1], "data": [0.5]}
        ]}"#;
        let e = decode(body, &spec()).unwrap_err();
        assert!(e.contains("sample 1") && e.contains("'tags'"), "{e}");
    }
}
