//! Where credentials for a registry come from: explicit flags, the
//! containers `auth.json` files, Docker's `config.json` (helpers, store,
//! `auths`), the GitHub Actions job token, or none.
//!
//! The order is registries.md §4; the first source that has an entry wins.
//! The environment is read only through the `env` closure the caller passes,
//! so tests hand in a map. Files are only read, never written. What a secret
//! is used for (Basic, token exchange) is `auth`'s business.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use crate::reference::Registry;

use super::error::RegistryError;

/// A password or token: redacts itself in `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

/// What kind of credentials were found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    Anonymous,
    Basic {
        username: String,
        password: Secret,
    },
    /// A refresh token (`identitytoken`, or a helper's `<token>` user),
    /// exchanged at the token realm for access tokens.
    IdentityToken(Secret),
}

/// Credentials for one registry, and where they came from (for messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    kind: CredentialKind,
    source: String,
}

impl Credentials {
    pub fn anonymous() -> Credentials {
        Credentials {
            kind: CredentialKind::Anonymous,
            source: super::error::NO_CREDENTIALS.to_owned(),
        }
    }

    pub fn basic(
        username: impl Into<String>,
        password: Secret,
        source: impl Into<String>,
    ) -> Credentials {
        Credentials {
            kind: CredentialKind::Basic {
                username: username.into(),
                password,
            },
            source: source.into(),
        }
    }

    pub fn identity_token(token: Secret, source: impl Into<String>) -> Credentials {
        Credentials {
            kind: CredentialKind::IdentityToken(token),
            source: source.into(),
        }
    }

    pub fn kind(&self) -> &CredentialKind {
        &self.kind
    }

    /// Where these came from, e.g. ``docker config `~/.docker/config.json` ``.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn is_anonymous(&self) -> bool {
        self.kind == CredentialKind::Anonymous
    }
}

/// An `auths` entry in either file format.
#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

/// Finds credentials for `registry` and repository `repo_path`, first match
/// wins (registries.md §4). Blocking: it reads files and may run a
/// credential helper, so async callers use `spawn_blocking`.
pub fn resolve_credentials(
    registry: &Registry,
    repo_path: &str,
    explicit: Option<&(String, Secret)>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Credentials, RegistryError> {
    // 1. manifold's own flags.
    if let Some((user, pass)) = explicit {
        return Ok(Credentials::basic(
            user.clone(),
            pass.clone(),
            "explicit credentials",
        ));
    }
    let home = env("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);

    // 2. containers auth.json.
    let auth_files: Vec<PathBuf> = match env("REGISTRY_AUTH_FILE").filter(|s| !s.is_empty()) {
        Some(f) => vec![PathBuf::from(f)],
        None => {
            let mut files = Vec::new();
            if let Some(run) = env("XDG_RUNTIME_DIR").filter(|s| !s.is_empty()) {
                files.push(Path::new(&run).join("containers/auth.json"));
            }
            match env("XDG_CONFIG_HOME").filter(|s| !s.is_empty()) {
                Some(cfg) => files.push(Path::new(&cfg).join("containers/auth.json")),
                None => {
                    if let Some(h) = &home {
                        files.push(h.join(".config/containers/auth.json"));
                    }
                }
            }
            files
        }
    };
    for file in &auth_files {
        let Some(config) = read_config(file)? else {
            continue;
        };
        for key in containers_keys(registry, repo_path) {
            if let Some(entry) = config.auths.get(&key) {
                let source = format!("`{}` (entry `{key}`)", file.display());
                if let Some(c) = entry_credentials(entry, &source, file)? {
                    return Ok(c);
                }
            }
        }
    }

    // 3. Docker's config.json.
    let docker_config = match env("DOCKER_CONFIG").filter(|s| !s.is_empty()) {
        Some(dir) => Some(Path::new(&dir).join("config.json")),
        None => home.as_ref().map(|h| h.join(".docker/config.json")),
    };
    if let Some(file) = docker_config {
        if let Some(config) = read_config(&file)? {
            if let Some(c) = docker_credentials(&config, registry, &file, env)? {
                return Ok(c);
            }
        }
    }

    // 4. The GitHub Actions job token, last so a login step's PAT wins.
    if registry.host() == "ghcr.io" && env("GITHUB_ACTIONS").as_deref() == Some("true") {
        if let Some(token) = env("GITHUB_TOKEN").filter(|t| !t.is_empty()) {
            let actor = env("GITHUB_ACTOR")
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| "github-actions".to_owned());
            return Ok(Credentials::basic(
                actor,
                Secret::new(token),
                "`GITHUB_TOKEN` (the job token)",
            ));
        }
    }

    // 5. Anonymous.
    Ok(Credentials::anonymous())
}

fn read_config(path: &Path) -> Result<Option<ConfigFile>, RegistryError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(RegistryError::CredentialFile {
                path: path.to_owned(),
                reason: e.to_string(),
            })
        }
    };
    if text.trim().is_empty() {
        return Ok(None);
    }
    // The parser's message can quote the file, so it is not passed on.
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| RegistryError::CredentialFile {
            path: path.to_owned(),
            reason: format!("not valid JSON at line {} column {}", e.line(), e.column()),
        })
}

/// containers auth.json keys, most specific first: `H/R`, its parents, `H`.
fn containers_keys(registry: &Registry, repo_path: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut path = repo_path.trim_matches('/').to_owned();
    while !path.is_empty() {
        keys.push(format!("{}/{path}", registry.host()));
        path = match path.rsplit_once('/') {
            Some((parent, _)) => parent.to_owned(),
            None => String::new(),
        };
    }
    keys.extend(host_keys(registry));
    keys
}

/// The bare-host keys a registry may be filed under.
fn host_keys(registry: &Registry) -> Vec<String> {
    if registry.is_docker_hub() {
        vec![
            "docker.io".into(),
            "index.docker.io".into(),
            "registry-1.docker.io".into(),
            "https://index.docker.io/v1/".into(),
        ]
    } else {
        vec![registry.host().to_owned()]
    }
}

/// Docker's key normalisation: strip a scheme, a path and a trailing `/`.
fn normalise_docker_key(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let k = k.split('/').next().unwrap_or(k);
    k.to_ascii_lowercase()
}

fn docker_credentials(
    config: &ConfigFile,
    registry: &Registry,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Credentials>, RegistryError> {
    let keys = host_keys(registry);
    let server = if registry.is_docker_hub() {
        "https://index.docker.io/v1/".to_owned()
    } else {
        registry.host().to_owned()
    };
    let helper = keys
        .iter()
        .find_map(|k| config.cred_helpers.get(k))
        .or(config.creds_store.as_ref())
        .filter(|h| !h.is_empty());
    if let Some(helper) = helper {
        if let Some(c) = run_helper(helper, &server, env)? {
            return Ok(Some(c));
        }
        // Docker falls back to `auths` when the helper has nothing.
    }
    let wanted: Vec<String> = keys.iter().map(|k| normalise_docker_key(k)).collect();
    for (key, entry) in &config.auths {
        if wanted.contains(&normalise_docker_key(key)) {
            let source = format!("`{}` (entry `{key}`)", file.display());
            if let Some(c) = entry_credentials(entry, &source, file)? {
                return Ok(Some(c));
            }
        }
    }
    Ok(None)
}

fn entry_credentials(
    entry: &AuthEntry,
    source: &str,
    file: &Path,
) -> Result<Option<Credentials>, RegistryError> {
    if let Some(token) = entry.identitytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok(Some(Credentials::identity_token(
            Secret::new(token),
            source,
        )));
    }
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let bad = || RegistryError::CredentialFile {
            path: file.to_owned(),
            reason: format!("{source}: `auth` is not base64 of `user:password`"),
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad())?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
        let (user, pass) = decoded.split_once(':').ok_or_else(bad)?;
        return Ok(Some(Credentials::basic(user, Secret::new(pass), source)));
    }
    if let (Some(user), Some(pass)) = (&entry.username, &entry.password) {
        if !user.is_empty() {
            return Ok(Some(Credentials::basic(
                user.clone(),
                Secret::new(pass.clone()),
                source,
            )));
        }
    }
    Ok(None)
}

#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Runs `docker-credential-<name> get`, found on the `PATH` given by `env`.
fn run_helper(
    name: &str,
    server: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Credentials>, RegistryError> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    let program = format!("docker-credential-{name}");
    let helper_err = |reason: String| RegistryError::CredentialHelper {
        helper: program.clone(),
        reason,
    };
    let path = env("PATH").unwrap_or_default();
    let exe = std::env::split_paths(&path)
        .map(|dir| dir.join(&program))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            helper_err(
                "it is not on `PATH` (hint: install it, or remove `credsStore`/`credHelpers` \
                 from the Docker config)"
                    .to_owned(),
            )
        })?;
    let mut command = Command::new(&exe);
    command
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = crate::spawn::spawn_retrying_busy(&mut command)
        .map_err(|e| helper_err(format!("could not start it: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits early closes its stdin; its exit status says why.
        let _ = stdin.write_all(server.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| helper_err(format!("could not run it: {e}")))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if said.contains("credentials not found") {
            return Ok(None);
        }
        // Its output is not echoed: it may hold a secret.
        return Err(helper_err(format!("it failed ({})", out.status)));
    }
    let answer: HelperAnswer = serde_json::from_slice(&out.stdout)
        .map_err(|_| helper_err("it printed something that is not its JSON answer".to_owned()))?;
    if answer.secret.is_empty() {
        return Ok(None);
    }
    let source = format!("credential helper `{program}`");
    if answer.username == "<token>" {
        Ok(Some(Credentials::identity_token(
            Secret::new(answer.secret),
            source,
        )))
    } else {
        Ok(Some(Credentials::basic(
            answer.username,
            Secret::new(answer.secret),
            source,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    fn env_of(map: HashMap<&'static str, String>) -> impl Fn(&str) -> Option<String> {
        move |k| map.get(k).cloned()
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn user_of(c: &Credentials) -> String {
        match c.kind() {
            CredentialKind::Basic { username, password } => {
                format!("{username}:{}", password.expose())
            }
            CredentialKind::IdentityToken(t) => format!("token:{}", t.expose()),
            CredentialKind::Anonymous => "anonymous".into(),
        }
    }

    #[test]
    fn secrets_redact_themselves() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s} {s:?}").contains("hunter2"));
        let c = Credentials::basic("u", s, "x");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn explicit_credentials_win_and_anonymous_is_last() {
        let reg = Registry::parse("ghcr.io").unwrap();
        let explicit = ("me".to_owned(), Secret::new("pw"));
        let env = env_of(HashMap::new());
        let c = resolve_credentials(&reg, "a/b", Some(&explicit), &env).unwrap();
        assert_eq!(user_of(&c), "me:pw");
        let c = resolve_credentials(&reg, "a/b", None, &env).unwrap();
        assert!(c.is_anonymous());
    }

    #[test]
    fn containers_auth_file_matches_most_specific_key_first() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth.json");
        let json = serde_json::json!({"auths": {
            "ghcr.io": {"auth": b64("host:h")},
            "ghcr.io/org": {"auth": b64("org:o")},
            "ghcr.io/org/app": {"auth": b64("app:a")},
        }});
        std::fs::write(&file, json.to_string()).unwrap();
        let env = env_of(HashMap::from([(
            "REGISTRY_AUTH_FILE",
            file.display().to_string(),
        )]));
        let reg = Registry::parse("ghcr.io").unwrap();
        let got = |repo: &str| user_of(&resolve_credentials(&reg, repo, None, &env).unwrap());
        assert_eq!(got("org/app"), "app:a");
        assert_eq!(got("org/other"), "org:o");
        assert_eq!(got("else/x"), "host:h");
        let c = resolve_credentials(&reg, "org/app", None, &env).unwrap();
        assert!(c.source().contains("ghcr.io/org/app"), "{}", c.source());
    }

    #[test]
    fn xdg_files_come_before_docker_config() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let home = dir.path().join("home");
        std::fs::create_dir_all(run.join("containers")).unwrap();
        std::fs::create_dir_all(home.join(".docker")).unwrap();
        std::fs::write(
            home.join(".docker/config.json"),
            serde_json::json!({"auths": {"https://registry.example.com/v1/": {"username": "d", "password": "dp"}}})
                .to_string(),
        )
        .unwrap();
        let mut map = HashMap::from([("HOME", home.display().to_string())]);
        let reg = Registry::parse("registry.example.com").unwrap();
        let c = resolve_credentials(&reg, "x", None, &env_of(map.clone())).unwrap();
        assert_eq!(user_of(&c), "d:dp", "docker keys are normalised");
        std::fs::write(
            run.join("containers/auth.json"),
            serde_json::json!({"auths": {"registry.example.com": {"auth": b64("p:pp")}}})
                .to_string(),
        )
        .unwrap();
        map.insert("XDG_RUNTIME_DIR", run.display().to_string());
        let c = resolve_credentials(&reg, "x", None, &env_of(map)).unwrap();
        assert_eq!(user_of(&c), "p:pp");
    }

    #[test]
    fn docker_hub_aliases_and_identity_tokens() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::json!({"auths": {"https://index.docker.io/v1/": {"identitytoken": "idt", "auth": b64("u:p")}}})
                .to_string(),
        )
        .unwrap();
        let env = env_of(HashMap::from([(
            "DOCKER_CONFIG",
            dir.path().display().to_string(),
        )]));
        let reg = Registry::parse("registry-1.docker.io").unwrap();
        let c = resolve_credentials(&reg, "library/x", None, &env).unwrap();
        assert_eq!(user_of(&c), "token:idt");
    }

    #[test]
    fn credential_helpers_are_run_with_the_server_on_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let helper = bin.join("docker-credential-fake");
        // Answers for the server it was asked about; nothing for others.
        std::fs::write(
            &helper,
            "#!/bin/sh\nread server\nif [ \"$server\" = \"reg.example.com:5000\" ]; then\n\
             echo '{\"ServerURL\":\"x\",\"Username\":\"hu\",\"Secret\":\"hs\"}'\nelse\n\
             echo 'credentials not found in native keychain'; exit 1\nfi\n",
        )
        .unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::json!({"credsStore": "fake", "auths": {"other.example.com": {"auth": b64("a:b")}}})
                .to_string(),
        )
        .unwrap();
        let env = env_of(HashMap::from([
            ("DOCKER_CONFIG", dir.path().display().to_string()),
            ("PATH", bin.display().to_string()),
        ]));
        let reg = Registry::parse("reg.example.com:5000").unwrap();
        let c = resolve_credentials(&reg, "x", None, &env).unwrap();
        assert_eq!(user_of(&c), "hu:hs");
        let other = Registry::parse("other.example.com").unwrap();
        let c = resolve_credentials(&other, "x", None, &env).unwrap();
        assert_eq!(user_of(&c), "a:b", "not found falls back to auths");

        std::fs::write(&helper, "#!/bin/sh\necho 'boom secret-value' >&2\nexit 3\n").unwrap();
        let e = resolve_credentials(&reg, "x", None, &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("docker-credential-fake"), "{e}");
        assert!(!e.contains("secret-value"), "{e}");
    }

    #[test]
    fn github_job_token_only_for_ghcr_in_actions() {
        let map = HashMap::from([
            ("GITHUB_ACTIONS", "true".to_owned()),
            ("GITHUB_TOKEN", "ght".to_owned()),
            ("GITHUB_ACTOR", "octo".to_owned()),
        ]);
        let env = env_of(map);
        let ghcr = Registry::parse("ghcr.io").unwrap();
        let c = resolve_credentials(&ghcr, "o/r", None, &env).unwrap();
        assert_eq!(user_of(&c), "octo:ght");
        let other = Registry::parse("quay.io").unwrap();
        assert!(resolve_credentials(&other, "o/r", None, &env)
            .unwrap()
            .is_anonymous());
    }

    #[test]
    fn malformed_files_name_the_path_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth.json");
        std::fs::write(&file, "{\"auths\": {\"x\": secret-stuff").unwrap();
        let env = env_of(HashMap::from([(
            "REGISTRY_AUTH_FILE",
            file.display().to_string(),
        )]));
        let reg = Registry::parse("ghcr.io").unwrap();
        let e = resolve_credentials(&reg, "a", None, &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth.json"), "{e}");
        assert!(!e.contains("secret-stuff"), "{e}");
    }
}
