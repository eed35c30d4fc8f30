//! Ranking metrics of the paper's evaluation: AUC, and GAUC (the impression-weighted mean of
//! per-user AUC over users who have both a positive and a negative impression).

use std::collections::HashMap;

/// Area under the ROC curve: the probability that a random positive scores above a random
/// negative, ties counting one half. `None` when either class is absent.
pub fn auc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    assert_eq!(scores.len(), labels.len(), "one label per score");
    let positives = labels.iter().filter(|&&l| l).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    // Mann–Whitney U: the sum of the positives' ranks, with tied scores sharing their mean rank.
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        // Ranks i+1 ..= j+1 share their mean.
        let mean_rank = (i + j + 2) as f64 / 2.0;
        rank_sum += mean_rank * order[i..=j].iter().filter(|&&k| labels[k]).count() as f64;
        i = j + 1;
    }
    let (p, n) = (positives as f64, negatives as f64);
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

/// GAUC: per-user AUC weighted by the user's impressions, over users with both labels.
/// Returns the GAUC and the number of users it averaged; `None` if no user qualifies.
pub fn gauc<U: std::hash::Hash + Eq>(
    users: &[U],
    scores: &[f32],
    labels: &[bool],
) -> Option<(f64, usize)> {
    let mut by_user: HashMap<&U, (Vec<f32>, Vec<bool>)> = HashMap::new();
    for ((u, &s), &l) in users.iter().zip(scores).zip(labels) {
        let entry = by_user.entry(u).or_default();
        entry.0.push(s);
        entry.1.push(l);
    }
    let (mut weighted, mut impressions, mut count) = (0.0, 0.0, 0);
    for (s, l) in by_user.values() {
        if let Some(a) = auc(s, l) {
            weighted += a * s.len() as f64;
            impressions += s.len() as f64;
            count += 1;
        }
    }
    (count > 0).then(|| (weighted / impressions, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, by counting pairs.
    fn auc_by_pairs(scores: &[f32], labels: &[bool]) -> f64 {
        let (mut wins, mut pairs) = (0.0, 0.0);
        for (i, &li) in labels.iter().enumerate() {
            for (j, &lj) in labels.iter().enumerate() {
                if li && !lj {
                    pairs += 1.0;
                    wins += match scores[i].total_cmp(&scores[j]) {
                        std::cmp::Ordering::Greater => 1.0,
                        std::cmp::Ordering::Equal => 0.5,
                        std::cmp::Ordering::Less => 0.0,
                    };
                }
            }
        }
        wins / pairs
    }

    #[test]
    fn auc_matches_pair_counting_with_ties() {
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        for n in [2usize, 3, 17, 200] {
            // Scores from a few values, so that ties are common.
            let scores: Vec<f32> = (0..n).map(|_| (next() % 7) as f32 / 7.0).collect();
            let mut labels: Vec<bool> = (0..n).map(|_| next() % 3 == 0).collect();
            labels[0] = true;
            labels[1] = false;
            let got = auc(&scores, &labels).unwrap();
            assert!(
                (got - auc_by_pairs(&scores, &labels)).abs() < 1e-12,
                "n {n}"
            );
        }
    }

    #[test]
    fn auc_of_perfect_reversed_and_one_class() {
        let labels = [false, false, true, true];
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &labels), Some(1.0));
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &labels), Some(0.0));
        assert_eq!(auc(&[0.5; 4], &labels), Some(0.5));
        assert_eq!(auc(&[0.1, 0.2], &[true, true]), None);
    }

    #[test]
    fn gauc_weights_users_by_impressions_and_skips_one_class_users() {
        // User a: 4 impressions, AUC 1. User b: 2 impressions, AUC 0. User c: positives only.
        let users = ["a", "a", "a", "a", "b", "b", "c"];
        let scores = [0.1, 0.2, 0.8, 0.9, 0.9, 0.1, 0.5];
        let labels = [false, false, true, true, false, true, true];
        let (g, n) = gauc(&users, &scores, &labels).unwrap();
        assert_eq!(n, 2);
        assert!((g - (4.0 * 1.0 + 2.0 * 0.0) / 6.0).abs() < 1e-12);
        assert!(gauc(&["x"], &[0.3], &[true]).is_none());
    }
}
