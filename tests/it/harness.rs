//! A real registry per test: CNCF distribution (`/usr/bin/docker-registry`)
//! on a free loopback port, with no auth, htpasswd Basic auth, or token auth
//! backed by a small token issuer that lives here (registries.md §8).
//!
//! The registry's access log goes to a file so tests can count requests.
//! Everything is removed when the `TestRegistry` is dropped.

#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use manifold::reference::Registry;
use manifold::registry::{ClientOptions, Credentials, RegistryClient, Secret};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const SERVICE: &str = "test-registry";
const ISSUER: &str = "test-issuer";

/// How the registry authenticates.
#[derive(Clone, Debug)]
pub enum Auth {
    None,
    Basic { user: String, pass: String },
    Token { user: String, pass: String },
}

impl Auth {
    pub fn basic() -> Auth {
        Auth::Basic {
            user: "tester".into(),
            pass: "s3cret-pass".into(),
        }
    }

    pub fn token() -> Auth {
        Auth::Token {
            user: "tester".into(),
            pass: "s3cret-pass".into(),
        }
    }

    /// `(user, pass)` when the registry wants credentials.
    pub fn creds(&self) -> Option<(String, String)> {
        match self {
            Auth::None => None,
            Auth::Basic { user, pass } | Auth::Token { user, pass } => {
                Some((user.clone(), pass.clone()))
            }
        }
    }
}

/// A running registry; killed on drop.
pub struct TestRegistry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    log: PathBuf,
    pub auth: Auth,
    issuer: Option<TokenIssuer>,
    /// The test CA (PEM) that signed the registry's certificate, when it
    /// serves TLS.
    ca: Option<PathBuf>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl TestRegistry {
    pub fn start(auth: Auth) -> TestRegistry {
        TestRegistry::start_with(auth, false)
    }

    /// A registry serving HTTPS only, with a certificate for `127.0.0.1`,
    /// `::1` and `localhost` signed by a fresh test CA ([`Self::ca_file`]).
    pub fn start_tls(auth: Auth) -> TestRegistry {
        TestRegistry::start_with(auth, true)
    }

    fn start_with(auth: Auth, tls: bool) -> TestRegistry {
        // A port picked now may be taken before the registry binds it: try
        // again with another.
        let mut last_log = String::new();
        for _ in 0..3 {
            match TestRegistry::try_start(auth.clone(), tls) {
                Ok(r) => return r,
                Err(log) => last_log = log,
            }
        }
        panic!("docker-registry did not start:\n{last_log}");
    }

    fn try_start(auth: Auth, tls: bool) -> Result<TestRegistry, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut issuer = None;
        let (ca, tls_yaml) = if tls {
            let (ca, cert, key) = make_tls_files(dir.path());
            let yaml = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            );
            (Some(ca), yaml)
        } else {
            (None, String::new())
        };
        let auth_yaml = match &auth {
            Auth::None => String::new(),
            Auth::Basic { user, pass } => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, pass])
                    .output()
                    .expect("htpasswd (apache2-utils) runs");
                assert!(out.status.success(), "htpasswd failed");
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, &out.stdout).expect("write htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                    file.display()
                )
            }
            Auth::Token { user, pass } => {
                let i = TokenIssuer::start(user, pass, dir.path());
                let yaml = format!(
                    "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                    i.port,
                    i.cert_path.display()
                );
                issuer = Some(i);
                yaml
            }
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: manifold-test-secret\n{tls_yaml}{auth_yaml}",
            dir.path().join("data").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write config");
        let log = dir.path().join("registry.log");
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("docker-registry starts");
        let mut reg = TestRegistry {
            child,
            port,
            dir,
            log,
            auth,
            issuer,
            ca,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = reg.child.try_wait() {
                return Err(std::fs::read_to_string(&reg.log).unwrap_or_default());
            }
            if http_status(port, "/v2/").is_some() {
                return Ok(reg);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(std::fs::read_to_string(&reg.log).unwrap_or_default())
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA file that verifies a TLS registry's certificate.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    /// `127.0.0.1:PORT/<name>`.
    pub fn repo(&self, name: &str) -> String {
        format!("{}/{name}", self.host())
    }

    pub fn registry(&self) -> Registry {
        Registry::parse(&self.host()).expect("a valid host")
    }

    /// The credentials the registry accepts, as the client takes them.
    pub fn credentials(&self) -> Credentials {
        match self.auth.creds() {
            None => Credentials::anonymous(),
            Some((u, p)) => Credentials::basic(u, Secret::new(p), "test credentials"),
        }
    }

    /// A client with the right credentials.
    pub fn client(&self) -> RegistryClient {
        self.client_with(self.credentials())
    }

    pub fn client_with(&self, creds: Credentials) -> RegistryClient {
        let opts = ClientOptions {
            max_retries: 2,
            ..ClientOptions::default()
        };
        RegistryClient::new(&self.registry(), creds, &opts).expect("client")
    }

    /// Makes the token issuer refuse every action on `repo` (token auth only).
    pub fn deny_repository(&self, repo: &str) {
        if let Some(i) = &self.issuer {
            i.denied.lock().unwrap().insert(repo.to_owned());
        }
    }

    /// The scopes each token request asked for (token auth only).
    pub fn token_requests(&self) -> Vec<Vec<String>> {
        self.issuer
            .as_ref()
            .map(|i| i.requests.lock().unwrap().clone())
            .unwrap_or_default()
    }

    /// Every token the issuer handed out (token auth only).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.issuer
            .as_ref()
            .map(|i| i.issued.lock().unwrap().clone())
            .unwrap_or_default()
    }

    /// The registry's access log file.
    pub fn log_path(&self) -> PathBuf {
        self.log.clone()
    }

    /// Every request the registry logged, as `METHOD /path?query STATUS`.
    pub fn request_log(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                // Combined log format: `… "METHOD /path HTTP/1.1" STATUS …`.
                let start = line.find('"')?;
                let rest = &line[start + 1..];
                let end = rest.find('"')?;
                let mut request = rest[..end].split(' ');
                let method = request.next()?;
                let path = request.next()?;
                if !path.starts_with("/v2/") {
                    return None;
                }
                let status = rest[end + 1..].split_whitespace().next()?;
                Some(format!("{method} {path} {status}"))
            })
            .collect()
    }

    /// Requests whose `METHOD /path` contains `needle` (e.g. `PATCH /v2/a/`).
    pub fn count_requests(&self, needle: &str) -> usize {
        self.request_log()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Requests on blob upload sessions (POST, PATCH, PUT, DELETE).
    pub fn blob_upload_requests(&self) -> usize {
        self.count_requests("/blobs/uploads/")
    }

    /// `skopeo inspect --raw` of `reference` (`host/repo:tag` or `@digest`).
    pub fn skopeo_inspect_raw(&self, reference: &str) -> Vec<u8> {
        skopeo_inspect_raw(reference, self.auth.creds())
    }

    pub fn skopeo_copy_to_oci(&self, reference: &str, dir: &Path) {
        skopeo_copy_to_oci(reference, dir, self.auth.creds())
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test CA and a server certificate it signs, for loopback names:
/// `(ca.pem, server.pem, server-key.pem)` in `dir`.
fn make_tls_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "manifold test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA cert");
    let key = rcgen::KeyPair::generate().expect("server key");
    let mut params = rcgen::CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])
    .expect("server params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "127.0.0.1");
    let cert = params.signed_by(&key, &ca).expect("server cert");
    let (ca_path, cert_path, key_path) = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server-key.pem"),
    );
    std::fs::write(&ca_path, ca.pem()).expect("write CA");
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    (ca_path, cert_path, key_path)
}

/// The status of `GET path` on the loopback port, if anything answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `skopeo --insecure-policy ARGS…` and returns its stdout; fails the
/// test with skopeo's stderr unless it succeeds.
pub fn skopeo<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> Vec<u8> {
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(&args)
        .output()
        .expect("skopeo runs");
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

// Credentials on skopeo's command line are fine here only: test passwords.
fn skopeo_creds(flag: &str, creds: &Option<(String, String)>) -> Vec<String> {
    match creds {
        Some((u, p)) => vec![format!("{flag}={u}:{p}")],
        None => Vec::new(),
    }
}

pub fn skopeo_inspect_raw(reference: &str, creds: Option<(String, String)>) -> Vec<u8> {
    let mut args = vec![
        "inspect".to_owned(),
        "--raw".into(),
        "--tls-verify=false".into(),
    ];
    args.extend(skopeo_creds("--creds", &creds));
    args.push(format!("docker://{reference}"));
    skopeo(args)
}

/// `skopeo copy --all` of `source` (a `docker://` or `oci:` reference; a bare
/// `host/repo:tag` means `docker://`) into the OCI layout `dest` (`DIR:TAG`).
/// skopeo checks every manifest and blob digest on the way, so success means
/// complete.
pub fn skopeo_copy_all_to(source: &str, creds: Option<(String, String)>, dest: &str) {
    let source = if source.starts_with("docker://") || source.starts_with("oci:") {
        source.to_owned()
    } else {
        format!("docker://{source}")
    };
    let mut args = vec![
        "copy".to_owned(),
        "--all".into(),
        "--src-tls-verify=false".into(),
    ];
    args.extend(skopeo_creds("--src-creds", &creds));
    args.extend([source, format!("oci:{dest}")]);
    skopeo(args);
}

/// [`skopeo_copy_all_to`] a temp layout, only to check the image is complete.
pub fn skopeo_copy_all(source: &str, creds: Option<(String, String)>) {
    let dir = tempfile::tempdir().unwrap();
    skopeo_copy_all_to(source, creds, &format!("{}:copied", dir.path().display()));
}

pub fn skopeo_copy_to_oci(reference: &str, dir: &Path, creds: Option<(String, String)>) {
    let mut args = vec!["copy".to_owned(), "--src-tls-verify=false".into()];
    args.extend(skopeo_creds("--src-creds", &creds));
    args.extend([
        format!("docker://{reference}"),
        format!("oci:{}", dir.display()),
    ]);
    skopeo(args);
}

/// A token issuer per registries.md §8: ES256 JWTs with `x5c`, Basic
/// credentials checked, only the scopes asked for (minus denied
/// repositories) granted.
struct TokenIssuer {
    port: u16,
    cert_path: PathBuf,
    denied: Arc<Mutex<HashSet<String>>>,
    requests: Arc<Mutex<Vec<Vec<String>>>>,
    issued: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

struct IssuerKeys {
    encoding: jsonwebtoken::EncodingKey,
    cert_der_b64: String,
    user: String,
    pass: String,
}

impl TokenIssuer {
    fn start(user: &str, pass: &str, dir: &Path) -> TokenIssuer {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
        let params = rcgen::CertificateParams::new(vec![ISSUER.to_owned()]).expect("cert params");
        let cert = params.self_signed(&key).expect("self-signed cert");
        let cert_path = dir.join("cert.pem");
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        let keys = Arc::new(IssuerKeys {
            encoding: jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes())
                .expect("EC key"),
            cert_der_b64: base64::engine::general_purpose::STANDARD.encode(cert.der()),
            user: user.to_owned(),
            pass: pass.to_owned(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("issuer port");
        let port = listener.local_addr().expect("addr").port();
        let denied = Arc::new(Mutex::new(HashSet::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let issued = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (denied, requests, issued, stop) = (
                denied.clone(),
                requests.clone(),
                issued.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(conn) = conn {
                        let _ = serve_token(conn, &keys, &denied, &requests, &issued);
                    }
                }
            });
        }
        TokenIssuer {
            port,
            cert_path,
            denied,
            requests,
            issued,
            stop,
        }
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so the thread sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

#[derive(serde::Serialize)]
struct Access {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    actions: Vec<String>,
}

#[derive(serde::Serialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    access: Vec<Access>,
}

fn serve_token(
    mut conn: TcpStream,
    keys: &IssuerKeys,
    denied: &Mutex<HashSet<String>>,
    requests: &Mutex<Vec<Vec<String>>>,
    issued: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    // Read the head (a GET has no body).
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let mut lines = head.split("\r\n");
    let target = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/")
        .to_owned();
    let authorization = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim().to_owned());
    let url = url::Url::parse(&format!("http://issuer{target}")).expect("request target");
    let scopes: Vec<String> = url
        .query_pairs()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .collect();
    requests.lock().unwrap().push(scopes.clone());

    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", keys.user, keys.pass))
    );
    if authorization.as_deref() != Some(expected.as_str()) {
        let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
        return respond(&mut conn, "401 Unauthorized", body);
    }
    let denied = denied.lock().unwrap().clone();
    let access: Vec<Access> = scopes
        .iter()
        .filter_map(|s| {
            let mut parts = s.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            if denied.contains(name) {
                return None;
            }
            Some(Access {
                kind: kind.to_owned(),
                name: name.to_owned(),
                actions: actions.split(',').map(str::to_owned).collect(),
            })
        })
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let claims = Claims {
        iss: ISSUER.into(),
        sub: keys.user.clone(),
        aud: SERVICE.into(),
        exp: now + 300,
        nbf: now - 10,
        iat: now,
        jti: format!("{now}-{}", rand::random::<u64>()),
        access,
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.typ = Some("JWT".into());
    header.x5c = Some(vec![keys.cert_der_b64.clone()]);
    let token = jsonwebtoken::encode(&header, &claims, &keys.encoding).expect("sign token");
    issued.lock().unwrap().push(token.clone());
    let body = serde_json::json!({"token": token, "expires_in": 300}).to_string();
    respond(&mut conn, "200 OK", &body)
}

fn respond(conn: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

/// What a quirk server answers: status, headers, body.
pub type QuirkAnswer = (u16, Vec<(String, String)>, Vec<u8>);

/// One request to a quirk server.
#[derive(Clone, Debug)]
pub struct QuirkRequest {
    pub method: String,
    pub target: String,
    pub authorization: Option<String>,
    pub body: Vec<u8>,
    /// Every header, names lower-cased.
    pub headers: Vec<(String, String)>,
}

/// A tiny HTTP server scripting a behaviour that distribution does not show
/// (another registry's quirk). Never a stand-in for the real registry.
pub struct QuirkServer {
    port: u16,
    stop: Arc<AtomicBool>,
    pub requests: Arc<Mutex<Vec<QuirkRequest>>>,
}

impl QuirkServer {
    /// Serves `handler(request)` until dropped.
    pub fn start(
        handler: impl Fn(&QuirkRequest) -> QuirkAnswer + Send + Sync + 'static,
    ) -> QuirkServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("quirk port");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        {
            let (stop, requests) = (stop.clone(), requests.clone());
            let handler = Arc::new(handler);
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(mut conn) = conn {
                        // A thread per connection, so concurrency is visible.
                        let (handler, requests) = (handler.clone(), requests.clone());
                        std::thread::spawn(move || {
                            let _ = serve_quirk(&mut conn, &*handler, &requests);
                        });
                    }
                }
            });
        }
        QuirkServer {
            port,
            stop,
            requests,
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `METHOD target` of each request so far.
    pub fn request_lines(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| format!("{} {}", r.method, r.target))
            .collect()
    }

    pub fn client(&self) -> RegistryClient {
        self.client_with(Credentials::anonymous())
    }

    pub fn client_with(&self, creds: Credentials) -> RegistryClient {
        self.client_with_options(
            creds,
            &ClientOptions {
                max_retries: 2,
                ..ClientOptions::default()
            },
        )
    }

    pub fn client_with_options(&self, creds: Credentials, opts: &ClientOptions) -> RegistryClient {
        client_at(&self.host(), creds, opts)
    }
}

/// A client for the registry (or proxy, or quirk server) at `host`.
pub fn client_at(host: &str, creds: Credentials, opts: &ClientOptions) -> RegistryClient {
    RegistryClient::new(&Registry::parse(host).expect("host"), creds, opts).expect("client")
}

/// Writes an executable script (a stand-in stream script) to `path`.
pub fn write_script(path: &Path, body: &str) {
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// Writes to `path` a docker-archive with one layer of `size` random bytes
/// (incompressible, so the pushed blob is about as large; a different layer
/// per `seed`), built with the `tar` crate. Returns `path`.
pub fn random_archive(path: &Path, size: usize, seed: u64) -> PathBuf {
    random_archive_named(path, size, seed, false)
}

/// [`random_archive`] with its layer named `<diff_id hex>/layer.tar`, as
/// `streamLayeredImage` names layers: the name tells the reader which
/// layer it is before its bytes are read.
pub fn random_hinted_archive(path: &Path, size: usize, seed: u64) -> PathBuf {
    random_archive_named(path, size, seed, true)
}

/// [`random_archive`] with `manifest.json` last, as a stream writes it: a
/// reader learns only at the end which member is the layer.
pub fn random_archive_manifest_last(path: &Path, size: usize, seed: u64) -> PathBuf {
    random_archive_shaped(path, size, seed, false, true)
}

fn random_archive_named(path: &Path, size: usize, seed: u64, hinted: bool) -> PathBuf {
    random_archive_shaped(path, size, seed, hinted, false)
}

fn random_archive_shaped(
    path: &Path,
    size: usize,
    seed: u64,
    hinted: bool,
    manifest_last: bool,
) -> PathBuf {
    use rand::{RngCore as _, SeedableRng as _};
    /// A regular file, 0644, a fixed mtime.
    fn append<W: std::io::Write>(tar: &mut tar::Builder<W>, name: &str, bytes: &[u8]) {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes).unwrap();
    }
    let mut data = vec![0u8; size];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    let mut layer = tar::Builder::new(Vec::new());
    append(&mut layer, "data.bin", &data);
    let layer = layer.into_inner().unwrap();
    let diff_id = manifold::digest::Digest::of(&layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [diff_id.to_string()] },
    })
    .to_string();
    let layer_name = if hinted {
        format!("{}/layer.tar", diff_id.hex())
    } else {
        "layer.tar".to_owned()
    };
    let manifest = serde_json::json!([{
        "Config": "config.json",
        "RepoTags": [],
        "Layers": [layer_name],
    }])
    .to_string();
    let mut archive = tar::Builder::new(std::fs::File::create(path).unwrap());
    if !manifest_last {
        append(&mut archive, "manifest.json", manifest.as_bytes());
    }
    append(&mut archive, "config.json", config.as_bytes());
    append(&mut archive, &layer_name, &layer);
    if manifest_last {
        append(&mut archive, "manifest.json", manifest.as_bytes());
    }
    archive.finish().unwrap();
    path.to_owned()
}

/// Bytes that do not compress to nothing and differ per seed.
pub fn payload(len: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x9e37_79b9u32 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

impl Drop for QuirkServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve_quirk(
    conn: &mut TcpStream,
    handler: &dyn Fn(&QuirkRequest) -> QuirkAnswer,
    requests: &Mutex<Vec<QuirkRequest>>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut length = 0usize;
    let mut chunked = false;
    let mut authorization = None;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
            if k.trim().eq_ignore_ascii_case("authorization") {
                authorization = Some(v.trim().to_owned());
            }
            if k.trim().eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked") {
                chunked = true;
            }
        }
    }
    // The body is read (and dropped) before answering, as registries do.
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0u8; n + 2];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk[..n]);
            if n == 0 {
                break;
            }
        }
    } else {
        body = vec![0u8; length];
        reader.read_exact(&mut body)?;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let target = parts.next().unwrap_or("").to_owned();
    let request = QuirkRequest {
        method: method.clone(),
        target,
        authorization,
        body,
        headers,
    };
    let (status, headers, body) = handler(&request);
    requests.lock().unwrap().push(request);
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    if method != "HEAD" {
        conn.write_all(&body)?;
    }
    conn.flush()
}

/// What a [`FaultProxy`] does to requests, each with its own probability
/// (the sum is the chance a request is hit at all).
#[derive(Clone, Copy, Debug)]
pub struct FaultRates {
    /// Answer 503 without asking the registry.
    pub unavailable: f64,
    /// Answer 429 with `Retry-After: 1`.
    pub too_many: f64,
    /// Read the request, then close the connection without an answer.
    pub drop: f64,
    /// Forward half the request body, then close both connections (a
    /// request without a body is dropped instead).
    pub cut_body: f64,
    /// Forward, but hold the answer back a while.
    pub slow: f64,
}

impl FaultRates {
    /// No faults: for a proxy that only holds or marks requests.
    pub fn none() -> FaultRates {
        FaultRates {
            unavailable: 0.0,
            too_many: 0.0,
            drop: 0.0,
            cut_body: 0.0,
            slow: 0.0,
        }
    }

    /// `total` spread over the failing faults, plus as many slow answers.
    pub fn failing(total: f64) -> FaultRates {
        FaultRates {
            unavailable: total / 4.0,
            too_many: total / 4.0,
            drop: total / 4.0,
            cut_body: total / 4.0,
            slow: total / 2.0,
        }
    }
}

/// What a [`FaultProxy`] did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub requests: usize,
    pub unavailable: usize,
    pub too_many: usize,
    pub dropped: usize,
    pub cut_bodies: usize,
    pub slowed: usize,
    /// Held requests ([`FaultProxy::holding`]) whose file never came.
    pub held_in_vain: usize,
}

impl FaultCounts {
    /// Requests that failed on purpose (slow ones succeed).
    pub fn failures(&self) -> usize {
        self.unavailable + self.too_many + self.dropped + self.cut_bodies
    }
}

/// A loopback HTTP/1.1 proxy in front of a real registry that injects
/// faults, seeded, per request: 503, 429 + `Retry-After: 1`, a dropped
/// connection, a request body cut halfway, a slow answer. Every connection
/// carries one request (`Connection: close` both ways), so a fault never
/// leaks into the next request.
pub struct FaultProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<FaultCounts>>,
}

enum Fault {
    None,
    Unavailable,
    TooMany,
    Drop,
    CutBody,
    Slow,
}

/// Holds requests whose request line contains a needle until a file
/// exists (at most [`HOLD_LIMIT`]), then forwards them; or, marking, creates
/// the file when such a request arrives.
type Watched = Option<Arc<(String, PathBuf, Watch)>>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Watch {
    Hold,
    Mark,
}

/// How long a held request waits for its file.
const HOLD_LIMIT: Duration = Duration::from_secs(10);
/// How long it is held once the file is there.
const HOLD_AFTER: Duration = Duration::from_millis(300);

impl FaultProxy {
    pub fn start(upstream: u16, seed: u64, rates: FaultRates) -> FaultProxy {
        Self::start_with(upstream, seed, rates, None)
    }

    /// A proxy with no faults that holds each request whose request line
    /// contains `needle` until `file` exists, and [`HOLD_AFTER`] more: what
    /// a process does before it, the file shows, and what it does before
    /// the answer, the registry's log; [`FaultCounts::held_in_vain`] counts
    /// requests held to the limit.
    pub fn holding(upstream: u16, needle: &str, file: &Path) -> FaultProxy {
        let watched = Some(Arc::new((needle.to_owned(), file.to_owned(), Watch::Hold)));
        Self::start_with(upstream, 0, FaultRates::none(), watched)
    }

    /// A proxy with no faults that creates `file` when a request whose
    /// request line contains `needle` arrives (before forwarding it): the
    /// signal a [`FaultProxy::holding`] proxy elsewhere waits for.
    pub fn marking(upstream: u16, needle: &str, file: &Path) -> FaultProxy {
        let watched = Some(Arc::new((needle.to_owned(), file.to_owned(), Watch::Mark)));
        Self::start_with(upstream, 0, FaultRates::none(), watched)
    }

    fn start_with(upstream: u16, seed: u64, rates: FaultRates, watched: Watched) -> FaultProxy {
        use rand::{Rng as _, SeedableRng as _};
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy port");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(FaultCounts::default()));
        let rng = Arc::new(Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)));
        {
            let (stop, counts) = (stop.clone(), counts.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let roll: f64 = rng.lock().unwrap().random();
                    let mut edge = 0.0;
                    let mut pick = |p: f64| {
                        edge += p;
                        roll < edge
                    };
                    let fault = if pick(rates.unavailable) {
                        Fault::Unavailable
                    } else if pick(rates.too_many) {
                        Fault::TooMany
                    } else if pick(rates.drop) {
                        Fault::Drop
                    } else if pick(rates.cut_body) {
                        Fault::CutBody
                    } else if pick(rates.slow) {
                        Fault::Slow
                    } else {
                        Fault::None
                    };
                    let (counts, watched) = (counts.clone(), watched.clone());
                    std::thread::spawn(move || {
                        let _ = proxy_one(conn, upstream, fault, &counts, watched);
                    });
                }
            });
        }
        FaultProxy { port, stop, counts }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn counts(&self) -> FaultCounts {
        *self.counts.lock().unwrap()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Reads a request or response head (through the blank line).
fn read_head(reader: &mut impl BufRead) -> std::io::Result<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" || line == "\n" {
            return Ok(lines);
        }
        lines.push(line.trim_end().to_owned());
    }
}

fn header<'a>(head: &'a [String], name: &str) -> Option<&'a str> {
    head.iter().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Copies a request body (Content-Length or chunked framing, verbatim) to
/// `out`, stopping after `limit` bytes of framing if given. Returns whether
/// the whole body was copied.
fn copy_body(
    head: &[String],
    reader: &mut impl BufRead,
    out: &mut impl Write,
    limit: Option<u64>,
) -> std::io::Result<bool> {
    let mut budget = limit.unwrap_or(u64::MAX);
    if header(head, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line)?;
            let n = u64::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16)
                .unwrap_or(0);
            out.write_all(size_line.as_bytes())?;
            let mut rest = reader.take(n + 2);
            let mut chunk = Vec::new();
            rest.read_to_end(&mut chunk)?;
            let take = (chunk.len() as u64).min(budget) as usize;
            out.write_all(&chunk[..take])?;
            if take < chunk.len() {
                return Ok(false);
            }
            budget -= take as u64;
            if n == 0 {
                return Ok(true);
            }
        }
    }
    let length: u64 = header(head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let want = length.min(budget);
    let copied = std::io::copy(&mut reader.take(want), out)?;
    Ok(copied == length)
}

/// The body's length when known up front (0 without a body).
fn body_length(head: &[String]) -> Option<u64> {
    if header(head, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        return None;
    }
    Some(
        header(head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    )
}

fn proxy_one(
    down: TcpStream,
    upstream: u16,
    fault: Fault,
    counts: &Mutex<FaultCounts>,
    watched: Watched,
) -> std::io::Result<()> {
    down.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(down.try_clone()?);
    let mut down_w = down;
    let head = read_head(&mut reader)?;
    counts.lock().unwrap().requests += 1;
    if let Some((needle, file, watch)) = watched.as_deref() {
        let matches = head
            .first()
            .is_some_and(|line| line.contains(needle.as_str()));
        if matches && *watch == Watch::Mark {
            std::fs::write(file, b"")?;
        } else if matches {
            let start = std::time::Instant::now();
            while !file.exists() {
                if start.elapsed() > HOLD_LIMIT {
                    counts.lock().unwrap().held_in_vain += 1;
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            // A while longer: what does not wait for the answer goes first.
            std::thread::sleep(HOLD_AFTER);
        }
    }
    let answer = |w: &mut TcpStream, status: &str, extra: &str| {
        let body = r#"{"errors":[{"code":"UNAVAILABLE","message":"injected fault"}]}"#;
        write!(
            w,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let has_body = body_length(&head) != Some(0);
    match fault {
        Fault::Unavailable => {
            copy_body(&head, &mut reader, &mut std::io::sink(), None)?;
            counts.lock().unwrap().unavailable += 1;
            return answer(&mut down_w, "503 Service Unavailable", "");
        }
        Fault::TooMany => {
            copy_body(&head, &mut reader, &mut std::io::sink(), None)?;
            counts.lock().unwrap().too_many += 1;
            return answer(&mut down_w, "429 Too Many Requests", "Retry-After: 1\r\n");
        }
        Fault::Drop => {
            copy_body(&head, &mut reader, &mut std::io::sink(), None)?;
            counts.lock().unwrap().dropped += 1;
            return down_w.shutdown(std::net::Shutdown::Both);
        }
        Fault::CutBody if !has_body => {
            counts.lock().unwrap().dropped += 1;
            return down_w.shutdown(std::net::Shutdown::Both);
        }
        _ => {}
    }
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    up.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut out = String::new();
    out.push_str(&head[0]);
    out.push_str("\r\n");
    for line in &head[1..] {
        let name = line.split(':').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("connection") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    up.write_all(out.as_bytes())?;
    if let Fault::CutBody = fault {
        // Half of a known length; a streamed body is cut after 32 KiB (or
        // dropped whole when shorter).
        let limit = body_length(&head).map(|n| n / 2).unwrap_or(32 * 1024);
        copy_body(&head, &mut reader, &mut up, Some(limit))?;
        counts.lock().unwrap().cut_bodies += 1;
        let _ = up.shutdown(std::net::Shutdown::Both);
        return down_w.shutdown(std::net::Shutdown::Both);
    }
    copy_body(&head, &mut reader, &mut up, None)?;
    up.flush()?;
    let mut response = Vec::new();
    up.read_to_end(&mut response)?;
    if let Fault::Slow = fault {
        counts.lock().unwrap().slowed += 1;
        std::thread::sleep(Duration::from_millis(400));
    }
    down_w.write_all(&response)?;
    down_w.flush()?;
    down_w.shutdown(std::net::Shutdown::Both)
}
