//! The model spec (`model.json`): parsing, validation, and the widths every other module derives
//! from it. The contract is `docs/model.md`; this module is its only reader.

use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// What this engine supports. Each bound keeps a product of sizes inside what the kernels
/// index with u32 offsets and one GPU binding holds, so a spec within them never overflows
/// an allocation size.
pub mod limits {
    /// `embedding_dim`.
    pub const EMBEDDING_DIM: usize = 4096;
    /// A multi-hot feature's `max_len`.
    pub const LIST_LEN: usize = 1 << 16;
    /// Any layer width (`towers[i]`, `experts.hidden[i]`, a gate's `hidden`).
    pub const WIDTH: usize = 1 << 16;
    /// The concatenated embeddings of one role (features × embedding_dim).
    pub const CONCAT_WIDTH: usize = 1 << 20;
    /// Tasks, experts, and the layers of the towers and of an expert.
    pub const TASKS: usize = 1024;
    /// Experts (`experts.count`).
    pub const EXPERTS: usize = 1024;
    /// Layers of the towers (`towers`) and of an expert (`experts.hidden`).
    pub const LAYERS: usize = 64;
    /// Elements of one tensor, and of all dense layers together: 4 GiB of f32, the most one
    /// storage binding can address.
    pub const TENSOR_ELEMENTS: u64 = 1 << 30;
    /// `gate_gamma`: a gate scales by less than γ, and L + 1 of them stack.
    pub const GATE_GAMMA: f64 = 64.0;

    /// `w`, the value of spec key `key`, at most [`WIDTH`].
    pub fn check_width(key: &str, w: usize) -> Result<(), String> {
        match w > WIDTH {
            true => Err(format!(
                "key '{key}': {w} is more than this engine supports ({WIDTH})"
            )),
            false => Ok(()),
        }
    }

    /// A list of layers, spec key `key`, at most [`LAYERS`] long.
    pub fn check_layers(key: &str, layers: usize) -> Result<(), String> {
        match layers > LAYERS {
            true => Err(format!(
                "key '{key}': {layers} layers are more than this engine supports ({LAYERS})"
            )),
            false => Ok(()),
        }
    }
}

/// How a feature's values become its d-wide vector (`kind` in `model.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// One id in `[0, vocab)`.
    Sparse,
    /// A list of `0..=max_len` ids, pooled by sum or mean.
    MultiHot,
    /// One float `x`; its vector is `x · v`.
    Dense,
}

/// How a multi-hot feature pools the rows of its ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The sum of the rows.
    Sum,
    /// The mean of the rows (zeros for an empty list).
    Mean,
}

/// Which concatenated input a feature's vector is part of; a feature may have several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Part of E: the main input, which EPNet scales into O_ep.
    General,
    /// Part of E_d, EPNet's domain-side gate input.
    Domain,
    /// Part of E_p, PPNet's personalised prior.
    Prior,
}

/// One input feature: its name, kind, table and roles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// The feature's name: its input column and its tensors' `emb.<name>`.
    pub name: String,
    /// Sparse, multi-hot or dense.
    pub kind: FeatureKind,
    /// Sparse, multi-hot: rows of the table (ids lie in `[0, vocab)`); `None` for a dense or a
    /// hashed feature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab: Option<usize>,
    /// Multi-hot: the most ids one sample lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_len: Option<usize>,
    /// Multi-hot: sum or mean of the rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling: Option<Pooling>,
    /// Raw 64-bit ids (hashes from an unbounded space) instead of a vocabulary: the rows live in
    /// an embedding store keyed by (feature, id) and reach the GPU through the embedding cache.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hashed: bool,
    /// The concatenated inputs the feature's vector is part of (at least one).
    pub roles: Vec<Role>,
}

impl FeatureSpec {
    /// Rows the feature keeps resident on the GPU: `vocab`, 1 for a dense feature's vector `v`,
    /// and 1 for a hashed feature (its default row; the others come through the cache).
    pub fn rows(&self) -> usize {
        match self.kind {
            FeatureKind::Dense => 1,
            _ if self.hashed => 1,
            _ => self.vocab.unwrap_or(0),
        }
    }

    /// Ids are valid in `[0, id_space())`: the vocabulary, or every u64 for a hashed feature.
    pub fn id_space(&self) -> u64 {
        if self.hashed {
            u64::MAX
        } else {
            self.rows() as u64
        }
    }

    /// Whether the feature has `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// A Gate NU's hidden width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateSpec {
    /// Width of the gate's first layer (fc1's outputs).
    pub hidden: usize,
}

/// MMoE's shared experts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpertsSpec {
    /// Experts K.
    pub count: usize,
    /// Widths of each expert's layers, h_1 .. h_e (a ReLU after every one).
    pub hidden: Vec<usize>,
}

fn default_gamma() -> f64 {
    2.0
}

/// How [`crate::Model::init`] draws fresh weights (`init` in `model.json`, recorded there by
/// `init` and `train`). Linear weights are always Xavier-uniform, ±√(6/(fan_in+fan_out)), as the
/// paper initialises them. The default follows the PyTorch reference implementations of
/// PEPNet: embedding rows N(0, 0.05²) and zero biases.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct InitSpec {
    /// Every embedding row (vocabulary tables, and rows a trainer creates for hashed ids).
    #[serde(default)]
    pub embedding: EmbeddingInit,
    /// Every linear layer's bias.
    #[serde(default)]
    pub bias: BiasInit,
}

/// The distribution of a fresh embedding row's elements.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum EmbeddingInit {
    /// N(0, std²).
    Normal {
        /// The standard deviation.
        std: f64,
    },
    /// Uniform in ±bound; ±√(3/d) gives rows of unit expected norm whatever d (pepnet's
    /// scheme before `init` existed, kept by the kernel tests for its large values).
    Uniform {
        /// The largest magnitude.
        bound: f64,
    },
}

impl Default for EmbeddingInit {
    fn default() -> Self {
        Self::Normal { std: 0.05 }
    }
}

/// A fresh bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BiasInit {
    /// Zero.
    #[default]
    Zero,
    /// Uniform in ±1/√fan_in, as PyTorch's `nn.Linear` draws it.
    FanIn,
}

impl InitSpec {
    /// pepnet's first scheme: rows uniform in ±√(3/d), biases ±1/√fan_in.
    pub fn unit_uniform(d: usize) -> Self {
        Self {
            embedding: EmbeddingInit::Uniform {
                bound: (3.0 / d as f64).sqrt(),
            },
            bias: BiasInit::FanIn,
        }
    }

    /// The scale's rule: positive, finite, at most 16.
    fn validate(&self) -> std::result::Result<(), String> {
        let (key, v) = match self.embedding {
            EmbeddingInit::Normal { std } => ("init.embedding.normal.std", std),
            EmbeddingInit::Uniform { bound } => ("init.embedding.uniform.bound", bound),
        };
        match v.is_finite() && v > 0.0 && v <= 16.0 {
            true => Ok(()),
            false => Err(format!("key '{key}': must be in (0, 16], found {v}")),
        }
    }
}

/// The model spec, `model.json`: the architecture every width, tensor and plan derives from
/// (the contract is `docs/model.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// d: the width of every feature's vector.
    pub embedding_dim: usize,
    /// γ: every Gate NU's output lies in (0, γ); 2 by default.
    #[serde(default = "default_gamma")]
    pub gate_gamma: f64,
    /// The sparse feature, with the role `domain`, whose id is the sample's domain.
    pub domain_feature: String,
    /// Task names, in output order (T of them).
    pub tasks: Vec<String>,
    /// Every input feature, in spec order (the order of the concatenations and the columns).
    pub features: Vec<FeatureSpec>,
    /// EPNet's gate; `None` disables EPNet (O_ep = E).
    #[serde(default)]
    pub epnet: Option<GateSpec>,
    /// PPNet's gates (one per tower layer, all alike); `None` disables PPNet (every δ is 1).
    #[serde(default)]
    pub ppnet: Option<GateSpec>,
    /// MMoE's shared experts; `None`: every tower reads O_ep.
    #[serde(default)]
    pub experts: Option<ExpertsSpec>,
    /// Widths w_1 .. w_L of each task tower's hidden layers (the output layer's is 1).
    pub towers: Vec<usize>,
    /// How fresh weights are drawn; absent: [`InitSpec::default`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitSpec>,
}

impl ModelSpec {
    /// The spec as pretty-printed JSON, as `model.json` holds it.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a spec always serialises")
    }

    /// The contract's rules on the spec's own keys (names, kinds, roles, vocabularies);
    /// `ModelSpec::validate` (in `model::validate`) adds each block's keys and the sizes.
    pub(crate) fn validate_fields(&self) -> std::result::Result<(), String> {
        if let Some(init) = &self.init {
            init.validate()?;
        }
        if self.embedding_dim == 0 {
            return Err("key 'embedding_dim': must be at least 1, found 0".into());
        }
        if self.embedding_dim > limits::EMBEDDING_DIM {
            return Err(format!(
                "key 'embedding_dim': {} is more than this engine supports ({})",
                self.embedding_dim,
                limits::EMBEDDING_DIM
            ));
        }
        if !(self.gate_gamma.is_finite()
            && self.gate_gamma > 0.0
            && self.gate_gamma <= limits::GATE_GAMMA)
        {
            return Err(format!(
                "key 'gate_gamma': must be a number in (0, {}], found {}; gates stacked over \
                 every layer would otherwise overflow f32 and f16 activations",
                limits::GATE_GAMMA,
                self.gate_gamma
            ));
        }
        if self.tasks.is_empty() {
            return Err("key 'tasks': the task list is empty; at least one task is needed".into());
        }
        if self.tasks.len() > limits::TASKS {
            return Err(format!(
                "key 'tasks': {} tasks are more than this engine supports ({})",
                self.tasks.len(),
                limits::TASKS
            ));
        }
        // Sets, not pairwise scans: a spec with 100 000 features validates in linear time.
        let mut tasks_seen = HashSet::new();
        for (i, t) in self.tasks.iter().enumerate() {
            if t.is_empty() {
                return Err(format!("key 'tasks[{i}]': empty task name"));
            }
            if !tasks_seen.insert(t.as_str()) {
                return Err(format!("key 'tasks[{i}]': duplicate task name '{t}'"));
            }
        }
        if self.features.is_empty() {
            return Err("key 'features': the feature list is empty".into());
        }
        let mut features_seen = HashSet::new();
        for (i, f) in self.features.iter().enumerate() {
            let at = format!("key 'features[{i}]' ('{}')", f.name);
            if f.name.is_empty() {
                return Err(format!("key 'features[{i}].name': empty feature name"));
            }
            if !features_seen.insert(f.name.as_str()) {
                return Err(format!("{at}: duplicate feature name"));
            }
            if f.roles.is_empty() {
                return Err(format!("{at}.roles: the feature has no role"));
            }
            for (j, r) in f.roles.iter().enumerate() {
                if f.roles[..j].contains(r) {
                    return Err(format!("{at}.roles: role {r:?} given twice"));
                }
            }
            if f.hashed {
                if f.kind == FeatureKind::Dense {
                    return Err(format!(
                        "{at}.hashed: only sparse and multi_hot features can be hashed"
                    ));
                }
                if f.vocab.is_some() {
                    return Err(format!(
                        "{at}.vocab: a hashed feature takes any 64-bit id and has no vocabulary"
                    ));
                }
                if f.name == self.domain_feature {
                    return Err(format!(
                        "{at}.hashed: the domain feature needs a vocabulary, it cannot be hashed"
                    ));
                }
            }
            match f.kind {
                FeatureKind::Sparse | FeatureKind::MultiHot if f.hashed => {}
                FeatureKind::Sparse | FeatureKind::MultiHot => match f.vocab {
                    None => {
                        return Err(format!(
                            "{at}.vocab: missing; {:?} features need a vocabulary size",
                            f.kind
                        ))
                    }
                    Some(0) => return Err(format!("{at}.vocab: must be at least 1, found 0")),
                    Some(v) if v > u32::MAX as usize / 2 => {
                        return Err(format!(
                            "{at}.vocab: {v} is larger than this engine supports ({})",
                            u32::MAX / 2
                        ))
                    }
                    Some(_) => {}
                },
                FeatureKind::Dense => {
                    if f.vocab.is_some() {
                        return Err(format!("{at}.vocab: a dense feature has no vocabulary"));
                    }
                }
            }
            match f.kind {
                FeatureKind::MultiHot => {
                    match f.max_len {
                        None => {
                            return Err(format!(
                                "{at}.max_len: missing; multi_hot features need it"
                            ))
                        }
                        Some(0) => {
                            return Err(format!("{at}.max_len: must be at least 1, found 0"))
                        }
                        Some(n) if n > limits::LIST_LEN => {
                            return Err(format!(
                                "{at}.max_len: {n} is more than this engine supports ({})",
                                limits::LIST_LEN
                            ))
                        }
                        Some(_) => {}
                    }
                    if f.pooling.is_none() {
                        return Err(format!(
                            "{at}.pooling: missing; multi_hot features need \"sum\" or \"mean\""
                        ));
                    }
                }
                _ => {
                    if f.max_len.is_some() {
                        return Err(format!(
                            "{at}.max_len: only multi_hot features have max_len"
                        ));
                    }
                    if f.pooling.is_some() {
                        return Err(format!(
                            "{at}.pooling: only multi_hot features have pooling"
                        ));
                    }
                }
            }
        }
        let domain = self
            .features
            .iter()
            .find(|f| f.name == self.domain_feature)
            .ok_or_else(|| {
                format!(
                    "key 'domain_feature': no feature named '{}' in 'features'",
                    self.domain_feature
                )
            })?;
        if domain.kind != FeatureKind::Sparse || !domain.has_role(Role::Domain) {
            return Err(format!(
                "key 'domain_feature': '{}' must be a sparse feature with the role \"domain\"",
                self.domain_feature
            ));
        }
        if self.n_general_features() == 0 {
            return Err("key 'features': no feature has the role \"general\"".into());
        }
        Ok(())
    }

    /// d, the embedding width.
    pub fn d(&self) -> usize {
        self.embedding_dim
    }

    /// T, the number of tasks.
    pub fn n_tasks(&self) -> usize {
        self.tasks.len()
    }

    fn role_features(&self, role: Role) -> impl Iterator<Item = &FeatureSpec> {
        self.features.iter().filter(move |f| f.has_role(role))
    }

    fn n_general_features(&self) -> usize {
        self.role_features(Role::General).count()
    }

    /// Width of E, the general embeddings.
    pub fn dg(&self) -> usize {
        self.n_general_features() * self.d()
    }

    /// Width of E_d, the domain-side embeddings.
    pub fn dd(&self) -> usize {
        self.role_features(Role::Domain).count() * self.d()
    }

    /// Width of E_p, the prior embeddings.
    pub fn dp(&self) -> usize {
        self.role_features(Role::Prior).count() * self.d()
    }

    /// Column of feature `f`'s vector inside the concatenation for `role`, if it has that role.
    pub fn role_offset(&self, feature: usize, role: Role) -> Option<usize> {
        if !self.features[feature].has_role(role) {
            return None;
        }
        let before = self.features[..feature]
            .iter()
            .filter(|f| f.has_role(role))
            .count();
        Some(before * self.d())
    }

    /// Bytes of the f32 tensors the spec sizes (hashed features' stored rows not counted).
    /// Exact in u64 for any validated spec.
    pub fn weight_bytes(&self) -> u64 {
        self.expected_tensors()
            .iter()
            .map(|(_, shape)| shape.iter().map(|&n| n as u64).product::<u64>() * 4)
            .sum()
    }

    /// [`ModelSpec::role_offset`] for every feature at once, in linear time.
    pub fn role_offsets(&self, role: Role) -> Vec<Option<usize>> {
        let mut next = 0;
        self.features
            .iter()
            .map(|f| {
                f.has_role(role).then(|| {
                    next += self.d();
                    next - self.d()
                })
            })
            .collect()
    }

    /// Whether any feature is hashed, i.e. the model needs an embedding store and cache.
    pub fn has_hashed(&self) -> bool {
        self.features.iter().any(|f| f.hashed)
    }

    /// L, the number of hidden tower layers.
    pub fn n_hidden(&self) -> usize {
        self.towers.len()
    }

    /// Input widths w_0..w_L of the L+1 tower layers (w_0 is the width of H_t(0)).
    pub fn tower_in_widths(&self) -> Vec<usize> {
        let w0 = match &self.experts {
            Some(e) => *e.hidden.last().expect("validated: experts have layers"),
            None => self.dg(),
        };
        std::iter::once(w0)
            .chain(self.towers.iter().copied())
            .collect()
    }

    /// Output widths of the L+1 tower layers: w_1..w_L, then 1.
    pub fn tower_out_widths(&self) -> Vec<usize> {
        self.towers
            .iter()
            .copied()
            .chain(std::iter::once(1))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"{
      "embedding_dim": 4, "gate_gamma": 2.0, "domain_feature": "tab",
      "tasks": ["click", "like"],
      "features": [
        {"name": "tab", "kind": "sparse", "vocab": 3, "roles": ["domain"]},
        {"name": "user_id", "kind": "sparse", "vocab": 10, "roles": ["general", "prior"]},
        {"name": "tags", "kind": "multi_hot", "vocab": 5, "max_len": 3, "pooling": "mean", "roles": ["general"]},
        {"name": "dur", "kind": "dense", "roles": ["general", "domain"]}
      ],
      "epnet": {"hidden": 8}, "ppnet": {"hidden": 6}, "experts": null, "towers": [5, 3]
    }"#;

    #[test]
    fn widths_follow_roles_in_spec_order() {
        let s = ModelSpec::from_json(SPEC, "m.json").unwrap();
        assert_eq!((s.dg(), s.dd(), s.dp()), (12, 8, 4));
        assert_eq!(s.role_offset(2, Role::General), Some(4));
        assert_eq!(s.role_offset(3, Role::Domain), Some(4));
        assert_eq!(s.role_offset(0, Role::General), None);
        assert_eq!(s.tower_in_widths(), vec![12, 5, 3]);
        let names: Vec<_> = s.expected_tensors().into_iter().map(|t| t.0).collect();
        assert!(names.contains(&"ppnet.2.fc2.weight".to_string()));
        assert!(names.contains(&"tower.like.2.bias".to_string()));
    }

    fn err(text: &str) -> String {
        ModelSpec::from_json(text, "m.json")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err(&SPEC.replace("\"towers\"", "\"colour\": 1, \"towers\"")).contains("colour"));
        assert!(err(&SPEC.replace(
            "\"domain_feature\": \"tab\"",
            "\"domain_feature\": \"page\""
        ))
        .contains("domain_feature"));
        assert!(err(&SPEC.replace("[\"click\", \"like\"]", "[]")).contains("tasks"));
        assert!(
            err(&SPEC.replace("\"roles\": [\"general\"]", "\"roles\": []")).contains("features[2]")
        );
        assert!(err(&SPEC.replace("[5, 3]", "[5, 0]")).contains("towers[1]"));
        assert!(err(&SPEC.replace("\"hidden\": 8", "\"hidden\": 0")).contains("epnet.hidden"));
        assert!(
            err(&SPEC.replace("\"embedding_dim\": 4", "\"embedding_dim\": 0"))
                .contains("embedding_dim")
        );
        assert!(err(&SPEC.replace("\"vocab\": 5", "\"vocab\": 0")).contains("vocab"));
        assert!(err(&SPEC.replace("\"max_len\": 3, ", "")).contains("max_len"));
    }

    #[test]
    fn sizes_beyond_the_limits_name_their_key_or_tensor() {
        let dim = err(&SPEC.replace("\"embedding_dim\": 4", "\"embedding_dim\": 4097"));
        assert!(
            dim.contains("'embedding_dim'") && dim.contains("4096"),
            "{dim}"
        );
        let len = err(&SPEC.replace("\"max_len\": 3", "\"max_len\": 65537"));
        assert!(
            len.contains("features[2]") && len.contains("max_len"),
            "{len}"
        );
        let tower = err(&SPEC.replace("[5, 3]", "[5, 65537]"));
        assert!(tower.contains("'towers[1]'"), "{tower}");
        // 2^28 + 1 rows of d = 4: one element past the largest tensor.
        let vocab = err(&SPEC.replace("\"vocab\": 10", "\"vocab\": 268435457"));
        assert!(
            vocab.contains("tensor 'emb.user_id'") && vocab.contains("4294967312 bytes"),
            "{vocab}"
        );
        assert!(vocab.contains("features[1].vocab"), "{vocab}");
        ModelSpec::from_json(
            &SPEC.replace("\"vocab\": 10", "\"vocab\": 268435456"),
            "m.json",
        )
        .expect("exactly 2^30 elements fit");
        let layers = vec!["3"; 65].join(", ");
        let deep = err(&SPEC.replace(
            "\"experts\": null",
            &format!("\"experts\": {{\"count\": 2, \"hidden\": [{layers}]}}"),
        ));
        assert!(
            deep.contains("'experts.hidden'") && deep.contains("65 layers"),
            "{deep}"
        );
        let gamma = err(&SPEC.replace("\"gate_gamma\": 2.0", "\"gate_gamma\": 64.5"));
        assert!(gamma.contains("gate_gamma"), "{gamma}");
    }

    #[test]
    fn tensor_names_that_would_coincide_are_refused_naming_both() {
        let clash = SPEC.replace(
            "{\"name\": \"dur\"",
            "{\"name\": \"user\", \"kind\": \"sparse\", \"hashed\": true, \"roles\": [\"general\"]},
             {\"name\": \"user.default\", \"kind\": \"dense\", \"roles\": [\"general\"]},
             {\"name\": \"dur\"",
        );
        let e = err(&clash);
        assert!(
            e.contains("'emb.user.default'")
                && e.contains("'user'")
                && e.contains("'user.default'"),
            "{e}"
        );
    }

    #[test]
    fn role_offsets_match_role_offset() {
        let s = ModelSpec::from_json(SPEC, "m.json").unwrap();
        for role in [Role::General, Role::Domain, Role::Prior] {
            let all = s.role_offsets(role);
            for (f, off) in all.iter().enumerate() {
                assert_eq!(*off, s.role_offset(f, role));
            }
        }
    }
}
