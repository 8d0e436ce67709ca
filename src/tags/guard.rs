//! The floating-tag guard (§3): which of `latest`, `X` and `X.Y` would move
//! backwards, given the tags the repository already has.

use std::cmp::Ordering;
use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

use super::{Floating, TagPlan};

static COUNTED_TAG: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[0-9]+\.[0-9]+(?:\.[0-9]+)?$").expect("counted tag grammar compiles")
});

/// Which tags to push and which to withhold (§3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuardOutcome {
    pub kept: Vec<String>,
    /// `(tag, reason)`, e.g. `("1", "`1.3.0` exists")`.
    pub withheld: Vec<(String, String)>,
}

/// A listed tag's numeric parts if the guard counts it: one leading `v`/`V`
/// dropped, then two or three numeric parts and nothing else.
pub(super) fn counted_parts(tag: &str) -> Option<Vec<&str>> {
    let t = tag.strip_prefix(['v', 'V']).unwrap_or(tag);
    COUNTED_TAG.is_match(t).then(|| t.split('.').collect())
}

/// Compares digit strings numerically, whatever their length.
fn cmp_number(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Compares numeric parts, missing ones counting as 0.
fn cmp_parts(a: &[&str], b: &[&str]) -> Ordering {
    (0..a.len().max(b.len()))
        .map(|i| cmp_number(a.get(i).unwrap_or(&"0"), b.get(i).unwrap_or(&"0")))
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

/// Withholds the guarded floating tags that would move backwards given the
/// repository's `existing_tags` (§3). Call once per destination repository.
pub fn apply_guard(plan: &TagPlan, existing_tags: &[String]) -> GuardOutcome {
    let published: Vec<&str> = plan
        .version
        .as_ref()
        .map(|v| v.parts.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let counted: Vec<(&str, Vec<&str>)> = existing_tags
        .iter()
        .filter_map(|t| Some((t.as_str(), counted_parts(t)?)))
        .collect();
    let mut outcome = GuardOutcome {
        kept: Vec::new(),
        withheld: Vec::new(),
    };
    for tag in &plan.tags {
        let floating = plan
            .guarded
            .iter()
            .find(|g| g.tag == *tag)
            .map(|g| g.floating);
        let blocker = floating.and_then(|floating| {
            let same = |n: usize, parts: &[&str]| {
                (0..n).all(|i| match (parts.get(i), published.get(i)) {
                    (Some(a), Some(b)) => cmp_number(a, b).is_eq(),
                    _ => false,
                })
            };
            counted
                .iter()
                .filter(|(_, parts)| match floating {
                    Floating::Major => same(1, parts),
                    Floating::Minor => same(2, parts),
                    Floating::Latest => true,
                })
                .filter(|(_, parts)| cmp_parts(parts, &published).is_gt())
                .max_by(|a, b| cmp_parts(&a.1, &b.1))
        });
        match blocker {
            Some((existing, _)) => outcome
                .withheld
                .push((tag.clone(), format!("`{existing}` exists"))),
            None => outcome.kept.push(tag.clone()),
        }
    }
    outcome
}
