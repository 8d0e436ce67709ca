//! The index annotations (§6): the OCI keys manifold fills, where
//! `created` comes from, config labels where the event payload is silent,
//! and the `--annotation` overrides applied last.

use std::collections::BTreeMap;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::github::json_str;
use super::{flag, Facts, GitInfo, Notes, TagError, TagPlan};
use crate::env::{self, Env};

// The pre-defined OCI annotation keys manifold writes on the index (§6).
pub const ANNOTATION_VERSION: &str = "org.opencontainers.image.version";
pub const ANNOTATION_REVISION: &str = "org.opencontainers.image.revision";
pub const ANNOTATION_SOURCE: &str = "org.opencontainers.image.source";
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";
pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";
pub const ANNOTATION_DESCRIPTION: &str = "org.opencontainers.image.description";
pub const ANNOTATION_URL: &str = "org.opencontainers.image.url";
pub const ANNOTATION_LICENSES: &str = "org.opencontainers.image.licenses";
pub const ANNOTATION_VENDOR: &str = "org.opencontainers.image.vendor";
pub const ANNOTATION_AUTHORS: &str = "org.opencontainers.image.authors";

/// The descriptive keys filled from the event payload, else from config labels.
const DESCRIPTIVE_KEYS: [&str; 6] = [
    ANNOTATION_TITLE,
    ANNOTATION_DESCRIPTION,
    ANNOTATION_URL,
    ANNOTATION_LICENSES,
    ANNOTATION_VENDOR,
    ANNOTATION_AUTHORS,
];

/// nixpkgs' `nix develop` shells export this placeholder (1980-01-01); it says
/// nothing about the build, so it must not become every image's `created`.
const SOURCE_DATE_EPOCH_PLACEHOLDER: i64 = 315_532_800;

/// Parses `--annotation KEY=VALUE` (split at the first `=`; the value is kept
/// verbatim, commas and all; an empty value deletes the key).
pub fn parse_annotation(arg: &str) -> Result<(String, String), TagError> {
    let bad = || TagError::BadAnnotation {
        arg: arg.to_owned(),
    };
    let (key, value) = arg.split_once('=').ok_or_else(bad)?;
    let key = key.trim();
    if key.is_empty() || key.chars().any(char::is_whitespace) {
        return Err(bad());
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// The index annotations (§6) with the `--annotation`s applied, and where
/// `created` came from.
pub(super) fn index_annotations(
    facts: &Facts,
    env: &Env,
    git: &dyn GitInfo,
    now: i64,
    notes: &mut Notes,
) -> Result<(BTreeMap<String, String>, String), TagError> {
    let payload = facts.payload;
    let mut annotations = BTreeMap::new();
    let version = facts
        .version
        .as_ref()
        .map(|v| v.text.clone())
        .or_else(|| facts.branch.clone())
        .or_else(|| facts.pull_request.map(|n| format!("pr-{n}")));
    let (created, created_from) = created_time(facts, env, git, now, notes)?;
    let url = json_str(payload, "/repository/homepage")
        .or_else(|| json_str(payload, "/repository/html_url"));
    // GitHub reports an unrecognised license as `NOASSERTION`: better none.
    let licenses = json_str(payload, "/repository/license/spdx_id")
        .filter(|l| !l.eq_ignore_ascii_case("NOASSERTION"));
    let repo = |field: &str| json_str(payload, &format!("/repository/{field}"));
    for (key, value) in [
        (ANNOTATION_VERSION, version.as_deref()),
        (ANNOTATION_REVISION, facts.revision.as_deref()),
        (ANNOTATION_SOURCE, facts.source.as_deref()),
        (ANNOTATION_CREATED, Some(&format_utc(created))),
        (ANNOTATION_TITLE, repo("name")),
        (ANNOTATION_DESCRIPTION, repo("description")),
        (ANNOTATION_URL, url),
        (ANNOTATION_LICENSES, licenses),
        (ANNOTATION_VENDOR, repo("owner/login")),
        (ANNOTATION_AUTHORS, repo("owner/html_url")),
    ] {
        if let Some(value) = value {
            annotations.insert(key.to_owned(), value.to_owned());
        }
    }
    apply_overrides(&mut annotations, &facts.opts.annotations);
    Ok((annotations, created_from))
}

fn apply_overrides(annotations: &mut BTreeMap<String, String>, overrides: &[(String, String)]) {
    for (key, value) in overrides {
        let key = key.trim();
        if value.is_empty() {
            annotations.remove(key);
        } else {
            annotations.insert(key.to_owned(), value.clone());
        }
    }
}

/// The `created` time and where it came from (§6).
fn created_time(
    facts: &Facts,
    env: &Env,
    git: &dyn GitInfo,
    now: i64,
    notes: &mut Notes,
) -> Result<(i64, String), TagError> {
    let revision = facts.revision.as_deref();
    if let Some(value) = flag(&facts.opts.created) {
        let secs = parse_time(value).ok_or_else(|| TagError::BadCreated {
            value: value.to_owned(),
        })?;
        return Ok((secs, "--created".to_owned()));
    }
    if let Some(value) = env.get(env::SOURCE_DATE_EPOCH) {
        match value.parse::<i64>() {
            Ok(SOURCE_DATE_EPOCH_PLACEHOLDER) => notes.notices.push(format!(
                "ignoring `{}={SOURCE_DATE_EPOCH_PLACEHOLDER}`, the placeholder nixpkgs shells \
                 export",
                env::SOURCE_DATE_EPOCH
            )),
            Ok(secs) if format_utc_checked(secs).is_some() => {
                return Ok((secs, env::SOURCE_DATE_EPOCH.to_owned()))
            }
            _ => notes.warnings.push(format!(
                "ignoring `{}={value}`: not a time in seconds since the epoch",
                env::SOURCE_DATE_EPOCH
            )),
        }
    }
    if let Some(secs) = revision.and_then(|rev| git.commit_time(rev)) {
        return Ok((secs, "git".to_owned()));
    }
    // The push payload's head commit is only the revision's if the ids agree.
    let head_id = json_str(facts.payload, "/head_commit/id");
    if revision.is_none() || head_id.is_none() || head_id == revision {
        if let Some(secs) =
            json_str(facts.payload, "/head_commit/timestamp").and_then(parse_rfc3339)
        {
            return Ok((secs, "event payload".to_owned()));
        }
    }
    Ok((now, "now".to_owned()))
}

/// Seconds since the epoch, or an RFC 3339 time.
fn parse_time(value: &str) -> Option<i64> {
    match value.parse::<i64>() {
        Ok(secs) => format_utc_checked(secs).map(|_| secs),
        Err(_) => parse_rfc3339(value),
    }
}

/// Seconds since the epoch of an RFC 3339 time (`2024-05-01T12:00:00Z`,
/// `2024-05-01 14:00:00.5+02:00`); a fraction of a second is dropped.
fn parse_rfc3339(text: &str) -> Option<i64> {
    let at = OffsetDateTime::parse(text.trim(), &Rfc3339).ok()?;
    Some(at.unix_timestamp())
}

/// `YYYY-MM-DDTHH:MM:SSZ`, or `None` outside years 0–9999.
fn format_utc_checked(secs: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

/// Formats seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC), clamped
/// to years 0–9999.
pub fn format_utc(secs: i64) -> String {
    const MIN: i64 = -62_167_219_200; // 0000-01-01T00:00:00Z
    const MAX: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    format_utc_checked(secs.clamp(MIN, MAX)).unwrap_or_default()
}

/// Fills the descriptive annotations (`title` … `authors`) the event payload
/// left empty from the images' config labels of the same key, where every
/// per-arch config has the label with the same value. The `--annotation`s
/// are applied last, so `KEY=` still deletes a label-derived value.
pub fn annotations_from_labels(
    plan: &TagPlan,
    per_arch_labels: &[BTreeMap<String, String>],
) -> BTreeMap<String, String> {
    let mut annotations = plan.annotations.clone();
    let Some((first, rest)) = per_arch_labels.split_first() else {
        return annotations;
    };
    for key in DESCRIPTIVE_KEYS {
        if annotations.contains_key(key) {
            continue;
        }
        let Some(value) = first.get(key).filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        if rest.iter().all(|labels| labels.get(key) == Some(value)) {
            annotations.insert(key.to_owned(), value.clone());
        }
    }
    apply_overrides(&mut annotations, &plan.annotation_overrides);
    annotations
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_parsing_and_formatting() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00.123Z"), Some(951_868_800));
        // GitHub's payload form, and a space instead of `T` (RFC 3339 §5.6).
        assert_eq!(
            parse_rfc3339("2000-03-01T01:30:00+01:30"),
            Some(951_868_800)
        );
        assert_eq!(
            parse_rfc3339(" 2000-02-29 23:00:00-01:00\n"),
            Some(951_868_800)
        );
        // A leap second is the last second of its day.
        assert_eq!(parse_rfc3339("1998-12-31T23:59:60Z"), Some(915_148_799));
        assert_eq!(parse_rfc3339("2000-02-30T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2001-02-29T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2000-01-01T24:00:00Z"), None);
        assert_eq!(parse_rfc3339("2000-01-01T00:00:00"), None);
        assert_eq!(parse_rfc3339("2000-01-01T00:00:00+0100"), None);
        assert_eq!(parse_rfc3339("2000-01-01T00:00:00Zjunk"), None);
        assert_eq!(parse_rfc3339("２000-01-01T00:00:00Z"), None);
        for secs in [0, 1, 86_399, 951_782_400, 4_102_444_800, -1] {
            assert_eq!(parse_rfc3339(&format_utc(secs)), Some(secs), "{secs}");
        }
        assert_eq!(format_utc(-1), "1969-12-31T23:59:59Z");
        assert_eq!(format_utc(i64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(format_utc(i64::MIN), "0000-01-01T00:00:00Z");
        assert_eq!(parse_time("99999999999999"), None);
    }
}
