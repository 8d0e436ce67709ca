//! Registry errors: what was asked (method, redacted URL), what came back
//! (status, the OCI `errors[]` codes and messages), and a hint when the fix is
//! known.
//!
//! URLs are printed without user info or query (distribution's `_state` and
//! object-store signatures live there); bodies are read at most 64 KiB and
//! only their `errors[]` are kept.

use std::fmt;
use std::path::PathBuf;

use reqwest::StatusCode;
use serde::Deserialize;
use url::Url;

use crate::digest::Digest;

/// One entry of an OCI error body.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct OciError {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

#[derive(Deserialize)]
struct OciErrorBody {
    #[serde(default)]
    errors: Vec<OciError>,
}

/// How much of an error body is read.
pub const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Parses `errors[]` from an error body; anything else gives none.
pub fn parse_oci_errors(body: &[u8]) -> Vec<OciError> {
    serde_json::from_slice::<OciErrorBody>(body)
        .map(|b| b.errors)
        .unwrap_or_default()
}

/// A URL safe to print: no user info, no query, no fragment.
#[derive(Clone, PartialEq, Eq)]
pub struct RedactedUrl(String);

impl RedactedUrl {
    pub fn new(url: &Url) -> RedactedUrl {
        let mut u = url.clone();
        let had_query = u.query().is_some();
        let _ = u.set_username("");
        let _ = u.set_password(None);
        u.set_query(None);
        u.set_fragment(None);
        let mut s = u.to_string();
        if had_query {
            s.push_str("?…");
        }
        RedactedUrl(s)
    }
}

impl fmt::Display for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Codes and messages, `CODE: message; CODE: message`.
fn describe(errors: &[OciError]) -> String {
    errors
        .iter()
        .map(|e| {
            if e.message.is_empty() {
                e.code.clone()
            } else {
                format!("{}: {}", e.code, e.message)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn suffix(errors: &[OciError], hint: &Option<String>) -> String {
    let mut s = String::new();
    if !errors.is_empty() {
        s.push_str(": ");
        s.push_str(&describe(errors));
    }
    if let Some(h) = hint {
        s.push_str("\nhint: ");
        s.push_str(h);
    }
    s
}

/// Everything that can go wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The registry answered with an unexpected status.
    #[error("`{method} {url}` failed with {status}{}", suffix(.errors, .hint))]
    Status {
        method: String,
        url: RedactedUrl,
        status: StatusCode,
        errors: Vec<OciError>,
        hint: Option<String>,
        /// The registry's `Retry-After`, for a retry of a whole upload.
        retry_after: Option<std::time::Duration>,
    },
    /// The request never got an answer (after retries).
    #[error("`{method} {url}` failed after {attempts} attempt(s)")]
    Transport {
        method: String,
        url: RedactedUrl,
        attempts: u32,
        #[source]
        source: reqwest::Error,
    },
    /// The registry's TLS certificate was refused (never retried).
    #[error("`{method} {url}`: the registry's TLS certificate is not trusted\nhint: pass its CA with `--ca-file ca.pem`, or, for a test registry, `--insecure-registry {host}`")]
    Certificate {
        method: String,
        url: RedactedUrl,
        host: String,
        #[source]
        source: reqwest::Error,
    },
    /// The answer was not what the protocol promises.
    #[error("`{method} {url}`: {reason}")]
    Protocol {
        method: String,
        url: RedactedUrl,
        reason: String,
    },
    /// Content did not hash to the digest it was asked for by.
    #[error("`{url}` sent content with digest `{actual}`, expected `{expected}`")]
    DigestMismatch {
        url: RedactedUrl,
        expected: Digest,
        actual: Digest,
    },
    /// A blob or manifest is larger than the caller allows.
    #[error("`{url}` is larger than {max} bytes")]
    TooLarge { url: RedactedUrl, max: u64 },
    /// Getting a bearer token failed.
    #[error("getting a token from `{realm}` for `{registry}` failed{}", suffix(.errors, .hint))]
    Token {
        registry: String,
        realm: RedactedUrl,
        status: Option<StatusCode>,
        errors: Vec<OciError>,
        hint: Option<String>,
        #[source]
        source: Option<reqwest::Error>,
    },
    /// The registry asked for something manifold will not do.
    #[error("cannot authenticate to `{registry}`: {reason}")]
    Auth { registry: String, reason: String },
    /// A blob's bytes could not be read from its spool.
    #[error("reading the blob to upload failed")]
    Spool(#[source] std::io::Error),
    /// A credential file could not be used.
    #[error("credential file `{path}`: {reason}")]
    CredentialFile { path: PathBuf, reason: String },
    /// A credential helper failed.
    #[error("credential helper `{helper}`: {reason}")]
    CredentialHelper { helper: String, reason: String },
    /// The client could not be configured.
    #[error("setting up the HTTP client failed: {reason}")]
    Config {
        reason: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl RegistryError {
    /// A request that got no answer: [`RegistryError::Certificate`] when TLS
    /// verification refused the registry, else
    /// [`RegistryError::Transport`].
    pub fn transport(
        method: &str,
        url: &Url,
        attempts: u32,
        source: reqwest::Error,
    ) -> RegistryError {
        if super::retry::is_certificate_error(&source) {
            return RegistryError::Certificate {
                method: method.to_owned(),
                url: RedactedUrl::new(url),
                host: url[url::Position::BeforeHost..url::Position::AfterPort].to_owned(),
                source,
            };
        }
        RegistryError::Transport {
            method: method.to_owned(),
            url: RedactedUrl::new(url),
            attempts,
            source,
        }
    }

    /// The HTTP status, when the registry answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            RegistryError::Status { status, .. } => Some(*status),
            RegistryError::Token { status, .. } => *status,
            _ => None,
        }
    }

    /// The OCI error codes in the answer.
    pub fn codes(&self) -> Vec<&str> {
        match self {
            RegistryError::Status { errors, .. } | RegistryError::Token { errors, .. } => {
                errors.iter().map(|e| e.code.as_str()).collect()
            }
            _ => Vec::new(),
        }
    }

    /// The wait the registry asked for with `Retry-After`.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            RegistryError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether a retry could help (see `retry.rs`).
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Status { status, .. } => super::retry::is_transient_status(*status),
            RegistryError::Transport { source, .. } => super::retry::is_transient_error(source),
            RegistryError::Token {
                status: Some(status),
                ..
            } => super::retry::is_transient_status(*status),
            RegistryError::Token {
                source: Some(source),
                ..
            } => super::retry::is_transient_error(source),
            _ => false,
        }
    }
}

/// What [`super::Credentials::source`] says for anonymous access.
pub const NO_CREDENTIALS: &str = "no credentials";

/// The hint for a failed request, when the fix is known.
pub fn hint_for(
    host: &str,
    status: StatusCode,
    errors: &[OciError],
    credentials_source: &str,
) -> Option<String> {
    let code = |c: &str| errors.iter().any(|e| e.code == c);
    if status == StatusCode::FORBIDDEN && host == "ghcr.io" {
        return Some(
            "a workflow's `GITHUB_TOKEN` needs `permissions: packages: write`, and the package's \
             \"Manage Actions access\" must let this repository write"
                .to_owned(),
        );
    }
    if code("NAME_UNKNOWN") && host.contains(".ecr.") && host.ends_with(".amazonaws.com") {
        return Some(
            "ECR does not create repositories on push: create it first \
             (`aws ecr create-repository`)"
                .to_owned(),
        );
    }
    let denied = status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
    if denied && credentials_source == NO_CREDENTIALS {
        return Some(format!(
            "no credentials were found for `{host}`: log in (`docker login {host}` or \
             `podman login {host}`) or pass them to manifold"
        ));
    }
    if denied {
        return Some(format!(
            "check the credentials for `{host}` (used: {credentials_source}) and that they may \
             push to this repository"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_user_info_and_query() {
        let u =
            Url::parse("https://user:pw@r.example/v2/a/blobs/uploads/x?_state=s3cr3t&d=1").unwrap();
        let r = RedactedUrl::new(&u).to_string();
        assert_eq!(r, "https://r.example/v2/a/blobs/uploads/x?…");
    }

    #[test]
    fn status_errors_list_codes_and_hints() {
        let body = br#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied","detail":null}]}"#;
        let errors = parse_oci_errors(body);
        assert_eq!(errors[0].code, "DENIED");
        let url = Url::parse("https://ghcr.io/v2/o/r/manifests/latest").unwrap();
        let e = RegistryError::Status {
            method: "PUT".into(),
            url: RedactedUrl::new(&url),
            status: StatusCode::FORBIDDEN,
            hint: hint_for("ghcr.io", StatusCode::FORBIDDEN, &errors, "x"),
            errors,
            retry_after: None,
        };
        let text = e.to_string();
        assert!(text.starts_with("`PUT https://ghcr.io/v2/o/r/manifests/latest` failed with 403 Forbidden: DENIED: requested access"), "{text}");
        assert!(
            text.contains("\nhint: ") && text.contains("packages: write"),
            "{text}"
        );
        assert_eq!(e.codes(), ["DENIED"]);
        assert!(parse_oci_errors(b"<html>").is_empty());
    }

    #[test]
    fn ecr_name_unknown_says_repositories_are_not_created() {
        let errors = vec![OciError {
            code: "NAME_UNKNOWN".into(),
            message: String::new(),
        }];
        let h = hint_for(
            "1234.dkr.ecr.eu-west-1.amazonaws.com",
            StatusCode::NOT_FOUND,
            &errors,
            "x",
        )
        .unwrap();
        assert!(h.contains("create"), "{h}");
        assert!(hint_for("quay.io", StatusCode::NOT_FOUND, &errors, "x").is_none());
    }
}
