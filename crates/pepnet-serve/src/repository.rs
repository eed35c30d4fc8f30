//! Where the served models come from: one model directory, or a model repository in Triton's
//! layout, a directory of models each with numbered versions:
//!
//! ```text
//! DIR/
//!   ranker/              a model, served as /v2/models/ranker
//!     config.json        optional: {"version_policy": {"latest": {"num_versions": 2}}}
//!     1/                 version 1: a pepnet model directory (model.json, weights.safetensors)
//!     3/                 version 3
//!   reranker/
//!     7/
//! ```
//!
//! A version is a subdirectory named by a positive integer (others are ignored, as Triton
//! ignores them). The version policy is Triton's: the latest N versions (the default: the
//! latest one), all of them, or specific ones. A request that names no version gets the
//! newest version served.

use std::path::{Path, PathBuf};

use serde_json::Value;

use pepnet_core::error::{Error, Result};

/// A model's optional configuration file in a repository, beside its version directories.
pub const CONFIG_FILE: &str = "config.json";

/// Which versions of a model to serve (Triton's version policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionPolicy {
    /// The newest N versions.
    Latest(u32),
    /// Every version.
    All,
    /// These versions (each must exist).
    Specific(Vec<u64>),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        Self::Latest(1)
    }
}

/// The models a server serves.
#[derive(Debug, Clone)]
pub enum Models {
    /// One model directory served under `name`. Each load reads it again as the next version
    /// (1 at start, then 2, 3, …), so a client can tell which load answered it.
    Directory { name: String, dir: PathBuf },
    /// A model repository (see the module's comment): every model in it is loaded at start.
    Repository(PathBuf),
}

impl Models {
    /// The names of the models to load at start.
    pub(crate) fn names(&self) -> Result<Vec<String>> {
        match self {
            Models::Directory { name, .. } => Ok(vec![name.clone()]),
            Models::Repository(root) => {
                let mut names = Vec::new();
                for entry in read_dir(root)? {
                    let (name, path) = entry;
                    if path.is_dir() {
                        names.push(name);
                    }
                }
                names.sort();
                if names.is_empty() {
                    return Err(Error::Spec {
                        file: root.display().to_string(),
                        message: "the model repository holds no model (a model is a \
                                  subdirectory with numbered version directories)"
                            .into(),
                    });
                }
                Ok(names)
            }
        }
    }

    /// Whether `name` is a model this source knows (loaded or not).
    pub(crate) fn knows(&self, name: &str) -> bool {
        match self {
            Models::Directory { name: served, .. } => served == name,
            Models::Repository(root) => valid_name(name) && root.join(name).is_dir(),
        }
    }

    /// The versions of model `name` to load, with their directories, oldest first, and the
    /// policy that chose them. A directory's one version is `next`.
    pub(crate) fn versions(
        &self,
        name: &str,
        next: impl FnOnce() -> u64,
    ) -> Result<(VersionPolicy, Vec<(u64, PathBuf)>)> {
        let root = match self {
            Models::Directory { dir, .. } => {
                return Ok((VersionPolicy::Latest(1), vec![(next(), dir.clone())]))
            }
            Models::Repository(root) => root,
        };
        let model_dir = root.join(name);
        if !valid_name(name) || !model_dir.is_dir() {
            return Err(Error::Spec {
                file: root.display().to_string(),
                message: format!("no model '{name}' in the model repository"),
            });
        }
        let policy = read_policy(&model_dir.join(CONFIG_FILE))?;
        let mut found: Vec<(u64, PathBuf)> = read_dir(&model_dir)?
            .into_iter()
            .filter(|(_, path)| path.is_dir())
            .filter_map(|(n, path)| version_number(&n).map(|v| (v, path)))
            .collect();
        found.sort();
        let chosen: Vec<(u64, PathBuf)> = match &policy {
            VersionPolicy::All => found,
            VersionPolicy::Latest(n) => {
                let skip = found.len().saturating_sub(*n as usize);
                found.into_iter().skip(skip).collect()
            }
            VersionPolicy::Specific(wanted) => {
                if let Some(missing) = wanted.iter().find(|v| !found.iter().any(|(f, _)| f == *v)) {
                    return Err(Error::Spec {
                        file: model_dir.join(CONFIG_FILE).display().to_string(),
                        message: format!(
                            "version_policy asks for version {missing}, which {} has no \
                             directory of",
                            model_dir.display()
                        ),
                    });
                }
                found
                    .into_iter()
                    .filter(|(v, _)| wanted.contains(v))
                    .collect()
            }
        };
        if chosen.is_empty() {
            return Err(Error::Spec {
                file: model_dir.display().to_string(),
                message: "the model has no version to serve (a version is a subdirectory \
                          named by a positive integer: 1, 2, …)"
                    .into(),
            });
        }
        Ok((policy, chosen))
    }
}

/// A model's name as a repository may hold it: one path component, nothing hidden.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\'])
        && Path::new(name).components().count() == 1
}

/// A version directory's number: a positive integer, nothing else.
fn version_number(name: &str) -> Option<u64> {
    match name.bytes().all(|b| b.is_ascii_digit()) {
        true => name.parse().ok().filter(|&v| v > 0),
        false => None,
    }
}

/// The entries of a directory: name (UTF-8 names only) and path, hidden ones skipped.
fn read_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if let Some(name) = entry.file_name().to_str() {
            if !name.starts_with('.') {
                out.push((name.to_string(), entry.path()));
            }
        }
    }
    Ok(out)
}

/// The version policy of a model's `config.json` (Triton's JSON form of its configuration; only
/// `version_policy` is read, and any other key is refused so that a setting pepnet would
/// ignore is never silently dropped). No file: the latest version.
pub(crate) fn read_policy(path: &Path) -> Result<VersionPolicy> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(VersionPolicy::default()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let bad = |message: String| Error::Spec {
        file: path.display().to_string(),
        message,
    };
    let config: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let object = config
        .as_object()
        .ok_or_else(|| bad("expected a JSON object".into()))?;
    if let Some(key) = object.keys().find(|k| *k != "version_policy") {
        return Err(bad(format!(
            "unknown key '{key}'; the only setting read here is version_policy"
        )));
    }
    match object.get("version_policy") {
        None => Ok(VersionPolicy::default()),
        Some(policy) => parse_policy(policy).map_err(bad),
    }
}

/// Triton's JSON form of a version policy: `{"latest": {"num_versions": N}}`, `{"all": {}}` or
/// `{"specific": {"versions": [..]}}`.
pub(crate) fn parse_policy(policy: &Value) -> std::result::Result<VersionPolicy, String> {
    let expected = r#"expected {"latest": {"num_versions": N}}, {"all": {}} or {"specific": {"versions": [1, 2]}}"#;
    let Some(object) = policy.as_object().filter(|o| o.len() == 1) else {
        return Err(format!("version_policy: {expected}, found {policy}"));
    };
    let (kind, body) = object.iter().next().expect("one entry");
    let positive = |v: &Value| v.as_u64().filter(|&n| n > 0);
    match kind.as_str() {
        "all" => Ok(VersionPolicy::All),
        "latest" => {
            let n = body.get("num_versions").and_then(positive).ok_or_else(|| {
                format!(
                    "version_policy.latest.num_versions: expected a positive integer, found {body}"
                )
            })?;
            u32::try_from(n)
                .map(VersionPolicy::Latest)
                .map_err(|_| format!("version_policy.latest.num_versions: {n} is too large"))
        }
        "specific" => {
            let versions = body
                .get("versions")
                .and_then(Value::as_array)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    format!("version_policy.specific.versions: expected a list of versions, found {body}")
                })?;
            versions
                .iter()
                .map(|v| {
                    positive(v).ok_or_else(|| {
                        format!("version_policy.specific.versions: {v} is not a positive integer")
                    })
                })
                .collect::<std::result::Result<_, _>>()
                .map(VersionPolicy::Specific)
        }
        _ => Err(format!("version_policy: {expected}, found {policy}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn policies_parse_in_tritons_json_form_and_bad_ones_say_what_was_expected() {
        assert_eq!(
            parse_policy(&json!({"latest": {"num_versions": 2}})),
            Ok(VersionPolicy::Latest(2))
        );
        assert_eq!(parse_policy(&json!({"all": {}})), Ok(VersionPolicy::All));
        assert_eq!(
            parse_policy(&json!({"specific": {"versions": [3, 1]}})),
            Ok(VersionPolicy::Specific(vec![3, 1]))
        );
        for (bad, says) in [
            (json!({"latest": {"num_versions": 0}}), "num_versions"),
            (json!({"latest": {}}), "num_versions"),
            (json!({"specific": {"versions": []}}), "versions"),
            (json!({"specific": {"versions": [-1]}}), "-1"),
            (json!({"newest": {}}), "expected"),
            (
                json!({"all": {}, "latest": {"num_versions": 1}}),
                "expected",
            ),
            (json!("latest"), "expected"),
        ] {
            let e = parse_policy(&bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn versions_follow_the_policy_and_skip_what_is_not_a_version() {
        let root = std::env::temp_dir().join(format!("pepnet-repo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for v in ["1", "2", "10", "0", "v3", ".9"] {
            std::fs::create_dir_all(root.join("m").join(v)).unwrap();
        }
        std::fs::write(root.join("m").join("notes.txt"), "").unwrap();
        let repo = Models::Repository(root.clone());
        assert_eq!(repo.names().unwrap(), vec!["m".to_string()]);
        let numbers = |repo: &Models| -> Vec<u64> {
            let (_, v) = repo.versions("m", || unreachable!()).unwrap();
            v.into_iter().map(|(n, _)| n).collect()
        };
        assert_eq!(numbers(&repo), vec![10]);
        let config = root.join("m").join(CONFIG_FILE);
        std::fs::write(
            &config,
            r#"{"version_policy": {"latest": {"num_versions": 2}}}"#,
        )
        .unwrap();
        assert_eq!(numbers(&repo), vec![2, 10]);
        std::fs::write(&config, r#"{"version_policy": {"all": {}}}"#).unwrap();
        assert_eq!(numbers(&repo), vec![1, 2, 10]);
        std::fs::write(
            &config,
            r#"{"version_policy": {"specific": {"versions": [1]}}}"#,
        )
        .unwrap();
        assert_eq!(numbers(&repo), vec![1]);
        std::fs::write(
            &config,
            r#"{"version_policy": {"specific": {"versions": [4]}}}"#,
        )
        .unwrap();
        let e = repo.versions("m", || 0).unwrap_err().to_string();
        assert!(e.contains("version 4") && e.contains(CONFIG_FILE), "{e}");
        std::fs::write(&config, r#"{"max_batch_size": 8}"#).unwrap();
        let e = repo.versions("m", || 0).unwrap_err().to_string();
        assert!(e.contains("max_batch_size"), "{e}");
        let e = repo.versions("../m", || 0).unwrap_err().to_string();
        assert!(e.contains("no model '../m'"), "{e}");
        assert!(!repo.knows("..") && repo.knows("m"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
