//! One blob upload, the way docker, skopeo and crane do it: HEAD when the
//! digest is known, POST a session, then either one `PUT ?digest=` with the
//! body (digest known) or one streamed `PATCH` followed by `PUT ?digest=`
//! once the spool has finished (digest known only at the end). Also
//! cross-repository mounts, and the session steps on their own.
//!
//! Chunked uploads (`PATCH` with `Content-Range: <start>-<end>`, inclusive,
//! and `Content-Length`, then `PUT ?digest=`) are used when the user asks
//! (`chunk_size`), and once as a fallback when a monolithic upload is refused
//! with 413 or 416. Chunk sizes are clamped per host: ghcr.io takes at most
//! 4 MiB per `PATCH`, ECR at least 5 MiB (but the last), and a registry's
//! `OCI-Chunk-Min-Length` raises the size. One chunk at a time is held in
//! memory, never the blob, so a chunk the registry took only part of (its
//! `Range` on a 202 or 416 says so) is finished from where it stands.
//!
//! A failed upload is retried as a unit, with a new session, by reading the
//! spool again from the start: a streamed body cannot be replayed request by
//! request, and after a cut request distribution's session state (`_state`,
//! which carries the offset) no longer matches what it stored, so that
//! session cannot be resumed. The wait honours `Retry-After`. Progress is
//! reported as bytes sent; a failed try takes its bytes back with a negative
//! count.

use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt as _, TryStreamExt as _};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use crate::digest::Digest;
use crate::layer::Spool;

use super::client::{check_digest_header, location, RegistryClient, Req};
use super::error::{RedactedUrl, RegistryError};
use super::retry::RetryState;

/// What to upload.
#[derive(Clone)]
pub enum BlobBody {
    /// Small, in memory (configs): the digest is computed here.
    Bytes(Bytes),
    /// A spool, finished or still being written.
    Spool(Spool),
}

/// What happened to a blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UploadOutcome {
    Uploaded { digest: Digest, size: u64 },
    AlreadyPresent { digest: Digest, size: u64 },
}

impl UploadOutcome {
    pub fn digest(&self) -> &Digest {
        match self {
            UploadOutcome::Uploaded { digest, .. }
            | UploadOutcome::AlreadyPresent { digest, .. } => digest,
        }
    }
}

/// A bearer token must outlive a streamed body by this much: a 401 halfway
/// through cannot be answered by replaying the request.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

impl RegistryClient {
    /// Uploads a blob into `repo` (see the module doc). `on_progress` gets
    /// bytes sent, and the negative of a failed try's bytes.
    pub async fn upload_blob(
        &self,
        repo: &str,
        body: BlobBody,
        on_progress: &(dyn Fn(i64) + Send + Sync),
    ) -> Result<UploadOutcome, RegistryError> {
        let known = match &body {
            BlobBody::Bytes(b) => Some((Digest::of(b), b.len() as u64)),
            BlobBody::Spool(s) => s.finished(),
        };
        if let Some((digest, size)) = &known {
            if self.blob_exists(repo, digest).await? {
                return Ok(UploadOutcome::AlreadyPresent {
                    digest: digest.clone(),
                    size: *size,
                });
            }
        }
        let mut retry = RetryState::new(self.inner.policy);
        let mut chunk = self.inner.chunk_size;
        let mut fell_back = false;
        loop {
            let mut sent = 0u64;
            let result = self
                .upload_once(repo, &body, chunk, on_progress, &mut sent)
                .await;
            match result {
                Ok(outcome) => return Ok(outcome),
                Err(e) => {
                    if sent > 0 {
                        on_progress(-(sent as i64));
                    }
                    if e.is_transient() {
                        if let Some(delay) = retry.next_delay(e.retry_after()) {
                            tracing::debug!(error = %e, ?delay, "retrying the upload with a new session");
                            tokio::time::sleep(delay).await;
                            continue;
                        }
                    }
                    if chunk.is_none() && !fell_back && wants_chunks(&e) {
                        fell_back = true;
                        chunk = Some(DEFAULT_CHUNK);
                        tracing::info!(error = %e, "the registry refused a monolithic upload; retrying in chunks");
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    async fn upload_once(
        &self,
        repo: &str,
        body: &BlobBody,
        chunk: Option<u64>,
        on_progress: &(dyn Fn(i64) + Send + Sync),
        sent: &mut u64,
    ) -> Result<UploadOutcome, RegistryError> {
        let (session, min_chunk) = self.start_session(repo).await?;
        // The digest may have become known since the HEAD (or a failed try).
        let (known, source) = match body {
            BlobBody::Bytes(b) => (
                Some((Digest::of(b), b.len() as u64)),
                BodySource::Bytes(b.clone()),
            ),
            BlobBody::Spool(s) => (s.finished(), BodySource::Spool(s.clone())),
        };
        if let Some(chunk) = chunk {
            let size = chunk_size_for(self.inner.registry.host(), chunk, min_chunk);
            return self
                .upload_chunked(repo, session, source, size, on_progress, sent)
                .await;
        }
        let scopes = Self::push_scopes(repo);
        match (known, source) {
            (Some((digest, size)), req_body) => {
                // Monolithic: one PUT with the whole body.
                let url = with_digest(&session, &digest);
                let mut headers = HeaderMap::new();
                headers.insert(CONTENT_LENGTH, HeaderValue::from(size));
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                let resp = self
                    .send_body(
                        Method::PUT,
                        &url,
                        headers,
                        req_body,
                        &scopes,
                        on_progress,
                        sent,
                    )
                    .await?;
                if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
                    return Err(self.status_error(&Method::PUT, &url, resp).await);
                }
                check_digest_header(&resp, &digest, &url)?;
                Ok(UploadOutcome::Uploaded { digest, size })
            }
            (None, BodySource::Spool(spool)) => {
                // Streamed: one chunked PATCH following the spool, then the
                // digest once it is known.
                let mut headers = HeaderMap::new();
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                let resp = self
                    .send_body(
                        Method::PATCH,
                        &session,
                        headers,
                        BodySource::Spool(spool.clone()),
                        &scopes,
                        on_progress,
                        sent,
                    )
                    .await?;
                if !resp.status().is_success() {
                    return Err(self.status_error(&Method::PATCH, &session, resp).await);
                }
                let next = location(&resp, &session).unwrap_or(session);
                let (digest, size) = spool.done().await.map_err(RegistryError::Spool)?;
                if *sent != size {
                    return Err(RegistryError::Protocol {
                        method: "PATCH".into(),
                        url: RedactedUrl::new(&next),
                        reason: format!("sent {sent} bytes of a {size}-byte blob"),
                    });
                }
                self.commit_upload(repo, &next, &digest).await?;
                Ok(UploadOutcome::Uploaded { digest, size })
            }
            (None, BodySource::Bytes(_)) => Err(RegistryError::Protocol {
                method: "PUT".into(),
                url: RedactedUrl::new(&session),
                reason: "in-memory blob without a digest".into(),
            }),
        }
    }

    /// `POST /v2/<repo>/blobs/uploads/`: a new session's `Location`.
    pub async fn start_upload(&self, repo: &str) -> Result<Url, RegistryError> {
        Ok(self.start_session(repo).await?.0)
    }

    /// [`RegistryClient::start_upload`], with the session's
    /// `OCI-Chunk-Min-Length`. Retried like an idempotent request: a session
    /// started twice leaves one to expire, nothing more.
    async fn start_session(&self, repo: &str) -> Result<(Url, Option<u64>), RegistryError> {
        let url = self.url(&format!("{repo}/blobs/uploads/"));
        let mut req = Req::new(Method::POST, url.clone(), Self::push_scopes(repo));
        req.retry = true;
        let resp = self.send(req).await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.status_error(&Method::POST, &url, resp).await);
        }
        let min = resp
            .headers()
            .get("oci-chunk-min-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let url = self.rebase(&url);
        let session = location(&resp, &url).ok_or_else(|| missing_location("POST", &url))?;
        Ok((session, min))
    }

    /// Uploads `source` into `session` in `PATCH`es of `chunk` bytes (the
    /// last may be shorter), then commits with `PUT ?digest=`.
    async fn upload_chunked(
        &self,
        repo: &str,
        mut session: Url,
        source: BodySource,
        chunk: u64,
        on_progress: &(dyn Fn(i64) + Send + Sync),
        sent: &mut u64,
    ) -> Result<UploadOutcome, RegistryError> {
        let chunk = usize::try_from(chunk).unwrap_or(usize::MAX);
        let mut stream: std::pin::Pin<
            Box<dyn futures::Stream<Item = std::io::Result<Bytes>> + Send>,
        > = match &source {
            BodySource::Bytes(b) => Box::pin(futures::stream::iter([Ok(b.clone())])),
            BodySource::Spool(s) => Box::pin(s.stream()),
        };
        let mut buf = bytes::BytesMut::new();
        let mut ended = false;
        while !ended {
            // Fill one chunk (or what is left at the end).
            while buf.len() < chunk {
                match stream.try_next().await {
                    Ok(Some(b)) => buf.extend_from_slice(&b),
                    Ok(None) => {
                        ended = true;
                        break;
                    }
                    Err(e) => return Err(RegistryError::Spool(e)),
                }
            }
            while buf.len() >= chunk || (ended && !buf.is_empty()) {
                let take = buf.len().min(chunk);
                let piece = buf.split_to(take).freeze();
                session = self
                    .patch_chunk(repo, &session, *sent, piece.clone())
                    .await?;
                *sent += piece.len() as u64;
                on_progress(piece.len() as i64);
            }
        }
        let (digest, size) = match &source {
            BodySource::Bytes(b) => (Digest::of(b), b.len() as u64),
            BodySource::Spool(s) => s.done().await.map_err(RegistryError::Spool)?,
        };
        if *sent != size {
            return Err(RegistryError::Protocol {
                method: "PATCH".into(),
                url: RedactedUrl::new(&session),
                reason: format!("sent {sent} bytes of a {size}-byte blob"),
            });
        }
        self.commit_upload(repo, &session, &digest).await?;
        Ok(UploadOutcome::Uploaded { digest, size })
    }

    /// One chunk at `offset`: `Content-Range` inclusive and without `bytes=`,
    /// as the distribution spec wants. When the registry reports (`Range`
    /// on a 202 or a 416) that it holds only part of the chunk, the rest is
    /// sent from there, a few times at most: the chunk is still in memory.
    /// Returns the next `Location`.
    async fn patch_chunk(
        &self,
        repo: &str,
        session: &Url,
        offset: u64,
        bytes: Bytes,
    ) -> Result<Url, RegistryError> {
        const MAX_RESUMES: u32 = 3;
        let end = offset + bytes.len() as u64 - 1;
        let mut session = session.clone();
        let mut start = offset;
        let mut resumes = 0;
        loop {
            // `start - offset` is within the chunk: checked below.
            let piece = bytes.slice((start - offset) as usize..);
            let mut req = Req::new(Method::PATCH, session.clone(), Self::push_scopes(repo))
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_RANGE, &format!("{start}-{end}"));
            req.retry = false;
            req.body = Some(piece);
            let resp = self.send(req).await?;
            let status = resp.status();
            let held = resp
                .headers()
                .get(RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_range_end);
            let ok = status.is_success();
            if !ok && status != StatusCode::RANGE_NOT_SATISFIABLE {
                return Err(self.status_error(&Method::PATCH, &session, resp).await);
            }
            let next_session = location(&resp, &session).unwrap_or_else(|| session.clone());
            match held {
                Some(got) if got == end && ok => return Ok(next_session),
                None if ok => return Ok(next_session),
                // The registry holds the bytes up to `got`, inside this
                // chunk: send the rest.
                Some(got) if got + 1 >= offset && got < end && resumes < MAX_RESUMES => {
                    tracing::debug!(
                        start,
                        got,
                        end,
                        status = status.as_u16(),
                        "resuming the chunk where the registry stands"
                    );
                    resumes += 1;
                    start = got + 1;
                    session = next_session;
                }
                _ if !ok => return Err(self.status_error(&Method::PATCH, &session, resp).await),
                got => {
                    return Err(RegistryError::Protocol {
                        method: "PATCH".into(),
                        url: RedactedUrl::new(&session),
                        reason: format!("the registry holds bytes up to {got:?}, expected {end}"),
                    })
                }
            }
        }
    }

    /// One `PATCH` of `bytes` into a session; the session's next `Location`.
    pub async fn patch_upload(
        &self,
        repo: &str,
        session: &Url,
        bytes: Bytes,
    ) -> Result<Url, RegistryError> {
        let mut req = Req::new(Method::PATCH, session.clone(), Self::push_scopes(repo))
            .header(CONTENT_TYPE, "application/octet-stream");
        req.retry = false;
        req.body = Some(bytes);
        let resp = self.send(req).await?;
        if !resp.status().is_success() {
            return Err(self.status_error(&Method::PATCH, session, resp).await);
        }
        Ok(location(&resp, session).unwrap_or_else(|| session.clone()))
    }

    /// `PUT <session>?digest=` with no body: completes an upload.
    pub async fn commit_upload(
        &self,
        repo: &str,
        session: &Url,
        digest: &Digest,
    ) -> Result<(), RegistryError> {
        let url = with_digest(session, digest);
        let mut req = Req::new(Method::PUT, url.clone(), Self::push_scopes(repo));
        req.retry = false;
        let resp = self.send(req).await?;
        if !resp.status().is_success() {
            return Err(self.status_error(&Method::PUT, &url, resp).await);
        }
        check_digest_header(&resp, digest, &url)
    }

    /// Mounts `digest` from repository `from` on the same registry: `true`
    /// when mounted; `false` when the registry would not (202, whose session
    /// is cancelled; or 401, Harbor's answer for an unknown source).
    pub async fn mount_blob(
        &self,
        repo: &str,
        digest: &Digest,
        from: &str,
    ) -> Result<bool, RegistryError> {
        let mut url = self.url(&format!("{repo}/blobs/uploads/"));
        url.query_pairs_mut()
            .append_pair("mount", &digest.to_string())
            .append_pair("from", from);
        let mut scopes = Self::push_scopes(repo);
        // The token must carry pull on the source, or the registry refuses.
        scopes.push(format!("repository:{from}:pull"));
        // Idempotent: a mount done twice is one mount.
        let mut req = Req::new(Method::POST, url.clone(), scopes);
        req.retry = true;
        let resp = self.send(req).await?;
        match resp.status() {
            StatusCode::CREATED => {
                check_digest_header(&resp, digest, &url)?;
                Ok(true)
            }
            StatusCode::ACCEPTED => {
                if let Some(session) = location(&resp, &url) {
                    let mut cancel = Req::new(Method::DELETE, session, Self::push_scopes(repo));
                    cancel.retry = false;
                    // Best effort: an abandoned session expires on its own.
                    if let Err(e) = self.send(cancel).await {
                        tracing::debug!(error = %e, "cancelling the upload session failed");
                    }
                }
                Ok(false)
            }
            StatusCode::UNAUTHORIZED => Ok(false),
            _ => Err(self.status_error(&Method::POST, &url, resp).await),
        }
    }

    /// Sends a body that may be streamed from a spool, once, with a token
    /// valid for a while yet, reporting progress as the body goes out.
    #[allow(clippy::too_many_arguments)]
    async fn send_body(
        &self,
        method: Method,
        url: &Url,
        headers: HeaderMap,
        body: BodySource,
        scopes: &[String],
        on_progress: &(dyn Fn(i64) + Send + Sync),
        sent: &mut u64,
    ) -> Result<Response, RegistryError> {
        let authorization = self.authorization(url, scopes, TOKEN_MARGIN).await?;
        let url = &self.rebase(url);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let spool = match &body {
            BodySource::Spool(s) => Some(s.clone()),
            BodySource::Bytes(_) => None,
        };
        let body = match body {
            BodySource::Bytes(b) => {
                let _ = tx.send(b.len() as u64);
                reqwest::Body::from(b)
            }
            BodySource::Spool(spool) => {
                let stream = spool.stream().inspect_ok(move |chunk| {
                    let _ = tx.send(chunk.len() as u64);
                });
                reqwest::Body::wrap_stream(stream)
            }
        };
        let _permit = self.inner.permits.acquire().await;
        let mut rb = self
            .inner
            .http
            .request(method.clone(), url.clone())
            .headers(headers)
            .body(body);
        if let Some(a) = authorization {
            rb = rb.header(reqwest::header::AUTHORIZATION, a);
        }
        let send = rb.send();
        tokio::pin!(send);
        let result = loop {
            tokio::select! {
                r = &mut send => break r,
                Some(n) = rx.recv() => {
                    *sent += n;
                    on_progress(n as i64);
                }
            }
        };
        while let Ok(n) = rx.try_recv() {
            *sent += n;
            on_progress(n as i64);
        }
        match result {
            Ok(resp) => {
                tracing::debug!(method = %method, url = %RedactedUrl::new(url), status = resp.status().as_u16(), "registry request");
                Ok(resp)
            }
            Err(e) => {
                // A spool whose writer failed ends the body with an error:
                // that is the layer's failure, not the network's.
                if let Some(spool) = spool {
                    if let Some(Err(io)) = spool.done().now_or_never() {
                        return Err(RegistryError::Spool(io));
                    }
                }
                Err(RegistryError::Transport {
                    method: method.to_string(),
                    url: RedactedUrl::new(url),
                    attempts: 1,
                    source: e,
                })
            }
        }
    }
}

enum BodySource {
    Bytes(Bytes),
    Spool(Spool),
}

/// Appends `digest=` to a session URL, with `&` when it has a query.
pub fn with_digest(session: &Url, digest: &Digest) -> Url {
    let mut url = session.clone();
    let query = match url.query() {
        Some(q) if !q.is_empty() => format!("{q}&digest={digest}"),
        _ => format!("digest={digest}"),
    };
    url.set_query(Some(&query));
    url
}

/// The chunk size of a fallback to chunked uploads when the user gave none.
pub const DEFAULT_CHUNK: u64 = 4 * 1024 * 1024;
/// ghcr.io refuses larger `PATCH`es.
const GHCR_MAX_CHUNK: u64 = 4 * 1024 * 1024;
/// ECR refuses smaller ones (but the last).
const ECR_MIN_CHUNK: u64 = 5 * 1024 * 1024;

/// The chunk size for `host`: the asked size, raised to the registry's
/// `OCI-Chunk-Min-Length` and ECR's minimum, lowered to ghcr.io's maximum.
pub fn chunk_size_for(host: &str, asked: u64, registry_min: Option<u64>) -> u64 {
    let host = host.to_ascii_lowercase();
    let mut size = asked.max(1).max(registry_min.unwrap_or(0));
    if host.ends_with(".amazonaws.com") && host.contains(".dkr.ecr.") {
        size = size.max(ECR_MIN_CHUNK);
    }
    if host == "ghcr.io" {
        size = size.min(GHCR_MAX_CHUNK);
    }
    size
}

/// Whether a failed monolithic upload suggests the registry wants chunks:
/// 413 (the body is too large for one request) or 416 (a range it expected).
fn wants_chunks(e: &RegistryError) -> bool {
    matches!(
        e.status(),
        Some(StatusCode::PAYLOAD_TOO_LARGE) | Some(StatusCode::RANGE_NOT_SATISFIABLE)
    )
}

/// The end of a `Range: 0-<end>` header (distribution sends it without
/// `bytes=`; some registries with).
fn parse_range_end(value: &str) -> Option<u64> {
    let v = value.trim();
    let v = v.strip_prefix("bytes=").unwrap_or(v);
    v.split_once('-')?.1.trim().parse().ok()
}

/// `4194304`, `4MiB`, `4M`, `512KiB`, `5MB` (SI), `1GiB`: a byte count.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size; hint: use e.g. `4MiB` or `5242880`"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => {
            return Err(format!(
                "`{text}` has an unknown unit; hint: use B, KiB, MiB or GiB"
            ))
        }
    };
    let size = n
        .checked_mul(mult)
        .ok_or_else(|| format!("`{text}` is too large"))?;
    if size == 0 {
        return Err(format!("`{text}`: a chunk size must be positive"));
    }
    Ok(size)
}

fn missing_location(method: &str, url: &Url) -> RegistryError {
    RegistryError::Protocol {
        method: method.into(),
        url: RedactedUrl::new(url),
        reason: "the answer has no `Location`".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_follow_the_registry() {
        let mib = 1024 * 1024;
        assert_eq!(chunk_size_for("ghcr.io", 16 * mib, None), 4 * mib);
        assert_eq!(chunk_size_for("ghcr.io", mib, None), mib);
        let ecr = "123456789012.dkr.ecr.eu-west-1.amazonaws.com";
        assert_eq!(chunk_size_for(ecr, mib, None), 5 * mib);
        assert_eq!(chunk_size_for(ecr, 8 * mib, None), 8 * mib);
        assert_eq!(chunk_size_for("quay.io", mib, Some(2 * mib)), 2 * mib);
        assert_eq!(chunk_size_for("quay.io", 0, None), 1);
    }

    #[test]
    fn sizes_take_suffixes() {
        assert_eq!(parse_byte_size("4MiB"), Ok(4 * 1024 * 1024));
        assert_eq!(parse_byte_size("4M"), Ok(4 * 1024 * 1024));
        assert_eq!(parse_byte_size("5MB"), Ok(5_000_000));
        assert_eq!(parse_byte_size("512kib"), Ok(512 * 1024));
        assert_eq!(parse_byte_size("65536"), Ok(65536));
        for bad in ["", "MiB", "4 parsecs", "0", "-1", "99999999999999999999GiB"] {
            assert!(parse_byte_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn range_ends_are_read_with_or_without_bytes() {
        assert_eq!(parse_range_end("0-1023"), Some(1023));
        assert_eq!(parse_range_end("bytes=0-9"), Some(9));
        assert_eq!(parse_range_end("junk"), None);
    }

    #[test]
    fn digest_is_appended_with_the_right_separator() {
        let d = Digest::of(b"x");
        let plain = Url::parse("http://r/v2/a/blobs/uploads/u1").unwrap();
        assert_eq!(
            with_digest(&plain, &d).as_str(),
            format!("http://r/v2/a/blobs/uploads/u1?digest={d}")
        );
        let signed = Url::parse("http://r/v2/a/blobs/uploads/u1?_state=abc%3D").unwrap();
        assert_eq!(
            with_digest(&signed, &d).as_str(),
            format!("http://r/v2/a/blobs/uploads/u1?_state=abc%3D&digest={d}")
        );
    }
}
