//! The model configuration extension: a model's configuration in Triton's shape (inputs with
//! datatype and dims, outputs, max batch size, dynamic batching, version policy), what
//! perf_analyzer and Triton's clients read before they send a request.
//!
//! Triton's `max_batch_size` says whether every input's first dimension is the batch: so it is
//! for a model whose inputs are all one value per sample (then it is the most rows a request
//! may carry, and `dims` are `[]`: one value per sample). A model with a multi-hot feature
//! takes that feature's ids as one ragged `[total]` tensor beside `[N]` lengths, which has no
//! batch dimension of Triton's kind: its `max_batch_size` is 0 and every input's dims `[-1]`.
//! Either way the server batches requests by rows (`dynamic_batching`).

use serde_json::{json, Value};

use super::oip::{self, MAX_REQUEST_ROWS};
use super::proto::{
    model_version_policy, DataType, ModelConfig, ModelDynamicBatching, ModelInput, ModelOutput,
    ModelVersionPolicy,
};
use super::repository::VersionPolicy;
use pepnet_core::batcher::BatcherOptions;
use pepnet_core::spec::{FeatureKind, ModelSpec};

/// Triton's name of a datatype in the configuration.
fn data_type(datatype: &str) -> DataType {
    match datatype {
        "INT64" => DataType::TypeInt64,
        "UINT64" => DataType::TypeUint64,
        "INT32" => DataType::TypeInt32,
        "FP32" => DataType::TypeFp32,
        _ => DataType::TypeInvalid,
    }
}

/// The configuration of model `name` of `spec`, served under `policy` by a batcher of
/// `batcher`'s options.
pub(crate) fn model_config(
    name: &str,
    spec: &ModelSpec,
    policy: &VersionPolicy,
    batcher: &BatcherOptions,
) -> ModelConfig {
    let per_sample = spec
        .features
        .iter()
        .all(|f| f.kind != FeatureKind::MultiHot);
    let (max_batch_size, dims) = match per_sample {
        true => (batcher.max_rows.min(MAX_REQUEST_ROWS) as i32, vec![]),
        false => (0, vec![-1]),
    };
    let policy = match policy {
        VersionPolicy::Latest(n) => {
            model_version_policy::PolicyChoice::Latest(model_version_policy::Latest {
                num_versions: *n,
            })
        }
        VersionPolicy::All => model_version_policy::PolicyChoice::All(model_version_policy::All {}),
        VersionPolicy::Specific(v) => {
            model_version_policy::PolicyChoice::Specific(model_version_policy::Specific {
                versions: v.iter().map(|&v| v as i64).collect(),
            })
        }
    };
    ModelConfig {
        name: name.into(),
        platform: oip::SERVER_NAME.into(),
        backend: oip::SERVER_NAME.into(),
        version_policy: Some(ModelVersionPolicy {
            policy_choice: Some(policy),
        }),
        max_batch_size,
        input: oip::input_tensors(spec)
            .into_iter()
            .map(|(name, datatype)| ModelInput {
                name,
                data_type: data_type(datatype) as i32,
                dims: dims.clone(),
                optional: false,
            })
            .collect(),
        output: spec
            .tasks
            .iter()
            .map(|t| ModelOutput {
                name: t.clone(),
                data_type: DataType::TypeFp32 as i32,
                dims: dims.clone(),
            })
            .collect(),
        dynamic_batching: Some(ModelDynamicBatching {
            preferred_batch_size: vec![batcher.max_rows.min(i32::MAX as usize) as i32],
            max_queue_delay_microseconds: batcher.max_delay.as_micros() as u64,
        }),
    }
}

/// The configuration as Triton's HTTP model configuration extension writes it (JSON, with
/// protobuf's field and enum names).
pub(crate) fn to_json(c: &ModelConfig) -> Value {
    let type_name = |t: i32| {
        DataType::try_from(t)
            .unwrap_or(DataType::TypeInvalid)
            .as_str_name()
    };
    let policy = match c
        .version_policy
        .as_ref()
        .and_then(|p| p.policy_choice.as_ref())
    {
        Some(model_version_policy::PolicyChoice::Latest(l)) => {
            json!({"latest": {"num_versions": l.num_versions}})
        }
        Some(model_version_policy::PolicyChoice::Specific(s)) => {
            json!({"specific": {"versions": s.versions}})
        }
        _ => json!({"all": {}}),
    };
    let batching = c.dynamic_batching.clone().unwrap_or_default();
    json!({
        "name": c.name,
        "platform": c.platform,
        "backend": c.backend,
        "version_policy": policy,
        "max_batch_size": c.max_batch_size,
        "input": c.input.iter().map(|i| json!({
            "name": i.name,
            "data_type": type_name(i.data_type),
            "format": "FORMAT_NONE",
            "dims": i.dims,
            "is_shape_tensor": false,
            "allow_ragged_batch": false,
            "optional": i.optional,
        })).collect::<Vec<_>>(),
        "output": c.output.iter().map(|o| json!({
            "name": o.name,
            "data_type": type_name(o.data_type),
            "dims": o.dims,
            "label_filename": "",
            "is_shape_tensor": false,
        })).collect::<Vec<_>>(),
        "dynamic_batching": {
            "preferred_batch_size": batching.preferred_batch_size,
            "max_queue_delay_microseconds": batching.max_queue_delay_microseconds,
        },
    })
}
