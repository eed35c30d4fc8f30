//! `pepnet eval`: AUC and GAUC per domain × task and over all domains, from a labelled data file
//! and the scores `pepnet score` wrote for it (row for row).

use std::collections::BTreeMap;
use std::path::Path;

use arrow_array::Array;
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use serde::{Deserialize, Serialize};

use crate::metrics::{auc, gauc};
use pepnet_core::batch::Column;
use pepnet_core::error::{Error, Result};
use pepnet_core::spec::ModelSpec;
use pepnet_io::{read_number_columns, InputReader};

/// Where the labels and users are in the data file.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Column holding the user, for GAUC.
    pub user_column: String,
    /// Per task, the column holding its 0/1 label (by default the task's name).
    pub label_columns: Vec<String>,
}

/// One line of the report: a task in one domain, or over all (`domain` = "all").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRow {
    pub domain: String,
    pub task: String,
    pub impressions: usize,
    pub positives: usize,
    /// `None` where one class is absent.
    pub auc: Option<f64>,
    pub gauc: Option<f64>,
    /// Users with both labels, whom GAUC averages.
    pub gauc_users: usize,
}

/// What evaluation needs of a labelled data file, row for row: each sample's domain (the
/// domain feature's id), user, and per task its 0/1 label.
#[derive(Debug, Clone)]
pub struct EvalData {
    pub domains: Vec<u64>,
    pub users: Vec<String>,
    /// Per task, per sample.
    pub labels: Vec<Vec<bool>>,
}

/// Reads `data` (features, user and labels) and `scores` (one column per task) and computes the
/// report.
pub fn evaluate(
    spec: &ModelSpec,
    data: &Path,
    scores: &Path,
    options: &EvalOptions,
) -> Result<Vec<EvalRow>> {
    let truth = read_eval_data(spec, data, options)?;
    let predictions = read_number_columns(scores, &spec.tasks)?;
    // A score outside [0, 1] (or NaN) is not a probability; AUC would rank it silently.
    for (task, column) in spec.tasks.iter().zip(&predictions) {
        if let Some(i) = column.iter().position(|p| !(0.0..=1.0).contains(p)) {
            return Err(Error::Input {
                source_name: scores.display().to_string(),
                row: i + 1,
                column: task.clone(),
                message: format!(
                    "{} is not a probability (expected a number in [0, 1])",
                    column[i]
                ),
            });
        }
    }
    if predictions[0].len() != truth.domains.len() {
        return Err(Error::InputFile {
            source_name: scores.display().to_string(),
            message: format!(
                "{} rows of scores for {} rows of data in {}; the files must match row for row",
                predictions[0].len(),
                truth.domains.len(),
                data.display()
            ),
        });
    }
    Ok(report(spec, &truth, &predictions))
}

/// Reads the domains, users and labels of a labelled data file.
pub fn read_eval_data(spec: &ModelSpec, data: &Path, options: &EvalOptions) -> Result<EvalData> {
    let mut carry = vec![options.user_column.clone()];
    carry.extend(options.label_columns.iter().cloned());
    let domain_index = spec
        .features
        .iter()
        .position(|f| f.name == spec.domain_feature)
        .expect("validated: the domain feature exists");
    let t_count = spec.n_tasks();
    let (mut domains, mut users) = (Vec::new(), Vec::new());
    let mut labels: Vec<Vec<bool>> = vec![Vec::new(); t_count];
    let source = data.display().to_string();
    let fmt = FormatOptions::default();
    for batch in InputReader::open(data, spec, &carry, 65536, None)? {
        let batch = batch?;
        let first_row = domains.len() + 1;
        match &batch.batch.columns[domain_index] {
            Column::Sparse(ids) => domains.extend_from_slice(ids),
            _ => unreachable!("validated: the domain feature is sparse"),
        }
        let cell = |c: usize, i: usize| -> Result<String> {
            let array = &batch.carried[c];
            let f =
                ArrayFormatter::try_new(array.as_ref(), &fmt).map_err(|e| Error::InputFile {
                    source_name: source.clone(),
                    message: format!("column '{}': {e}", carry[c]),
                })?;
            Ok(if array.is_null(i) {
                String::new()
            } else {
                f.value(i).to_string()
            })
        };
        for i in 0..batch.batch.len() {
            users.push(cell(0, i)?);
            for (t, task_labels) in labels.iter_mut().enumerate() {
                let value = cell(t + 1, i)?;
                task_labels.push(match value.trim() {
                    "1" | "1.0" | "true" => true,
                    "0" | "0.0" | "false" => false,
                    other => {
                        return Err(Error::Input {
                            source_name: source.clone(),
                            row: first_row + i,
                            column: carry[t + 1].clone(),
                            message: format!("expected a 0/1 label, found '{other}'"),
                        })
                    }
                });
            }
        }
    }
    Ok(EvalData {
        domains,
        users,
        labels,
    })
}

/// AUC and GAUC per domain × task and over all domains; `predictions[t][i]` is sample i's
/// probability for task t.
pub fn report(spec: &ModelSpec, truth: &EvalData, predictions: &[Vec<f32>]) -> Vec<EvalRow> {
    let EvalData {
        domains,
        users,
        labels,
    } = truth;
    let mut by_domain: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, &d) in domains.iter().enumerate() {
        by_domain.entry(d).or_default().push(i);
    }
    let all: Vec<usize> = (0..domains.len()).collect();
    let groups = by_domain
        .iter()
        .map(|(d, rows)| (d.to_string(), rows))
        .chain(std::iter::once(("all".to_string(), &all)));
    let mut report = Vec::new();
    for (domain, rows) in groups {
        for (t, task) in spec.tasks.iter().enumerate() {
            let s: Vec<f32> = rows.iter().map(|&i| predictions[t][i]).collect();
            let l: Vec<bool> = rows.iter().map(|&i| labels[t][i]).collect();
            let u: Vec<&str> = rows.iter().map(|&i| users[i].as_str()).collect();
            let g = gauc(&u, &s, &l);
            report.push(EvalRow {
                domain: domain.clone(),
                task: task.clone(),
                impressions: rows.len(),
                positives: l.iter().filter(|&&x| x).count(),
                auc: auc(&s, &l),
                gauc: g.map(|(v, _)| v),
                gauc_users: g.map_or(0, |(_, n)| n),
            });
        }
    }
    report
}

/// The report as a terminal table.
pub fn table(rows: &[EvalRow]) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "{:<8} {:<12} {:>11} {:>10} {:>8} {:>8} {:>8}\n",
        "domain", "task", "impressions", "positives", "AUC", "GAUC", "users"
    );
    let metric = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.4}"));
    for r in rows {
        let _ = writeln!(
            out,
            "{:<8} {:<12} {:>11} {:>10} {:>8} {:>8} {:>8}",
            r.domain,
            r.task,
            r.impressions,
            r.positives,
            metric(r.auc),
            metric(r.gauc),
            r.gauc_users
        );
    }
    out
}
