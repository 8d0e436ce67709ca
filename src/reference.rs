//! Image references: `host[:port]/path[:tag][@sha256:…]`, split into the
//! registry, the repository path, a tag and a digest.
//!
//! Sits after `oci` and before `registry`: it only parses and normalises
//! (Docker Hub aliases, `library/` for single names, the OCI name grammar) and
//! says where a registry's API lives. It does no I/O; deciding whether a host
//! may be reached over plain HTTP beyond loopback is left to the registry
//! client's options.

use std::fmt;
use std::net::IpAddr;
use std::sync::LazyLock;

use regex::Regex;
use url::Url;

use crate::digest::Digest;

/// The name Docker Hub goes by in references and credential files.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that serves Docker Hub's registry API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";

/// Why a string is not a reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{input}` is not a valid image reference: {reason}")]
pub struct ReferenceError {
    pub input: String,
    pub reason: String,
}

fn err(input: &str, reason: impl Into<String>) -> ReferenceError {
    ReferenceError {
        input: input.to_owned(),
        reason: reason.into(),
    }
}

/// One path component of a repository name (OCI distribution spec).
static PATH_COMPONENT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$").expect("valid regex"));
static TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$").expect("valid regex"));
static HOST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?:(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])(?:\.(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]))*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$",
    )
    .expect("valid regex")
});

/// Whether `tag` is a valid tag.
pub fn is_valid_tag(tag: &str) -> bool {
    TAG.is_match(tag)
}

/// Whether `path` is a valid repository path (`owner/name`, without the
/// registry): `/`-separated components of the OCI name grammar.
pub fn is_valid_path(path: &str) -> bool {
    path.split('/').all(|c| PATH_COMPONENT.is_match(c))
}

/// A registry: `host[:port]`, lower-cased, Docker Hub aliases folded into
/// `docker.io`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Registry {
    host: String,
}

impl Registry {
    /// Parses `host[:port]` (or `[v6]:port`).
    pub fn parse(host: &str) -> Result<Registry, ReferenceError> {
        if !HOST.is_match(host) {
            return Err(err(host, "the registry is not a `host[:port]`"));
        }
        // The URL parser is stricter than the grammar (a port above 65535; a
        // last label that reads as a number, `quay.0x`, makes the host an
        // IPv4 address): refuse here what `api_base` could never build.
        if Url::parse(&format!("https://{host}/")).is_err() {
            return Err(err(
                host,
                "the registry is not a valid host name or address",
            ));
        }
        let lower = host.to_ascii_lowercase();
        let host = match lower.as_str() {
            "docker.io" | "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
            _ => lower,
        };
        Ok(Registry { host })
    }

    /// `host[:port]` as written in references (`docker.io` for Docker Hub).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The host (and port) serving the API.
    pub fn api_host(&self) -> &str {
        if self.is_docker_hub() {
            DOCKER_HUB_API_HOST
        } else {
            &self.host
        }
    }

    pub fn is_docker_hub(&self) -> bool {
        self.host == DOCKER_HUB
    }

    /// The host name without port or IPv6 brackets.
    pub fn hostname(&self) -> &str {
        let h = self.api_host();
        if let Some(rest) = h.strip_prefix('[') {
            return rest.split(']').next().unwrap_or(rest);
        }
        h.rsplit_once(':').map_or(h, |(name, _)| name)
    }

    /// `localhost`, 127.0.0.0/8 or `[::1]`: plain HTTP is allowed there, as
    /// Docker does by default.
    pub fn is_loopback(&self) -> bool {
        let name = self.hostname();
        name == "localhost"
            || name
                .parse::<IpAddr>()
                .map(|ip| ip.is_loopback())
                .unwrap_or(false)
    }

    /// The base URL of the API (`…/v2/` is appended by the client): `http`
    /// for loopback hosts, `https` otherwise.
    pub fn api_base(&self) -> Url {
        self.api_base_with(self.is_loopback())
    }

    /// The base URL, using plain HTTP when `plain_http` is set.
    pub fn api_base_with(&self, plain_http: bool) -> Url {
        let scheme = if plain_http { "http" } else { "https" };
        Url::parse(&format!("{scheme}://{}/", self.api_host()))
            .expect("a validated host makes a valid URL")
    }
}

impl fmt::Display for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host)
    }
}

/// A repository in a registry: Display `host/path`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Repository {
    pub registry: Registry,
    pub path: String,
}

impl Repository {
    /// Parses `host[:port]/path` (or a Docker Hub name) strictly.
    pub fn parse(input: &str) -> Result<Repository, ReferenceError> {
        let (repository, tag, digest) = split(input, false)?;
        if tag.is_some() || digest.is_some() {
            return Err(err(input, "a repository takes no tag or digest"));
        }
        Ok(repository)
    }

    /// Like [`Repository::parse`], but lower-cases an uppercase path; the
    /// `bool` says whether it did, so the caller can print a notice.
    pub fn parse_lenient(input: &str) -> Result<(Repository, bool), ReferenceError> {
        let (repository, tag, digest) = split(input, true)?;
        if tag.is_some() || digest.is_some() {
            return Err(err(input, "a repository takes no tag or digest"));
        }
        let lowered = has_uppercase_path(input);
        Ok((repository, lowered))
    }

    /// A reference to `tag` in this repository.
    pub fn tag(&self, tag: &str) -> Reference {
        Reference {
            repository: self.clone(),
            tag: Some(tag.to_owned()),
            digest: None,
        }
    }

    /// A reference to `digest` in this repository.
    pub fn digest(&self, digest: &Digest) -> Reference {
        Reference {
            repository: self.clone(),
            tag: None,
            digest: Some(digest.clone()),
        }
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.path)
    }
}

/// `repository[:tag][@digest]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    pub repository: Repository,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        let (repository, tag, digest) = split(input, false)?;
        Ok(Reference {
            repository,
            tag,
            digest,
        })
    }

    /// What to put after `/manifests/`: the digest if any, else the tag,
    /// else `latest`.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Reference, ReferenceError> {
        Reference::parse(s)
    }
}

fn has_uppercase_path(input: &str) -> bool {
    let without_host = match input.split_once('/') {
        Some((first, rest)) if looks_like_host(first) => rest,
        _ => input,
    };
    let name = without_host.split('@').next().unwrap_or(without_host);
    let name = match name.rsplit_once(':') {
        Some((n, _)) => n,
        None => name,
    };
    name.bytes().any(|b| b.is_ascii_uppercase())
}

/// The first path component names a registry only if it has a `.` or `:`
/// or is `localhost` (Docker's rule).
fn looks_like_host(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost" || first.starts_with('[')
}

type Parts = (Repository, Option<String>, Option<Digest>);

fn split(input: &str, lenient: bool) -> Result<Parts, ReferenceError> {
    if input.is_empty() {
        return Err(err(input, "it is empty"));
    }
    if input.contains("://") {
        return Err(err(
            input,
            "give `host/path` without a scheme (hint: drop `https://`)",
        ));
    }
    let (rest, digest) = match input.rsplit_once('@') {
        Some((rest, d)) => {
            let digest = d
                .parse::<Digest>()
                .map_err(|e| err(input, format!("bad digest: {e}")))?;
            (rest, Some(digest))
        }
        None => (input, None),
    };
    // A tag is a `:` after the last `/`, so a registry port is not one.
    let (name, tag) = match rest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => {
            if !is_valid_tag(tag) {
                return Err(err(
                    input,
                    format!("`{tag}` is not a valid tag (`[A-Za-z0-9_][A-Za-z0-9._-]{{0,127}}`)"),
                ));
            }
            (name, Some(tag.to_owned()))
        }
        _ => (rest, None),
    };
    let (registry, path) = match name.split_once('/') {
        Some((first, path)) if looks_like_host(first) => (Registry::parse(first)?, path),
        _ => (Registry::parse(DOCKER_HUB)?, name),
    };
    let mut path = if lenient {
        path.to_ascii_lowercase()
    } else {
        path.to_owned()
    };
    if path.is_empty() {
        return Err(err(input, "the repository path is empty"));
    }
    if registry.is_docker_hub() && !path.contains('/') {
        path = format!("library/{path}");
    }
    for component in path.split('/') {
        if !PATH_COMPONENT.is_match(component) {
            let why = if component.bytes().any(|b| b.is_ascii_uppercase()) {
                format!("`{component}` has uppercase letters (repository names are lowercase)")
            } else {
                format!(
                    "`{component}` is not a valid path component (lowercase letters, digits, \
                     and `.`, `_`, `__`, `-` between them)"
                )
            };
            return Err(err(input, why));
        }
    }
    if registry.host().len() + 1 + path.len() > 255 {
        return Err(err(input, "the name is longer than 255 characters"));
    }
    Ok((Repository { registry, path }, tag, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_names_are_normalised() {
        for input in [
            "nginx",
            "docker.io/nginx",
            "index.docker.io/library/nginx",
            "registry-1.docker.io/library/nginx",
        ] {
            let r = Repository::parse(input).unwrap();
            assert_eq!(r.to_string(), "docker.io/library/nginx", "{input}");
            assert_eq!(r.registry.api_host(), "registry-1.docker.io");
            assert_eq!(
                r.registry.api_base().as_str(),
                "https://registry-1.docker.io/"
            );
        }
        let r = Repository::parse("someone/tool").unwrap();
        assert_eq!(r.to_string(), "docker.io/someone/tool");
    }

    #[test]
    fn hosts_ports_tags_and_digests_are_split() {
        let d = Digest::of(b"x");
        let r = Reference::parse(&format!("localhost:5000/a/b:v1.2@{d}")).unwrap();
        assert_eq!(r.repository.registry.host(), "localhost:5000");
        assert_eq!(r.repository.path, "a/b");
        assert_eq!(r.tag.as_deref(), Some("v1.2"));
        assert_eq!(r.digest.as_ref(), Some(&d));
        assert_eq!(r.to_string(), format!("localhost:5000/a/b:v1.2@{d}"));
        assert_eq!(r.manifest_reference(), d.to_string());

        let r = Reference::parse("ghcr.io/Owner/x".to_lowercase().as_str()).unwrap();
        assert_eq!(r.repository.registry.host(), "ghcr.io");
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_reference(), "latest");

        let r = Reference::parse("127.0.0.1:5000/app").unwrap();
        assert_eq!(r.repository.path, "app", "no library/ outside Docker Hub");
        assert_eq!(r.repository.registry.hostname(), "127.0.0.1");
    }

    #[test]
    fn loopback_hosts_get_plain_http() {
        for (host, loopback) in [
            ("localhost:5000", true),
            ("127.0.0.1:5000", true),
            ("127.3.2.1", true),
            ("[::1]:5000", true),
            ("128.0.0.1", false),
            ("ghcr.io", false),
            ("localhost.example.com", false),
        ] {
            let r = Registry::parse(host).unwrap();
            assert_eq!(r.is_loopback(), loopback, "{host}");
            let scheme = r.api_base().scheme().to_owned();
            assert_eq!(scheme, if loopback { "http" } else { "https" }, "{host}");
        }
        assert_eq!(
            Registry::parse("[::1]:5000").unwrap().api_base().as_str(),
            "http://[::1]:5000/"
        );
    }

    #[test]
    fn invalid_references_are_refused_with_the_input_named() {
        for bad in [
            "",
            "ghcr.io/",
            "ghcr.io/a//b",
            "ghcr.io/a/-b",
            "ghcr.io/a/b:-tag",
            "ghcr.io/a/b:has space",
            "ghcr.io/a/b@sha256:123",
            "https://ghcr.io/a/b",
            "ghcr.io/Owner/b",
            "ghcr.io/a/b..c",
        ] {
            let e = Reference::parse(bad).unwrap_err();
            assert_eq!(e.input, bad);
            assert!(e.to_string().contains(&format!("`{bad}`")), "{e}");
        }
        let long_tag = "t".repeat(129);
        assert!(Reference::parse(&format!("ghcr.io/a:{long_tag}")).is_err());
        assert!(Reference::parse(&format!("ghcr.io/a:{}", &long_tag[1..])).is_ok());
        assert!(Reference::parse("ghcr.io/a__b/c-d--e.f_g").is_ok());
    }

    #[test]
    fn lenient_parsing_lowercases_and_says_so() {
        let (r, lowered) = Repository::parse_lenient("ghcr.io/Owner/Repo").unwrap();
        assert_eq!(r.to_string(), "ghcr.io/owner/repo");
        assert!(lowered);
        let (r, lowered) = Repository::parse_lenient("GHCR.IO/owner/repo").unwrap();
        assert_eq!(r.to_string(), "ghcr.io/owner/repo");
        assert!(!lowered, "only the path counts: hosts are case-insensitive");
        assert!(Repository::parse("ghcr.io/owner/repo:tag").is_err());
    }

    /// Found by the `reference` fuzzer: hosts the grammar takes but the URL
    /// parser refuses made `api_base` panic.
    #[test]
    fn hosts_without_a_url_are_refused() {
        for input in [
            "quay.0X/a__bd.e",
            "registry.1/x",
            "1.2.3.4.5/x",
            "localhost:99999/x",
        ] {
            let e = Reference::parse(input).expect_err(input);
            assert!(e.reason.contains("valid host"), "{input}: {e}");
        }
        for host in ["quay.io", "127.0.0.1:5000", "[::1]:5000", "localhost:65535"] {
            let r = Registry::parse(host).expect(host);
            assert!(r.api_base().host_str().is_some(), "{host}");
        }
    }
}
