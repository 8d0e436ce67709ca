//! Tags and repository names as the tag rules take them: checks with their
//! errors (the grammars themselves are `reference`'s) and the tag sanitiser.

use std::sync::LazyLock;

use regex::Regex;

use super::TagError;
use crate::reference;

static NOT_TAG_CHARS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[^A-Za-z0-9._-]+").expect("sanitiser compiles"));

/// Checks a tag against the OCI grammar `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), TagError> {
    if reference::is_valid_tag(tag) {
        Ok(())
    } else {
        Err(TagError::InvalidTag {
            tag: tag.to_owned(),
        })
    }
}

/// Makes a derived tag valid: each run of characters outside
/// `[A-Za-z0-9._-]` becomes `-`, leading `.`/`-` are dropped, and the result is
/// cut to 128 characters. May return `""`.
pub fn sanitize(text: &str) -> String {
    let replaced = NOT_TAG_CHARS.replace_all(text, "-");
    let trimmed = replaced.trim_start_matches(['.', '-']);
    // Only ASCII is left, so a byte cut is a character cut.
    trimmed[..trimmed.len().min(128)].to_owned()
}

/// Checks a repository path (`owner/name`, without the registry) against the
/// OCI name grammar.
pub fn validate_repository_path(path: &str) -> Result<(), TagError> {
    if reference::is_valid_path(path) {
        Ok(())
    } else {
        Err(TagError::InvalidRepository {
            name: path.to_owned(),
        })
    }
}

/// Lower-cases a repository path derived from `GITHUB_REPOSITORY` (GitHub
/// names may have capitals, registry paths may not), with a notice when that
/// changed it.
pub fn repository_from_github(name: &str) -> (String, Option<String>) {
    let lower = name.trim().to_ascii_lowercase();
    let notice = (lower != name.trim())
        .then(|| format!("using repository `{lower}`: `{}` lower-cased", name.trim()));
    (lower, notice)
}
