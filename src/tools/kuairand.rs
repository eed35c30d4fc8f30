//! A reader for KuaiRand logs (`pepnet kuairand`): joins the interaction log with the user and
//! video side files, maps every raw id and category to a dense index, and writes a data file in
//! pepnet's input format with one 0/1 label column per task, plus a model spec whose features and
//! vocabularies fit it.
//!
//! Log columns read: `user_id, video_id, tab, hourmin` and the labels `is_click, is_like,
//! is_follow, is_comment, is_forward, is_hate, long_view`. Users: `user_id, user_active_degree,
//! is_live_streamer, is_video_author, follow_user_num_range, fans_user_num_range,
//! register_days_range`. Videos: `video_id, author_id, video_type, upload_type, music_type,
//! video_duration, tag` (tag ids separated by `,`). A missing side row maps to index 0, "unknown".
//!
//! Vocabularies are built from the log given, so convert one log and split the result (by row
//! ranges, e.g. by date) for training and evaluation rather than converting each part alone.

use std::collections::HashMap;
use std::path::Path;

use crate::batch::{Batch, Column};
use crate::error::{Error, Result};
use crate::io::read_text_rows;
use crate::spec::{FeatureKind, FeatureSpec, GateSpec, ModelSpec, Pooling, Role};
use crate::synth;

/// The tasks, named by their KuaiRand label columns.
pub const LABELS: [&str; 7] = [
    "is_click",
    "is_like",
    "is_follow",
    "is_comment",
    "is_forward",
    "is_hate",
    "long_view",
];

const USER_CATEGORIES: [&str; 6] = [
    "user_active_degree",
    "is_live_streamer",
    "is_video_author",
    "follow_user_num_range",
    "fans_user_num_range",
    "register_days_range",
];
const VIDEO_CATEGORIES: [&str; 3] = ["video_type", "upload_type", "music_type"];
const MAX_TAGS: usize = 4;

/// Dense indices for raw values; index 0 is "unknown / missing".
#[derive(Default)]
struct Vocab {
    index: HashMap<String, u64>,
}

impl Vocab {
    fn id(&mut self, raw: &str) -> u64 {
        let raw = raw.trim();
        if raw.is_empty() {
            return 0;
        }
        let next = self.index.len() as u64 + 1;
        *self.index.entry(raw.to_string()).or_insert(next)
    }

    fn size(&self) -> usize {
        self.index.len() + 1
    }
}

/// What [`convert`] wrote.
pub struct Converted {
    pub spec: ModelSpec,
    pub rows: usize,
}

/// Converts a KuaiRand log and its side files into `out` (CSV or Parquet by extension) and
/// returns the matching spec (embedding width `d`).
pub fn convert(log: &Path, users: &Path, videos: &Path, out: &Path, d: usize) -> Result<Converted> {
    let mut user_columns = vec!["user_id"];
    user_columns.extend(USER_CATEGORIES);
    let mut video_columns = vec!["video_id", "author_id"];
    video_columns.extend(VIDEO_CATEGORIES);
    video_columns.extend(["video_duration", "tag"]);
    let user_rows: HashMap<String, Vec<String>> = read_text_rows(users, &user_columns)?
        .into_iter()
        .map(|r| (r[0].clone(), r))
        .collect();
    let video_rows: HashMap<String, Vec<String>> = read_text_rows(videos, &video_columns)?
        .into_iter()
        .map(|r| (r[0].clone(), r))
        .collect();
    let mut log_columns = vec!["user_id", "video_id", "tab", "hourmin"];
    log_columns.extend(LABELS);
    let log_rows = read_text_rows(log, &log_columns)?;

    // Vocabularies, in a fixed order of features.
    let (mut tab, mut user, mut video, mut author, mut hour, mut tags) = (
        Vocab::default(),
        Vocab::default(),
        Vocab::default(),
        Vocab::default(),
        Vocab::default(),
        Vocab::default(),
    );
    let mut user_cats: Vec<Vocab> = USER_CATEGORIES.iter().map(|_| Vocab::default()).collect();
    let mut video_cats: Vec<Vocab> = VIDEO_CATEGORIES.iter().map(|_| Vocab::default()).collect();
    let n = log_rows.len();
    let mut cols: Vec<Vec<u64>> =
        vec![Vec::with_capacity(n); 5 + USER_CATEGORIES.len() + VIDEO_CATEGORIES.len()];
    let (mut tag_offsets, mut tag_ids, mut duration) =
        (vec![0usize], Vec::new(), Vec::with_capacity(n));
    let mut labels: Vec<Vec<f32>> = vec![Vec::with_capacity(n); LABELS.len()];
    let source = log.display().to_string();
    for (i, r) in log_rows.iter().enumerate() {
        let u = user_rows.get(&r[0]);
        let v = video_rows.get(&r[1]);
        cols[0].push(tab.id(&r[2]));
        cols[1].push(user.id(&r[0]));
        cols[2].push(video.id(&r[1]));
        cols[3].push(author.id(v.map_or("", |v| v[1].as_str())));
        cols[4].push(hour.id(r[3].get(..r[3].len().saturating_sub(2)).unwrap_or("")));
        for (c, vocab) in user_cats.iter_mut().enumerate() {
            cols[5 + c].push(vocab.id(u.map_or("", |u| u[1 + c].as_str())));
        }
        for (c, vocab) in video_cats.iter_mut().enumerate() {
            cols[5 + USER_CATEGORIES.len() + c].push(vocab.id(v.map_or("", |v| v[2 + c].as_str())));
        }
        let seconds = v
            .and_then(|v| v[2 + VIDEO_CATEGORIES.len()].parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1000.0;
        duration.push(seconds.max(0.0).ln_1p() as f32);
        let tag_cell = v.map_or("", |v| v[3 + VIDEO_CATEGORIES.len()].as_str());
        tag_ids.extend(
            tag_cell
                .split(',')
                .filter(|t| !t.trim().is_empty())
                .take(MAX_TAGS)
                .map(|t| tags.id(t)),
        );
        tag_offsets.push(tag_ids.len());
        for (l, values) in labels.iter_mut().enumerate() {
            let cell = r[4 + l].as_str();
            values.push(match cell {
                "1" | "1.0" => 1.0,
                "0" | "0.0" | "" => 0.0,
                other => {
                    return Err(Error::Input {
                        source_name: source.clone(),
                        row: i + 1,
                        column: LABELS[l].to_string(),
                        message: format!("expected a 0/1 label, found '{other}'"),
                    })
                }
            });
        }
    }

    let sparse = |name: &str, vocab: &Vocab, roles: Vec<Role>| FeatureSpec {
        name: name.to_string(),
        kind: FeatureKind::Sparse,
        vocab: Some(vocab.size()),
        max_len: None,
        pooling: None,
        hashed: false,
        roles,
    };
    let mut features = vec![
        sparse("tab", &tab, vec![Role::Domain]),
        sparse("user_id", &user, vec![Role::General, Role::Prior]),
        sparse("video_id", &video, vec![Role::General, Role::Prior]),
        sparse("author_id", &author, vec![Role::General, Role::Prior]),
        sparse("hour", &hour, vec![Role::General, Role::Domain]),
    ];
    features.extend(
        USER_CATEGORIES
            .iter()
            .zip(&user_cats)
            .map(|(n, v)| sparse(n, v, vec![Role::General])),
    );
    features.extend(
        VIDEO_CATEGORIES
            .iter()
            .zip(&video_cats)
            .map(|(n, v)| sparse(n, v, vec![Role::General])),
    );
    features.push(FeatureSpec {
        name: "tag".into(),
        kind: FeatureKind::MultiHot,
        vocab: Some(tags.size()),
        max_len: Some(MAX_TAGS),
        pooling: Some(Pooling::Mean),
        hashed: false,
        roles: vec![Role::General],
    });
    features.push(FeatureSpec {
        name: "log_duration_s".into(),
        kind: FeatureKind::Dense,
        vocab: None,
        max_len: None,
        pooling: None,
        hashed: false,
        roles: vec![Role::General],
    });
    let spec = ModelSpec {
        embedding_dim: d,
        gate_gamma: 2.0,
        domain_feature: "tab".into(),
        tasks: LABELS.iter().map(|s| s.to_string()).collect(),
        features,
        epnet: Some(GateSpec { hidden: 64 }),
        ppnet: Some(GateSpec { hidden: 64 }),
        experts: None,
        towers: vec![128, 64],
        init: None,
    };
    spec.validate().map_err(|message| Error::Spec {
        file: "converted KuaiRand spec".into(),
        message,
    })?;

    let mut columns: Vec<Column> = cols.into_iter().map(Column::Sparse).collect();
    columns.push(Column::MultiHot {
        offsets: tag_offsets,
        ids: tag_ids,
    });
    columns.push(Column::Dense(duration));
    let batch = Batch::new(columns);
    batch.validate(&spec, &source, 1)?;
    let names: Vec<String> = LABELS.iter().map(|s| s.to_string()).collect();
    synth::write_rows(&spec, &names, std::iter::once((batch, labels)), out)?;
    Ok(Converted { spec, rows: n })
}
