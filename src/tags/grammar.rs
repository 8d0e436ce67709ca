//! The OCI grammars of tags and repository names: checks and the tag
//! sanitiser.

use std::sync::LazyLock;

use regex::Regex;

use super::TagError;

// `[0-9]`, not `\d`: the regex crate's `\d` matches every Unicode digit.
static TAG_GRAMMAR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$").expect("tag grammar compiles")
});
static NOT_TAG_CHARS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[^A-Za-z0-9._-]+").expect("sanitiser compiles"));

static REPOSITORY_GRAMMAR: LazyLock<Regex> = LazyLock::new(|| {
    let component = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*";
    Regex::new(&format!("^{component}(?:/{component})*$")).expect("name grammar compiles")
});

/// Checks a tag against the OCI grammar `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), TagError> {
    if TAG_GRAMMAR.is_match(tag) {
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
    if REPOSITORY_GRAMMAR.is_match(path) {
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
