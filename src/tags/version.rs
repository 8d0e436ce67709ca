//! Versions (§1.3): normalised, then matched against the release grammar.

use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

static RELEASE_GRAMMAR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^([0-9]+(?:\.[0-9]+){0,3})(?:-([0-9A-Za-z.-]+))?(?:\+([0-9A-Za-z.-]+))?$")
        .expect("release grammar compiles")
});

/// How a version matched the release grammar (§1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VersionKind {
    Stable,
    PreRelease,
    Opaque,
}

/// A version, normalised (§1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Version {
    /// Trimmed, one leading `v`/`V` dropped before a digit; build metadata
    /// kept. This is the `version` annotation.
    pub text: String,
    pub kind: VersionKind,
    /// Numeric parts as written (leading zeros kept); empty when opaque.
    pub parts: Vec<String>,
    pub pre_release: Option<String>,
    pub build: Option<String>,
}

impl Version {
    /// Parses a version; `None` when blank.
    pub fn parse(raw: &str) -> Option<Version> {
        let text = normalise_version(raw);
        if text.is_empty() {
            return None;
        }
        let Some(caps) = RELEASE_GRAMMAR.captures(&text) else {
            return Some(Version {
                text,
                kind: VersionKind::Opaque,
                parts: Vec::new(),
                pre_release: None,
                build: None,
            });
        };
        let parts = caps[1].split('.').map(str::to_owned).collect();
        let pre_release = caps.get(2).map(|m| m.as_str().to_owned());
        let build = caps.get(3).map(|m| m.as_str().to_owned());
        let kind = if pre_release.is_some() {
            VersionKind::PreRelease
        } else {
            VersionKind::Stable
        };
        Some(Version {
            text,
            kind,
            parts,
            pre_release,
            build,
        })
    }

    /// The text the version tag is made from: build metadata dropped when the
    /// grammar matched (`+` is not allowed in tags).
    pub fn tag_text(&self) -> &str {
        match self.kind {
            VersionKind::Opaque => &self.text,
            _ => self.text.split('+').next().unwrap_or(&self.text),
        }
    }
}

/// Trims and drops one leading `v`/`V` when a digit follows.
pub(super) fn normalise_version(raw: &str) -> String {
    let text = raw.trim();
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        (Some('v' | 'V'), Some(d)) if d.is_ascii_digit() => text[1..].to_owned(),
        _ => text.to_owned(),
    }
}
