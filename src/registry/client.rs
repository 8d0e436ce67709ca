//! `RegistryClient`: one registry host, three layers as in uv and ggcr: a
//! configured `reqwest::Client` (TLS roots, plain HTTP only where allowed, no
//! automatic redirects), then `RegistryClient::send` adding auth, a cap on
//! requests in flight and retries, then the distribution API operations
//! (whose blob bodies take one of the `jobs`).
//!
//! http or https: hosts where plain HTTP is allowed (loopback, and those
//! named with `--insecure-registry`) are pinged over http first, as before;
//! when the ping is answered by a TLS server (Go's 400 "client sent an HTTP
//! request to an HTTPS server", or bytes that are not HTTP) the client moves
//! to https for good, with full verification unless the host is insecure
//! (then, as Docker, TLS without verification). Every other host is https
//! only. A refused certificate is never retried and says how to fix it.
//!
//! Redirects are followed by hand, for GET and HEAD only, and
//! `Authorization` is attached only to URLs on the registry's own origin, so
//! credentials never follow a blob to object storage. A blob of any size is
//! read as a stream (`get_blob_stream`, no total timeout), so a layer copied
//! between registries is never held whole. Blob uploads live in
//! `upload.rs`; which blobs to push, and in what order, is the caller's
//! business.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH};
use reqwest::{Method, Response, StatusCode};
use tokio::sync::{Mutex, Semaphore};
use url::Url;

use crate::digest::Digest;
use crate::oci::{Descriptor, RawManifest, MANIFEST_ACCEPT};
use crate::reference::Registry;

use super::auth::{self, fetch_token, parse_challenges, Scheme, TokenCache};
use super::credentials::{CredentialKind, Credentials};
use super::error::{hint_for, parse_oci_errors, RedactedUrl, RegistryError, ERROR_BODY_LIMIT};
use super::retry::{is_transient_error, is_transient_status, retry_after, RetryPolicy, RetryState};

/// Manifests larger than this are refused (distribution's own limit is 4 MiB).
pub const MANIFEST_LIMIT: u64 = 4 * 1024 * 1024;
/// How many redirects a GET or HEAD follows.
const MAX_REDIRECTS: usize = 5;

/// Tries again of a manifest PUT answered "blob unknown" (about 1.75 s in
/// all): enough for storage to settle, short for a blob really missing.
const BLOB_UNKNOWN_RETRIES: u32 = 3;
/// Pure Nix shells point `SSL_CERT_FILE` here; it never exists.
const NIX_NO_CERT_FILE: &str = "/no-cert-file.crt";

/// Requests without a blob body allowed in flight per upload job: a small
/// layer costs two or three of them (session POST, commit PUT) for each
/// body, so with one each an image of many small layers waits on round
/// trips (at 50 ms, 42 layers per arch: 3.5 s with `--jobs 4`, 3.2 s with
/// `--jobs 8`).
pub const REQUESTS_PER_JOB: usize = 2;

/// How the client is set up.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Hosts (`host[:port]`) reached over plain HTTP besides loopback ones.
    pub insecure_hosts: Vec<String>,
    /// Extra CA certificates (PEM).
    pub ca_files: Vec<PathBuf>,
    /// Retries of one request (or one whole upload) after the first try.
    pub max_retries: u32,
    pub user_agent: String,
    /// Blob uploads in flight at once to this registry; requests without a
    /// blob body get [`REQUESTS_PER_JOB`] times as many.
    pub jobs: usize,
    /// `SSL_CERT_FILE`, taken from the environment by the caller.
    pub ssl_cert_file: Option<PathBuf>,
    /// Total time of one request without a blob body (pings, HEADs,
    /// manifests, tokens are quick). Blob uploads have none: a large layer
    /// may take minutes, and a read timeout would fire while the registry
    /// silently takes a long body.
    pub timeout: Duration,
    /// No retry starts this long after the first try of a request (or of a
    /// whole blob upload).
    pub retry_timeout: Duration,
    /// The first backoff; each retry doubles it (with jitter, capped at
    /// 15 s). Tests shorten it.
    pub retry_base: Duration,
    /// Upload blobs in `PATCH`es of this many bytes instead of one streamed
    /// body; `None`: monolithic, chunked only as a fallback (see
    /// `upload.rs`).
    pub chunk_size: Option<u64>,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            insecure_hosts: Vec::new(),
            ca_files: Vec::new(),
            max_retries: 5,
            user_agent: concat!("manifold/", env!("CARGO_PKG_VERSION")).to_owned(),
            // Peers push 3–6 blobs at once; Docker Hub and Quay rate-limit.
            jobs: 4,
            ssl_cert_file: None,
            timeout: Duration::from_secs(120),
            retry_timeout: Duration::from_secs(300),
            retry_base: Duration::from_millis(250),
            chunk_size: None,
        }
    }
}

/// What the client knows about auth so far.
#[derive(Default)]
pub(super) struct AuthState {
    scheme: Option<Scheme>,
    tokens: TokenCache,
    /// The ping failed: the run ends with its error, and the requests that
    /// waited for it do not try again meanwhile.
    unreachable: bool,
}

pub(super) struct Inner {
    pub(super) registry: Registry,
    /// `http` or `https` plus the host; switched to `https` once when a
    /// plain-HTTP host answers the ping as a TLS server.
    pub(super) base: std::sync::RwLock<Url>,
    /// The base before any switch: URLs made from it are rebased.
    pub(super) initial_base: Url,
    /// Named with `--insecure-registry`: TLS without verification, and
    /// plain HTTP when TLS fails.
    pub(super) insecure: bool,
    pub(super) plain_http: bool,
    pub(super) http: reqwest::Client,
    pub(super) creds: Credentials,
    pub(super) auth: Mutex<AuthState>,
    /// Blob bodies being sent (`jobs`).
    pub(super) jobs: Semaphore,
    /// Requests without a blob body in flight (pings, HEADs, session
    /// POSTs and commits, manifests): their own cap, so that their round
    /// trips do not queue behind uploads that take seconds.
    pub(super) requests: Semaphore,
    pub(super) policy: RetryPolicy,
    pub(super) timeout: Duration,
    pub(super) chunk_size: Option<u64>,
    /// A `GET /v2/` attempt has failed and none has answered yet (see
    /// [`RegistryClient::is_unanswered_after_failure`]).
    pub(super) ping_failing: AtomicBool,
}

/// A client for one registry host; clones share connections, tokens and the
/// caps.
#[derive(Clone)]
pub struct RegistryClient {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("registry", &self.inner.registry.host())
            .field("base", &self.base().as_str())
            .field("credentials", &self.inner.creds.source())
            .finish_non_exhaustive()
    }
}

/// One request that `send` may repeat: its body is cheap to clone.
pub(super) struct Req {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
    pub scopes: Vec<String>,
    /// Whether `send` retries it (idempotent requests only).
    pub retry: bool,
    /// A blob GET whose body is streamed by the caller: no total timeout,
    /// which would cut a large layer that takes minutes to read.
    pub streamed: bool,
}

impl Req {
    pub fn new(method: Method, url: Url, scopes: Vec<String>) -> Req {
        Req {
            retry: method == Method::GET || method == Method::HEAD || method == Method::PUT,
            method,
            url,
            headers: HeaderMap::new(),
            body: None,
            scopes,
            streamed: false,
        }
    }

    pub fn header(mut self, name: HeaderName, value: &str) -> Req {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.insert(name, v);
        }
        self
    }
}

fn config_err(
    reason: String,
    source: impl std::error::Error + Send + Sync + 'static,
) -> RegistryError {
    RegistryError::Config {
        reason,
        source: Some(Box::new(source)),
    }
}

impl RegistryClient {
    pub fn new(
        registry: &Registry,
        creds: Credentials,
        opts: &ClientOptions,
    ) -> Result<RegistryClient, RegistryError> {
        let insecure = opts.insecure_hosts.iter().any(|h| {
            h.eq_ignore_ascii_case(registry.host()) || h.eq_ignore_ascii_case(registry.api_host())
        });
        // Plain HTTP is allowed for loopback and `--insecure-registry` hosts
        // (for the registry and its token realm). Loopback hosts start on
        // http, other insecure ones on https; the ping moves either to the
        // other scheme when it answers that way (see `learn_scheme`).
        let plain_http = registry.is_loopback() || insecure;
        let start_plain = registry.is_loopback();
        let mut builder = reqwest::Client::builder()
            .user_agent(opts.user_agent.clone())
            // Redirects are followed by hand (see `send`), so that
            // `Authorization` never goes to another host.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(30));
        let mut cas: Vec<PathBuf> = opts.ca_files.clone();
        if let Some(f) = &opts.ssl_cert_file {
            if f.as_os_str() != NIX_NO_CERT_FILE && f.is_file() {
                cas.push(f.clone());
            }
        }
        let certs_d = PathBuf::from(format!(
            "/etc/docker/certs.d/{}/ca.crt",
            registry.api_host()
        ));
        if certs_d.is_file() {
            cas.push(certs_d);
        }
        for path in cas {
            let pem = std::fs::read(&path)
                .map_err(|e| config_err(format!("cannot read CA file `{}`", path.display()), e))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                config_err(format!("`{}` holds no PEM certificates", path.display()), e)
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if insecure {
            // `--insecure-registry`: TLS without verification, as Docker.
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder
            .build()
            .map_err(|e| config_err("the TLS backend could not start".to_owned(), e))?;
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                registry: registry.clone(),
                base: std::sync::RwLock::new(registry.api_base_with(start_plain)),
                initial_base: registry.api_base_with(start_plain),
                plain_http,
                insecure,
                http,
                creds,
                auth: Mutex::new(AuthState::default()),
                jobs: Semaphore::new(opts.jobs.max(1)),
                requests: Semaphore::new(opts.jobs.max(1) * REQUESTS_PER_JOB),
                policy: RetryPolicy {
                    max_elapsed: opts.retry_timeout,
                    base_delay: opts.retry_base,
                    ..RetryPolicy::new(opts.max_retries)
                },
                timeout: opts.timeout,
                chunk_size: opts.chunk_size,
                ping_failing: AtomicBool::new(false),
            }),
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The base URL (`http(s)://host[:port]/`).
    pub(super) fn base(&self) -> Url {
        match self.inner.base.read() {
            Ok(b) => b.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// `<base>/v2/<rest>`.
    pub(super) fn url(&self, rest: &str) -> Url {
        self.base()
            .join(&format!("v2/{rest}"))
            .expect("a path joins onto an http(s) base")
    }

    /// `url` moved onto the current base when it was made from the initial
    /// one, before the ping switched schemes (see `learn_scheme`).
    pub(super) fn rebase(&self, url: &Url) -> Url {
        let base = self.base();
        let initial = &self.inner.initial_base;
        let mut url = url.clone();
        if base.origin() != initial.origin() && url.origin() == initial.origin() {
            let _ = url.set_scheme(base.scheme());
            let _ = url.set_port(base.port());
        }
        url
    }

    /// The scopes for working in `repo`.
    pub(super) fn push_scopes(repo: &str) -> Vec<String> {
        vec![format!("repository:{repo}:pull,push")]
    }

    /// Whether an attempt at the first `GET /v2/` has failed (it is retried,
    /// or the ping has given up) and none has answered: the registry cannot
    /// be reached so far, and work done for it now may well be for nothing.
    pub fn is_unanswered_after_failure(&self) -> bool {
        self.inner.ping_failing.load(Ordering::Relaxed)
    }

    /// `GET /v2/`: learns how the registry wants to be authenticated (a 401
    /// challenge is a fine answer), unless a request has learnt it already.
    /// Requests that need it wait meanwhile.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        let mut state = self.inner.auth.lock().await;
        if state.scheme.is_some() {
            return Ok(());
        }
        let learnt = self.learn_scheme(&mut state).await;
        state.unreachable = learnt.is_err();
        if learnt.is_err() {
            self.inner.ping_failing.store(true, Ordering::Relaxed);
        }
        learnt
    }

    async fn learn_scheme(&self, state: &mut AuthState) -> Result<(), RegistryError> {
        let mut url = self.url("");
        // An insecure host is tried once on https (no verification), then,
        // as Docker does, on plain HTTP.
        let https_first = url.scheme() == "https"
            && self.inner.insecure
            && self.base() == self.inner.initial_base;
        let first = if https_first {
            let req = Req::new(Method::GET, url.clone(), Vec::new());
            match self.send_raw(&req, None).await {
                Ok(r) if !is_transient_status(r.status()) => Ok(r),
                Ok(_) => self.ping_once(&url).await,
                Err(e) => {
                    let http = self.switch_base("http");
                    tracing::debug!(registry = %self.inner.registry, error = %e, base = %http, "https failed; trying plain HTTP");
                    url = self.url("");
                    self.ping_once(&url).await
                }
            }
        } else {
            self.ping_once(&url).await
        };
        // A loopback host is tried on http first; one that answers as a
        // TLS server is switched to https, once.
        let plain = url.scheme() == "http" && self.inner.plain_http;
        let first = match first {
            Ok(r) if plain && r.status() == StatusCode::BAD_REQUEST => {
                let body = auth::read_limited(r, ERROR_BODY_LIMIT)
                    .await
                    .unwrap_or_default();
                if !is_tls_answer(&body) {
                    let errors = parse_oci_errors(&body);
                    let hint = hint_for(
                        self.inner.registry.host(),
                        StatusCode::BAD_REQUEST,
                        &errors,
                        self.inner.creds.source(),
                    );
                    return Err(RegistryError::Status {
                        method: "GET".into(),
                        url: RedactedUrl::new(&url),
                        status: StatusCode::BAD_REQUEST,
                        errors,
                        hint,
                        retry_after: None,
                    });
                }
                None
            }
            Err(e) if plain && speaks_tls_error(&e) => None,
            other => Some(other),
        };
        let resp = match first {
            Some(result) => result?,
            None => {
                let https = self.switch_base("https");
                tracing::debug!(registry = %self.inner.registry, base = %https, "the registry speaks TLS");
                url = self.url("");
                self.ping_once(&url).await?
            }
        };
        let status = resp.status();
        let scheme = match status {
            s if s.is_success() => Scheme::None,
            StatusCode::UNAUTHORIZED => {
                let challenges = challenges_of(&resp);
                Scheme::from_challenges(&challenges).ok_or_else(|| RegistryError::Protocol {
                    method: "GET".into(),
                    url: RedactedUrl::new(&url),
                    reason: "401 without a Basic or Bearer challenge".into(),
                })?
            }
            _ => return Err(self.status_error(&Method::GET, &url, resp).await),
        };
        tracing::debug!(registry = %self.inner.registry, ?scheme, "auth scheme");
        state.scheme = Some(scheme);
        self.inner.ping_failing.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// `GET /v2/` without auth, retried like `send` (the ping cannot go
    /// through `send`, which would ask for auth first).
    async fn ping_once(&self, url: &Url) -> Result<Response, RegistryError> {
        let req = Req::new(Method::GET, url.clone(), Vec::new());
        let mut retry = RetryState::new(self.inner.policy);
        loop {
            let (delay, result) = match self.send_raw(&req, None).await {
                Ok(resp) if is_transient_status(resp.status()) => {
                    (retry.next_delay(retry_after(resp.headers())), Ok(resp))
                }
                Ok(resp) => (None, Ok(resp)),
                Err(e) if is_transient_error(&e) => (retry.next_delay(None), Err(e)),
                Err(e) => (None, Err(e)),
            };
            match delay {
                Some(d) => {
                    self.inner.ping_failing.store(true, Ordering::Relaxed);
                    tokio::time::sleep(d).await
                }
                None => {
                    return result.map_err(|source| {
                        RegistryError::transport("GET", url, retry.attempts(), source)
                    })
                }
            }
        }
    }

    /// Switches the base to `scheme`; returns it. To https, the port that
    /// answered stays (`http://host/` becomes `https://host:80/`); to http,
    /// a port left out stays left out (443 becomes 80, as Docker).
    fn switch_base(&self, scheme: &str) -> Url {
        let mut guard = match self.inner.base.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let port = if scheme == "https" {
            guard.port_or_known_default()
        } else {
            guard.port()
        };
        let _ = guard.set_scheme(scheme);
        let _ = guard.set_port(port);
        guard.clone()
    }

    /// The `Authorization` value for a request to `url`, if any. Nothing
    /// goes to another origin.
    pub(super) async fn authorization(
        &self,
        url: &Url,
        scopes: &[String],
        min_valid: Duration,
    ) -> Result<Option<HeaderValue>, RegistryError> {
        if url.origin() != self.base().origin() {
            return Ok(None);
        }
        let mut state = self.inner.auth.lock().await;
        if state.scheme.is_none() {
            if state.unreachable {
                return Err(RegistryError::Config {
                    reason: format!("`{}` could not be reached", self.inner.registry),
                    source: None,
                });
            }
            self.learn_scheme(&mut state).await?;
        }
        let value = match state.scheme.clone() {
            None | Some(Scheme::None) => None,
            Some(Scheme::Basic) => match self.inner.creds.kind() {
                CredentialKind::Basic { username, password } => {
                    use base64::Engine as _;
                    let raw = format!("{username}:{}", password.expose());
                    Some(format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(raw)
                    ))
                }
                _ => None,
            },
            Some(Scheme::Bearer { realm, service }) => {
                let token = match state.tokens.get(scopes, min_valid) {
                    Some(t) => t,
                    None => {
                        // The token service fails like any server: retried
                        // on the same terms as registry requests.
                        let mut retry = RetryState::new(self.inner.policy);
                        let (token, lifetime) = loop {
                            let result = fetch_token(
                                &self.inner.http,
                                self.inner.registry.host(),
                                &realm,
                                service.as_deref(),
                                scopes,
                                &self.inner.creds,
                                self.inner.plain_http,
                            )
                            .await;
                            match result {
                                Err(e) if e.is_transient() => match retry.next_delay(None) {
                                    Some(delay) => {
                                        tracing::debug!(error = %e, ?delay, "retrying the token request");
                                        tokio::time::sleep(delay).await;
                                    }
                                    None => return Err(e),
                                },
                                other => break other?,
                            }
                        };
                        state.tokens.insert(scopes, token.clone(), lifetime);
                        token
                    }
                };
                Some(format!("Bearer {}", token.expose()))
            }
        };
        Ok(value.and_then(|v| {
            let mut v = HeaderValue::from_str(&v).ok()?;
            v.set_sensitive(true);
            Some(v)
        }))
    }

    /// After a 401: take the registry's new challenge and drop the token.
    async fn forget_auth(&self, resp: &Response, scopes: &[String]) {
        let mut state = self.inner.auth.lock().await;
        state.tokens.remove(scopes);
        if let Some(scheme) = Scheme::from_challenges(&challenges_of(resp)) {
            state.scheme = Some(scheme);
        }
    }

    /// One request, once, with the given `Authorization`.
    async fn send_raw(
        &self,
        req: &Req,
        authorization: Option<HeaderValue>,
    ) -> Result<Response, reqwest::Error> {
        let _permit = self.inner.requests.acquire().await;
        let mut rb = self
            .inner
            .http
            .request(req.method.clone(), req.url.clone())
            .headers(req.headers.clone());
        if !req.streamed {
            rb = rb.timeout(self.inner.timeout);
        }
        if let Some(a) = authorization {
            rb = rb.header(AUTHORIZATION, a);
        }
        match &req.body {
            Some(b) => rb = rb.body(b.clone()),
            None if req.method == Method::POST || req.method == Method::PUT => {
                rb = rb.header(CONTENT_LENGTH, "0")
            }
            None => {}
        }
        let resp = rb.send().await;
        match &resp {
            Ok(r) => {
                tracing::debug!(method = %req.method, url = %RedactedUrl::new(&req.url), status = r.status().as_u16(), "registry request")
            }
            Err(e) => {
                tracing::debug!(method = %req.method, url = %RedactedUrl::new(&req.url), error = %e, "registry request failed")
            }
        }
        resp
    }

    /// Sends `req` with auth (one refresh on 401), retries when it is
    /// idempotent and the failure transient, and follows redirects of GET and
    /// HEAD. Returns whatever status came last.
    pub(super) async fn send(&self, mut req: Req) -> Result<Response, RegistryError> {
        let mut retry = RetryState::new(self.inner.policy);
        let mut refreshed = false;
        let mut redirects = 0;
        loop {
            let authorization = self
                .authorization(&req.url, &req.scopes, Duration::ZERO)
                .await?;
            req.url = self.rebase(&req.url);
            let authed = authorization.is_some();
            match self.send_raw(&req, authorization).await {
                Ok(resp) => {
                    let status = resp.status();
                    if status == StatusCode::UNAUTHORIZED
                        && !refreshed
                        && req.url.origin() == self.base().origin()
                    {
                        refreshed = true;
                        self.forget_auth(&resp, &req.scopes).await;
                        // Retry only if something can change: a new token,
                        // or credentials we did not send yet.
                        if authed || !self.inner.creds.is_anonymous() || self.is_bearer().await {
                            continue;
                        }
                    }
                    if is_transient_status(status) && req.retry {
                        if let Some(delay) = retry.next_delay(retry_after(resp.headers())) {
                            tracing::debug!(status = status.as_u16(), ?delay, "retrying");
                            tokio::time::sleep(delay).await;
                            continue;
                        }
                    }
                    if status.is_redirection()
                        && (req.method == Method::GET || req.method == Method::HEAD)
                        && redirects < MAX_REDIRECTS
                    {
                        if let Some(next) = location(&resp, &req.url) {
                            redirects += 1;
                            req.url = next;
                            continue;
                        }
                    }
                    return Ok(resp);
                }
                Err(e) => {
                    if req.retry && is_transient_error(&e) {
                        if let Some(delay) = retry.next_delay(None) {
                            tracing::debug!(?delay, "retrying after a transport error");
                            tokio::time::sleep(delay).await;
                            continue;
                        }
                    }
                    return Err(RegistryError::transport(
                        req.method.as_str(),
                        &req.url,
                        retry.attempts(),
                        e,
                    ));
                }
            }
        }
    }

    async fn is_bearer(&self) -> bool {
        matches!(
            self.inner.auth.lock().await.scheme,
            Some(Scheme::Bearer { .. })
        )
    }

    /// An error for an unexpected answer, with the OCI codes and a hint.
    pub(super) async fn status_error(
        &self,
        method: &Method,
        url: &Url,
        resp: Response,
    ) -> RegistryError {
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        let body = auth::read_limited(resp, ERROR_BODY_LIMIT)
            .await
            .unwrap_or_default();
        let errors = parse_oci_errors(&body);
        let hint = hint_for(
            self.inner.registry.host(),
            status,
            &errors,
            self.inner.creds.source(),
        );
        RegistryError::Status {
            method: method.to_string(),
            url: RedactedUrl::new(url),
            status,
            errors,
            hint,
            retry_after,
        }
    }

    /// `HEAD /v2/<repo>/blobs/<digest>`: whether the registry has it.
    pub async fn blob_exists(&self, repo: &str, digest: &Digest) -> Result<bool, RegistryError> {
        let url = self.url(&format!("{repo}/blobs/{digest}"));
        let resp = self
            .send(Req::new(Method::HEAD, url.clone(), Self::push_scopes(repo)))
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.status_error(&Method::HEAD, &url, resp).await),
        }
    }

    /// A small blob (a config), at most `max` bytes, checked against its
    /// digest.
    pub async fn get_blob(
        &self,
        repo: &str,
        digest: &Digest,
        max: u64,
    ) -> Result<Bytes, RegistryError> {
        let url = self.url(&format!("{repo}/blobs/{digest}"));
        let resp = self
            .send(Req::new(Method::GET, url.clone(), Self::push_scopes(repo)))
            .await?;
        if !resp.status().is_success() {
            return Err(self.status_error(&Method::GET, &url, resp).await);
        }
        let body = read_capped(resp, max, &url).await?;
        let actual = Digest::of(&body);
        if &actual != digest {
            return Err(RegistryError::DigestMismatch {
                url: RedactedUrl::new(&url),
                expected: digest.clone(),
                actual,
            });
        }
        Ok(body)
    }

    /// A blob of any size as a stream of its bytes, and its length when the
    /// registry says it. Redirects (object storage) are followed without
    /// `Authorization` on another origin, and the request is retried like
    /// any GET until the body starts; after that, a failure is an error item
    /// of the stream and the caller retries as a whole (see `upload.rs`).
    /// The bytes are not checked against `digest` here: the caller hashes
    /// them as they flow.
    pub async fn get_blob_stream(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<
        (
            impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
            Option<u64>,
        ),
        RegistryError,
    > {
        use futures::TryStreamExt as _;
        let url = self.url(&format!("{repo}/blobs/{digest}"));
        let mut req = Req::new(Method::GET, url.clone(), Self::push_scopes(repo));
        req.streamed = true;
        let resp = self.send(req).await?;
        if !resp.status().is_success() {
            return Err(self.status_error(&Method::GET, &url, resp).await);
        }
        let length = resp.content_length();
        let stream = resp.bytes_stream().map_err(std::io::Error::other);
        Ok((stream, length))
    }

    /// `HEAD` a manifest by tag or digest: its descriptor, or `None`.
    pub async fn head_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<Descriptor>, RegistryError> {
        let url = self.url(&format!("{repo}/manifests/{reference}"));
        let req = Req::new(Method::HEAD, url.clone(), Self::push_scopes(repo))
            .header(ACCEPT, MANIFEST_ACCEPT);
        let resp = self.send(req).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let headers = resp.headers();
                let media_type = content_type(headers);
                let digest = headers
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<Digest>().ok());
                let size = headers
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                match (media_type, digest, size) {
                    (Some(mt), Some(d), Some(size)) => Ok(Some(Descriptor::new(mt, d, size))),
                    // Some registries leave headers off a HEAD: ask for the body.
                    _ => Ok(self
                        .get_manifest(repo, reference)
                        .await?
                        .map(|m| m.descriptor())),
                }
            }
            _ => Err(self.status_error(&Method::HEAD, &url, resp).await),
        }
    }

    /// `GET` a manifest: its exact bytes, digest and media type, or `None`.
    /// By digest, the bytes must hash to it.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<RawManifest>, RegistryError> {
        let url = self.url(&format!("{repo}/manifests/{reference}"));
        let req = Req::new(Method::GET, url.clone(), Self::push_scopes(repo))
            .header(ACCEPT, MANIFEST_ACCEPT);
        let resp = self.send(req).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => return Ok(None),
            s if s.is_success() => {}
            _ => return Err(self.status_error(&Method::GET, &url, resp).await),
        }
        let header_type = content_type(resp.headers());
        let bytes = read_capped(resp, MANIFEST_LIMIT, &url).await?;
        let digest = Digest::of(&bytes);
        if let Ok(expected) = reference.parse::<Digest>() {
            if expected != digest {
                return Err(RegistryError::DigestMismatch {
                    url: RedactedUrl::new(&url),
                    expected,
                    actual: digest,
                });
            }
        }
        let media_type = header_type
            .filter(|t| t != "application/json" && t != "text/plain")
            .or_else(|| {
                serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()?
                    .get("mediaType")?
                    .as_str()
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        Ok(Some(RawManifest {
            bytes,
            digest,
            media_type,
        }))
    }

    /// `PUT` a manifest under a tag or digest: exactly its bytes, with its
    /// media type as `Content-Type`.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        manifest: &RawManifest,
    ) -> Result<(), RegistryError> {
        let url = self.url(&format!("{repo}/manifests/{reference}"));
        let policy = RetryPolicy {
            max_retries: self.inner.policy.max_retries.min(BLOB_UNKNOWN_RETRIES),
            ..self.inner.policy
        };
        let mut retry = RetryState::new(policy);
        loop {
            let mut req = Req::new(Method::PUT, url.clone(), Self::push_scopes(repo))
                .header(reqwest::header::CONTENT_TYPE, &manifest.media_type);
            req.body = Some(manifest.bytes.clone());
            let resp = self.send(req).await?;
            if resp.status().is_success() {
                return check_digest_header(&resp, &manifest.digest, &url);
            }
            let err = self.status_error(&Method::PUT, &url, resp).await;
            // Every referenced blob was in place before this PUT, so "blob
            // unknown" is the registry not seeing it *yet*: storage that is
            // eventually consistent (S3, GCS), or distribution's filesystem
            // driver, which truncates and rewrites a blob's link file when
            // another publisher pushes the same blob, so a concurrent read
            // finds it empty. A few short retries see it settle; a blob that
            // is really missing still fails, with the registry's answer.
            let codes = err.codes();
            if codes.contains(&"MANIFEST_BLOB_UNKNOWN") || codes.contains(&"BLOB_UNKNOWN") {
                if let Some(delay) = retry.next_delay(None) {
                    tracing::debug!(?delay, "manifest blob not visible yet; retrying");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            }
            return Err(err);
        }
    }

    /// Every tag of `repo` (empty when it does not exist yet).
    pub async fn list_tags(&self, repo: &str) -> Result<Vec<String>, RegistryError> {
        self.list_tags_paged(repo, 1000).await
    }

    /// [`RegistryClient::list_tags`] asking for `page` tags at a time and
    /// following `Link: <…>; rel="next"`.
    pub async fn list_tags_paged(
        &self,
        repo: &str,
        page: usize,
    ) -> Result<Vec<String>, RegistryError> {
        #[derive(serde::Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut url = self.url(&format!("{repo}/tags/list"));
        url.set_query(Some(&format!("n={page}")));
        let mut tags = Vec::new();
        // A registry that loops its Link headers must not keep us forever.
        for _ in 0..10_000 {
            let resp = self
                .send(Req::new(Method::GET, url.clone(), Self::push_scopes(repo)))
                .await?;
            match resp.status() {
                StatusCode::NOT_FOUND if tags.is_empty() => return Ok(Vec::new()),
                s if s.is_success() => {}
                _ => return Err(self.status_error(&Method::GET, &url, resp).await),
            }
            let next = next_link(resp.headers(), &url);
            let body = read_capped(resp, MANIFEST_LIMIT, &url).await?;
            let list: TagList =
                serde_json::from_slice(&body).map_err(|e| RegistryError::Protocol {
                    method: "GET".into(),
                    url: RedactedUrl::new(&url),
                    reason: format!("the tag list is not JSON: {e}"),
                })?;
            let page_tags = list.tags.unwrap_or_default();
            let empty = page_tags.is_empty();
            tags.extend(page_tags);
            match next {
                Some(n) if !empty => url = n,
                _ => return Ok(tags),
            }
        }
        Ok(tags)
    }
}

/// Go's (so distribution's) answer to plain HTTP on a TLS port.
fn is_tls_answer(body: &[u8]) -> bool {
    String::from_utf8_lossy(body)
        .to_ascii_lowercase()
        .contains("http request to an https server")
}

/// Whether a plain-HTTP request failed because TLS bytes came back (hyper
/// cannot parse them as HTTP).
fn speaks_tls_error(e: &RegistryError) -> bool {
    let RegistryError::Transport { source, .. } = e else {
        return false;
    };
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source);
    while let Some(c) = cause {
        let text = c.to_string();
        if text.contains("invalid HTTP version") || text.contains("HTTP/0.9") {
            return true;
        }
        cause = c.source();
    }
    false
}

fn challenges_of(resp: &Response) -> Vec<auth::Challenge> {
    resp.headers()
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(parse_challenges)
        .collect()
}

/// `Content-Type` without parameters.
fn content_type(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(reqwest::header::CONTENT_TYPE)?.to_str().ok()?;
    let t = v.split(';').next()?.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

/// A response's `Location`, resolved against the URL that was asked.
pub(super) fn location(resp: &Response, request_url: &Url) -> Option<Url> {
    let l = resp
        .headers()
        .get(reqwest::header::LOCATION)?
        .to_str()
        .ok()?;
    request_url.join(l).ok()
}

/// `Link: </v2/…?n=2&last=b>; rel="next"`, resolved against `url`.
pub(super) fn next_link(headers: &HeaderMap, url: &Url) -> Option<Url> {
    for value in headers.get_all(reqwest::header::LINK) {
        let Ok(value) = value.to_str() else { continue };
        for link in value.split(',') {
            let mut parts = link.split(';');
            let target = parts.next()?.trim();
            let is_next = parts.any(|p| {
                let p = p.trim().replace(' ', "");
                p == "rel=\"next\"" || p == "rel=next"
            });
            if is_next {
                let target = target.strip_prefix('<')?.strip_suffix('>')?;
                return url.join(target).ok();
            }
        }
    }
    None
}

/// Checks `Docker-Content-Digest` when the registry sends one.
pub(super) fn check_digest_header(
    resp: &Response,
    expected: &Digest,
    url: &Url,
) -> Result<(), RegistryError> {
    let Some(v) = resp.headers().get("docker-content-digest") else {
        return Ok(());
    };
    let Some(actual) = v.to_str().ok().and_then(|v| v.parse::<Digest>().ok()) else {
        return Err(RegistryError::Protocol {
            method: "PUT".into(),
            url: RedactedUrl::new(url),
            reason: "`Docker-Content-Digest` is not a sha256 digest".into(),
        });
    };
    if &actual != expected {
        return Err(RegistryError::DigestMismatch {
            url: RedactedUrl::new(url),
            expected: expected.clone(),
            actual,
        });
    }
    Ok(())
}

/// Reads a whole body of at most `max` bytes.
async fn read_capped(mut resp: Response, max: u64, url: &Url) -> Result<Bytes, RegistryError> {
    let too_large = || RegistryError::TooLarge {
        url: RedactedUrl::new(url),
        max,
    };
    if resp.content_length().is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let mut buf = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if buf.len() as u64 + chunk.len() as u64 > max {
                    return Err(too_large());
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(Bytes::from(buf)),
            Err(e) => {
                return Err(RegistryError::Transport {
                    method: "GET".into(),
                    url: RedactedUrl::new(url),
                    attempts: 1,
                    source: e,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers_resolve_against_the_request() {
        let url = Url::parse("http://127.0.0.1:5000/v2/a/tags/list?n=2").unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            reqwest::header::LINK,
            r#"</v2/a/tags/list?last=b&n=2>; rel="next""#.parse().unwrap(),
        );
        assert_eq!(
            next_link(&h, &url).unwrap().as_str(),
            "http://127.0.0.1:5000/v2/a/tags/list?last=b&n=2"
        );
        h.insert(reqwest::header::LINK, r#"<x>; rel="prev""#.parse().unwrap());
        assert_eq!(next_link(&h, &url), None);
    }

    #[test]
    fn plain_http_only_for_loopback_and_named_hosts() {
        let opts = ClientOptions {
            insecure_hosts: vec!["reg.lan:5000".into()],
            ..ClientOptions::default()
        };
        // Insecure hosts other than loopback start on https (unverified);
        // the ping may move them to http.
        for (host, scheme) in [
            ("127.0.0.1:5000", "http"),
            ("reg.lan:5000", "https"),
            ("reg.lan", "https"),
            ("ghcr.io", "https"),
        ] {
            let c = RegistryClient::new(
                &Registry::parse(host).unwrap(),
                Credentials::anonymous(),
                &opts,
            )
            .unwrap();
            assert_eq!(c.url("").scheme(), scheme, "{host}");
        }
    }

    #[test]
    fn urls_made_before_the_switch_to_tls_are_rebased() {
        let c = RegistryClient::new(
            &Registry::parse("127.0.0.1:5000").unwrap(),
            Credentials::anonymous(),
            &ClientOptions::default(),
        )
        .unwrap();
        let stale = c.url("a/blobs/uploads/");
        assert_eq!(c.rebase(&stale), stale, "no switch yet");
        c.switch_base("https");
        assert_eq!(c.url("").as_str(), "https://127.0.0.1:5000/v2/");
        assert_eq!(
            c.rebase(&stale).as_str(),
            "https://127.0.0.1:5000/v2/a/blobs/uploads/"
        );
        let elsewhere = Url::parse("http://127.0.0.1:6000/v2/").unwrap();
        assert_eq!(c.rebase(&elsewhere), elsewhere, "another origin");

        // Without a port, the port that answered stays.
        let c = RegistryClient::new(
            &Registry::parse("localhost").unwrap(),
            Credentials::anonymous(),
            &ClientOptions::default(),
        )
        .unwrap();
        c.switch_base("https");
        assert_eq!(c.url("").as_str(), "https://localhost:80/v2/");
    }

    #[test]
    fn go_tls_answers_are_recognised() {
        assert!(is_tls_answer(
            b"Client sent an HTTP request to an HTTPS server.\n"
        ));
        assert!(!is_tls_answer(br#"{"errors":[{"code":"UNSUPPORTED"}]}"#));
    }

    #[test]
    fn unreadable_ca_files_are_named() {
        let opts = ClientOptions {
            ca_files: vec!["/nonexistent/ca.pem".into()],
            ssl_cert_file: Some(NIX_NO_CERT_FILE.into()),
            ..ClientOptions::default()
        };
        let e = RegistryClient::new(
            &Registry::parse("ghcr.io").unwrap(),
            Credentials::anonymous(),
            &opts,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
