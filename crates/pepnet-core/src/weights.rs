//! `weights.safetensors`: loading (f32 or f16, checked against the spec), saving, and the
//! reproducible initialisation behind `pepnet init`.

use std::collections::BTreeMap;
use std::path::Path;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::spec::{BiasInit, EmbeddingInit, ModelSpec};

/// The names of the embedding tensors in a weights file: `emb.<feature>` (a table, a dense
/// feature's vector, or a hashed feature's stored rows), `emb.<feature>.ids` and
/// `emb.<feature>.default` (a hashed feature's raw ids and default row). The embedding block
/// (`model::embedding`) reads its tensors by them.
pub mod names {
    /// What every embedding tensor's name starts with.
    pub const PREFIX: &str = "emb.";

    /// Feature `feature`'s table (or a hashed feature's stored rows).
    pub fn table(feature: &str) -> String {
        format!("{PREFIX}{feature}")
    }

    /// A hashed feature's raw ids, one per stored row.
    pub fn ids(feature: &str) -> String {
        format!("{PREFIX}{feature}.ids")
    }

    /// A hashed feature's default row, for ids it does not hold.
    pub fn default_row(feature: &str) -> String {
        format!("{PREFIX}{feature}.default")
    }

    /// Whether tensor `name` is an embedding tensor (not a dense layer's).
    pub fn is_embedding(name: &str) -> bool {
        name.starts_with(PREFIX)
    }
}
/// One tensor, held as f32 whatever its dtype on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// The elements, row-major: the product of `shape` of them.
    pub data: Vec<f32>,
}

/// Every tensor of a model, by name. Holds exactly the tensors the spec asks for, with the right
/// shapes: construction checks that once, so readers may index freely.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    tensors: BTreeMap<String, Tensor>,
    /// Per hashed feature (by name), its stored rows.
    hashed: BTreeMap<String, HashedRows>,
}

/// A hashed feature's rows as the model directory stores them: `emb.<f>.ids` (`[n]`, U64 or
/// I64, distinct) beside `emb.<f>` (`[n, d]`), and optionally `emb.<f>.default` (`[d]`), the row
/// an id the store does not know gets (zeros without it).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HashedRows {
    /// Row width (the model's d).
    pub d: usize,
    /// The ids held, distinct (`emb.<f>.ids`).
    pub ids: Vec<u64>,
    /// `ids.len() × d`, row i belongs to `ids[i]`.
    pub rows: Vec<f32>,
    /// `emb.<f>.default`, d floats, if stored: the row unknown ids read.
    pub default: Option<Vec<f32>>,
}

impl HashedRows {
    /// Writes `update`'s rows over this table's: a known id's row is replaced, a new id's is
    /// appended. Returns (replaced, added).
    pub fn merge(&mut self, update: &HashedRows) -> (usize, usize) {
        let d = self.d;
        let mut index: std::collections::HashMap<u64, usize> = self
            .ids
            .iter()
            .enumerate()
            .map(|(i, &id)| (id, i))
            .collect();
        let (mut replaced, mut added) = (0, 0);
        for (k, &id) in update.ids.iter().enumerate() {
            let row = &update.rows[k * d..(k + 1) * d];
            match index.get(&id) {
                Some(&i) => {
                    self.rows[i * d..(i + 1) * d].copy_from_slice(row);
                    replaced += 1;
                }
                None => {
                    index.insert(id, self.ids.len());
                    self.ids.push(id);
                    self.rows.extend_from_slice(row);
                    added += 1;
                }
            }
        }
        (replaced, added)
    }

    /// The tensor names feature `name`'s rows are stored under: ids, rows, default.
    pub fn tensor_names(name: &str) -> [String; 3] {
        [
            names::ids(name),
            names::table(name),
            names::default_row(name),
        ]
    }

    /// Reads feature `name`'s tensors; an error names the tensor.
    pub fn read(
        st: &SafeTensors,
        name: &str,
        d: usize,
    ) -> std::result::Result<Self, (String, String)> {
        let [ids_name, rows_name, default_name] = Self::tensor_names(name);
        let ids_view = st.tensor(&ids_name).map_err(|_| {
            (
                ids_name.clone(),
                "missing; a hashed feature stores its ids as a U64 or I64 tensor [n]".to_string(),
            )
        })?;
        if ids_view.shape().len() != 1 {
            return Err((
                ids_name,
                format!("expected shape [n], found {:?}", ids_view.shape()),
            ));
        }
        let ids: Vec<u64> = match ids_view.dtype() {
            Dtype::U64 | Dtype::I64 => ids_view
                .data()
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("chunks of 8")))
                .collect(),
            other => {
                return Err((
                    ids_name,
                    format!("expected dtype U64 or I64, found {other:?}"),
                ))
            }
        };
        let n = ids.len();
        let rows_view = st.tensor(&rows_name).map_err(|_| {
            (
                rows_name.clone(),
                format!("missing; expected shape [{n}, {d}] (one row per id)"),
            )
        })?;
        if rows_view.shape() != [n, d] {
            return Err((
                rows_name,
                format!(
                    "expected shape [{n}, {d}] (one row per id of {ids_name}), found {:?}",
                    rows_view.shape()
                ),
            ));
        }
        let rows = floats(&rows_view).map_err(|m| (rows_name.clone(), m))?;
        let mut seen = std::collections::HashSet::with_capacity(n);
        if let Some(i) = ids.iter().position(|id| !seen.insert(*id)) {
            return Err((
                ids_name,
                format!(
                    "id {} appears twice (element {i}); ids must be distinct",
                    ids[i]
                ),
            ));
        }
        let default = match st.tensor(&default_name) {
            Err(_) => None,
            Ok(view) => {
                if view.shape() != [d] {
                    return Err((
                        default_name,
                        format!("expected shape [{d}], found {:?}", view.shape()),
                    ));
                }
                Some(floats(&view).map_err(|m| (default_name.clone(), m))?)
            }
        };
        Ok(Self {
            d,
            ids,
            rows,
            default,
        })
    }
}

/// Parses a safetensors file; an error names the tensor at fault when one is (the format
/// library's own errors often do not), else the file.
pub fn parse_safetensors<'a>(bytes: &'a [u8], file: &str) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes).map_err(|e| match diagnose_header(bytes) {
        Some((tensor, message)) => Error::Tensor {
            file: file.to_string(),
            tensor,
            message,
        },
        None => Error::Weights {
            file: file.to_string(),
            message: format!("not a valid safetensors file: {e}"),
        },
    })
}

/// The first tensor entry of a safetensors header that cannot be right, and why: read from
/// the JSON header directly, only to explain a failed parse.
fn diagnose_header(bytes: &[u8]) -> Option<(String, String)> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let header = bytes.get(8..8usize.checked_add(usize::try_from(n).ok()?)?)?;
    let data_len = (bytes.len() - 8 - header.len()) as u64;
    let entries: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(header).ok()?;
    let mut spans = Vec::new();
    for (name, entry) in entries.iter().filter(|(n, _)| *n != "__metadata__") {
        let fail = |why: String| Some((name.clone(), why));
        let width = match entry.get("dtype").and_then(|d| d.as_str()) {
            Some("F64" | "I64" | "U64") => 8,
            Some("F32" | "I32" | "U32") => 4,
            Some("F16" | "BF16" | "I16" | "U16") => 2,
            Some("I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2") => 1,
            Some(other) => return fail(format!("unknown dtype '{other}'")),
            None => return fail("no dtype".into()),
        };
        let shape: Option<Vec<u64>> = entry
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|x| x.as_u64()).collect());
        let Some(shape) = shape else {
            return fail("the shape is not a list of non-negative integers".into());
        };
        let offsets: Option<Vec<u64>> = entry
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|x| x.as_u64()).collect());
        let Some([begin, end]) = offsets
            .as_deref()
            .and_then(|o| <[u64; 2]>::try_from(o).ok())
        else {
            return fail("data_offsets is not a pair of byte offsets".into());
        };
        let bytes_needed = shape
            .iter()
            .try_fold(width, |acc: u64, &d| acc.checked_mul(d));
        if begin > end || end > data_len {
            return fail(format!(
                "data_offsets [{begin}, {end}] do not lie within the file's {data_len} data bytes"
            ));
        }
        if bytes_needed != Some(end - begin) {
            return fail(format!(
                "shape {shape:?} needs {} bytes, but data_offsets [{begin}, {end}] hold {}",
                bytes_needed.map_or("more than 2^64".into(), |b| b.to_string()),
                end - begin
            ));
        }
        spans.push((begin, end, name));
    }
    spans.sort();
    for pair in spans.windows(2) {
        if pair[1].0 < pair[0].1 {
            return Some((
                pair[1].2.clone(),
                format!("its data overlaps tensor '{}'", pair[0].2),
            ));
        }
    }
    None
}

/// A float tensor's elements as f32 (F32 or F16 on disk), all finite.
fn floats(view: &safetensors::tensor::TensorView) -> std::result::Result<Vec<f32>, String> {
    let data: Vec<f32> = match view.dtype() {
        Dtype::F32 => view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => view
            .data()
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => return Err(format!("expected dtype F32 or F16, found {other:?}")),
    };
    check_values(&data)?;
    Ok(data)
}

/// The largest weight magnitude a model may hold: the largest f16, so that the f16 precision
/// holds every weight the f32 one does, and sums of products stay far from f32's limit.
pub const MAX_WEIGHT: f32 = 65504.0;

/// Every value finite and within ±[`MAX_WEIGHT`]; else which element and why.
pub fn check_values(data: &[f32]) -> std::result::Result<(), String> {
    match data
        .iter()
        .position(|x| !(x.is_finite() && x.abs() <= MAX_WEIGHT))
    {
        Some(i) => Err(format!(
            "element {i} is {}; weights must be finite and within ±{MAX_WEIGHT} (the f16 range)",
            data[i]
        )),
        None => Ok(()),
    }
}

impl Weights {
    /// Reads a safetensors file and checks it against the spec.
    pub fn load(path: &Path, spec: &ModelSpec) -> Result<Self> {
        let size = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        // The file, then the tensors parsed out of it: twice its size at the peak.
        crate::memory::check_host(
            size.saturating_mul(2),
            &format!("reading {}", path.display()),
        )?;
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_safetensors(&bytes, &path.display().to_string(), spec)
    }

    /// Parses safetensors bytes; `file` names them in errors.
    pub fn from_safetensors(bytes: &[u8], file: &str, spec: &ModelSpec) -> Result<Self> {
        let st = parse_safetensors(bytes, file)?;
        let tensor_err = |tensor: &str, message: String| Error::Tensor {
            file: file.to_string(),
            tensor: tensor.to_string(),
            message,
        };
        let expected = spec.expected_tensors();
        let mut tensors = BTreeMap::new();
        for (name, shape) in &expected {
            let view = st
                .tensor(name)
                .map_err(|_| tensor_err(name, format!("missing; expected shape {shape:?}")))?;
            if view.shape() != shape.as_slice() {
                return Err(tensor_err(
                    name,
                    format!("expected shape {shape:?}, found {:?}", view.shape()),
                ));
            }
            let data = floats(&view).map_err(|m| tensor_err(name, m))?;
            tensors.insert(
                name.clone(),
                Tensor {
                    shape: shape.clone(),
                    data,
                },
            );
        }
        let mut hashed = BTreeMap::new();
        for f in spec.features.iter().filter(|f| f.hashed) {
            let table =
                HashedRows::read(&st, &f.name, spec.d()).map_err(|(t, m)| tensor_err(&t, m))?;
            hashed.insert(f.name.clone(), table);
        }
        let hashed_names: std::collections::HashSet<String> = spec
            .features
            .iter()
            .filter(|f| f.hashed)
            .flat_map(|f| HashedRows::tensor_names(&f.name))
            .collect();
        let known = |n: &str| tensors.contains_key(n) || hashed_names.contains(n);
        let mut extra: Vec<&str> = st.names().into_iter().filter(|n| !known(n)).collect();
        extra.sort_unstable();
        if let Some(name) = extra.first() {
            return Err(tensor_err(
                name,
                "not part of this model (extra tensor); the spec does not ask for it".into(),
            ));
        }
        Ok(Self { tensors, hashed })
    }

    /// Fresh weights for `spec`, the same for the same seed on every machine, drawn as
    /// `spec.init` says (see [`InitSpec`]): linear weights Xavier-uniform
    /// (±√(6/(fan_in+fan_out))), as the paper initialises them; embedding rows and biases by
    /// the scheme's rule.
    pub fn init(spec: &ModelSpec, seed: u64) -> Self {
        let scheme = spec.init.unwrap_or_default();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut tensors = BTreeMap::new();
        // `expected_tensors` lists each bias right after its weight; this is that weight's fan-in.
        let mut fan_in = 1;
        for (name, shape) in spec.expected_tensors() {
            let n: usize = shape.iter().product();
            let data = if names::is_embedding(&name) {
                embedding_values(scheme.embedding, n, &mut rng)
            } else if name.ends_with(".weight") {
                fan_in = shape[1];
                uniform(n, (6.0 / (shape[0] + shape[1]) as f64).sqrt(), &mut rng)
            } else {
                match scheme.bias {
                    BiasInit::Zero => vec![0.0; n],
                    BiasInit::FanIn => uniform(n, 1.0 / (fan_in as f64).sqrt(), &mut rng),
                }
            };
            tensors.insert(name, Tensor { shape, data });
        }
        // Hashed features start with no stored rows: a trainer's updates bring them.
        let hashed = spec
            .features
            .iter()
            .filter(|f| f.hashed)
            .map(|f| {
                let empty = HashedRows {
                    d: spec.d(),
                    ..Default::default()
                };
                (f.name.clone(), empty)
            })
            .collect();
        Self { tensors, hashed }
    }

    /// Every tensor's values within [`check_values`]' bounds, or the first that is not, named
    /// (e.g. after a training run that diverged).
    pub fn check(&self, file: &str) -> Result<()> {
        let tensors = self.tensors.iter().map(|(n, t)| (n.clone(), &t.data));
        let hashed = self.hashed.iter().flat_map(|(f, h)| {
            let [_, rows, default] = HashedRows::tensor_names(f);
            std::iter::once((rows, &h.rows)).chain(h.default.as_ref().map(|d| (default, d)))
        });
        for (name, data) in tensors.chain(hashed) {
            check_values(data).map_err(|message| Error::Tensor {
                file: file.to_string(),
                tensor: name,
                message,
            })?;
        }
        Ok(())
    }

    /// Writes the tensors as f32 safetensors (hashed features' ids as U64).
    pub fn to_safetensors(&self) -> Vec<u8> {
        let f32s = |v: &[f32]| bytemuck::cast_slice::<f32, u8>(v).to_vec();
        let mut bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(name, t)| (name.clone(), Dtype::F32, t.shape.clone(), f32s(&t.data)))
            .collect();
        for (name, h) in &self.hashed {
            let [ids, rows, default] = HashedRows::tensor_names(name);
            let n = h.ids.len();
            let id_bytes = h.ids.iter().flat_map(|i| i.to_le_bytes()).collect();
            bytes.push((ids, Dtype::U64, vec![n], id_bytes));
            bytes.push((rows, Dtype::F32, vec![n, h.d], f32s(&h.rows)));
            if let Some(v) = &h.default {
                bytes.push((default, Dtype::F32, vec![v.len()], f32s(v)));
            }
        }
        let views = bytes.iter().map(|(name, dtype, shape, data)| {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data)
                .expect("shape and data agree by construction");
            (name.as_str(), view)
        });
        safetensors::serialize(views, None).expect("in-memory serialisation cannot fail")
    }

    /// The tensor `name`; panics if the weights do not hold it (names come from the spec).
    pub fn get(&self, name: &str) -> &Tensor {
        self.tensors.get(name).unwrap_or_else(|| {
            panic!("tensor '{name}' is not in the model (a bug: names come from the spec)")
        })
    }

    /// The tensor `name`, if the weights hold it.
    pub fn try_get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// A hashed feature's stored rows, by feature name.
    pub fn hashed(&self, feature: &str) -> Option<&HashedRows> {
        self.hashed.get(feature)
    }

    /// Sets tensor `name` (a trainer's working tables); the caller keeps it fitting the spec.
    pub fn insert(&mut self, name: String, tensor: Tensor) {
        self.tensors.insert(name, tensor);
    }

    /// Sets hashed feature `feature`'s stored rows.
    pub fn set_hashed(&mut self, feature: String, rows: HashedRows) {
        self.hashed.insert(feature, rows);
    }

    /// Removes hashed feature `feature`'s stored rows, returning them.
    pub fn take_hashed(&mut self, feature: &str) -> Option<HashedRows> {
        self.hashed.remove(feature)
    }

    /// Mutable access to a hashed feature's rows (tools, tests, merging row files).
    pub fn hashed_mut(&mut self, feature: &str) -> Option<&mut HashedRows> {
        self.hashed.get_mut(feature)
    }

    /// Mutable access, for tools and tests that perturb weights.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Tensor> {
        self.tensors.get_mut(name)
    }

    /// Every tensor with its name, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// `n` values uniform in ±a.
fn uniform(n: usize, a: f64, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-a..a) as f32).collect()
}

/// `n` elements of fresh embedding rows. Normal draws use Box–Muller on the seeded stream in
/// f64, rounded once to f32, so a platform's `ln`/`cos` could only move a value by its last bit.
pub fn embedding_values(scheme: EmbeddingInit, n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    match scheme {
        EmbeddingInit::Uniform { bound } => uniform(n, bound, rng),
        EmbeddingInit::Normal { std } => {
            let mut out = Vec::with_capacity(n + 1);
            while out.len() < n {
                // u1 in (0, 1]: ln never sees 0.
                let u1 = 1.0 - rng.random::<f64>();
                let u2 = rng.random::<f64>();
                let r = (-2.0 * u1.ln()).sqrt() * std;
                let t = std::f64::consts::TAU * u2;
                out.push((r * t.cos()) as f32);
                out.push((r * t.sin()) as f32);
            }
            out.truncate(n);
            out
        }
    }
}
