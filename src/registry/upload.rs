//! One blob upload, the way docker, skopeo and crane do it: HEAD when the
//! digest is known, POST a session, then either one `PUT ?digest=` with the
//! body (digest known) or one streamed `PATCH` followed by `PUT ?digest=`
//! once the spool has finished (digest known only at the end). A spool still
//! being written is waited for until it holds [`STREAM_AFTER`] bytes, so a
//! small layer goes in one `PUT`. Also cross-repository mounts, and the
//! session steps on their own.
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
//! Blobs that already exist elsewhere stream straight through, with no temp
//! file and never more than one chunk in memory: [`BlobBody::Remote`] (a
//! blob of another registry, GET → PUT) and [`BlobBody::File`] (a file, such
//! as an OCI layout's blob). Their digest and size are known, so they take
//! the monolithic path (one `PUT ?digest=` with `Content-Length`) or the
//! chunked one. What flows through is hashed and counted, and a source that
//! serves other bytes than its digest fails the upload clearly (before the
//! registry's own check on the final `PUT`).
//!
//! A failed upload (a transient error, or a session the registry has lost:
//! `BLOB_UPLOAD_UNKNOWN`) is retried as a unit, with a new session, by reading the
//! spool (or GETting the source blob, or reopening the file) again from the
//! start: a streamed body cannot be replayed request by
//! request, and after a cut request distribution's session state (`_state`,
//! which carries the offset) no longer matches what it stored, so that
//! session cannot be resumed. The wait honours `Retry-After`. Progress is
//! reported as bytes sent; a failed try takes its bytes back with a negative
//! count.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt as _, Stream, TryStreamExt as _};
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
    /// A blob of another registry (or repository), streamed from a GET on
    /// each try.
    Remote {
        client: RegistryClient,
        repo: String,
        digest: Digest,
        size: u64,
    },
    /// A file holding the blob from `offset` on (a layout's blob file, or
    /// an archive's member), reopened on each try.
    File {
        path: PathBuf,
        offset: u64,
        digest: Digest,
        size: u64,
    },
}

impl BlobBody {
    /// Digest and size when known before reading.
    fn known(&self) -> Option<(Digest, u64)> {
        match self {
            BlobBody::Bytes(b) => Some((Digest::of(b), b.len() as u64)),
            BlobBody::Spool(s) => s.finished(),
            BlobBody::Remote { digest, size, .. } | BlobBody::File { digest, size, .. } => {
                Some((digest.clone(), *size))
            }
        }
    }

    /// Opens a remote or file body as a checked stream of its bytes: an
    /// error item ends it when the source fails, or when the bytes do not
    /// hash to the digest or count to the size. Other bodies are opened as
    /// themselves.
    pub async fn open_stream(
        &self,
    ) -> Result<Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>, RegistryError> {
        Ok(match self.open().await? {
            BodySource::Bytes(b) => Box::pin(futures::stream::iter([Ok(b)])),
            BodySource::Spool(s) => Box::pin(s.stream()),
            BodySource::Stream(s) => Box::into_pin(s),
        })
    }

    /// What one try reads from.
    async fn open(&self) -> Result<BodySource, RegistryError> {
        match self {
            BlobBody::Bytes(b) => Ok(BodySource::Bytes(b.clone())),
            BlobBody::Spool(s) => Ok(BodySource::Spool(s.clone())),
            BlobBody::Remote {
                client,
                repo,
                digest,
                size,
            } => {
                let url = client.url(&format!("{repo}/blobs/{digest}"));
                let (stream, length) = client.get_blob_stream(repo, digest).await?;
                if let Some(length) = length.filter(|l| l != size) {
                    return Err(RegistryError::Protocol {
                        method: "GET".into(),
                        url: RedactedUrl::new(&url),
                        reason: format!("the blob is {length} bytes, its descriptor says {size}"),
                    });
                }
                Ok(BodySource::Stream(Box::new(Checked::new(
                    Box::pin(stream),
                    url,
                    digest.clone(),
                    *size,
                    true,
                ))))
            }
            BlobBody::File {
                path,
                offset,
                digest,
                size,
            } => {
                // For messages: the file's full path as a `file:` URL.
                let url = std::path::absolute(path)
                    .ok()
                    .and_then(|p| Url::from_file_path(p).ok())
                    .or_else(|| Url::parse("file:///").ok())
                    .expect("`file:///` is a URL");
                let mut file = tokio::fs::File::open(path)
                    .await
                    .map_err(|e| file_error(path, e))?;
                use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
                file.seek(std::io::SeekFrom::Start(*offset))
                    .await
                    .map_err(|e| file_error(path, e))?;
                // Exactly the blob's bytes: an archive's next member follows.
                let stream =
                    tokio_util::io::ReaderStream::with_capacity(file.take(*size), 256 * 1024);
                Ok(BodySource::Stream(Box::new(Checked::new(
                    Box::pin(stream),
                    url,
                    digest.clone(),
                    *size,
                    false,
                ))))
            }
        }
    }
}

fn file_error(path: &std::path::Path, e: std::io::Error) -> RegistryError {
    RegistryError::Spool(std::io::Error::new(
        e.kind(),
        format!("`{}`: {e}", path.display()),
    ))
}

/// A source stream that counts and hashes what flows through and ends with
/// an error when the source fails or its bytes are not the blob. The error
/// itself is kept in `failure` for the uploader: once inside a request body
/// it reaches reqwest only as text.
struct Checked {
    inner: Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>,
    url: Url,
    digest: Digest,
    size: u64,
    /// `None` once the last byte was counted and checked.
    hasher: Option<crate::digest::Hasher>,
    /// Ended, by the source or by an error item: nothing more is yielded.
    ended: bool,
    failure: Arc<Mutex<Option<SourceFailure>>>,
    /// A registry source: a read failure is worth another try.
    remote: bool,
}

/// Why a checked source stream ended early.
struct SourceFailure {
    error: RegistryError,
    /// A source that broke off mid-body (a new GET may succeed); a wrong
    /// blob or an unreadable file is final.
    retry: bool,
}

impl Checked {
    fn new(
        inner: Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>,
        url: Url,
        digest: Digest,
        size: u64,
        remote: bool,
    ) -> Checked {
        Checked {
            inner,
            url,
            digest,
            size,
            hasher: Some(crate::digest::Hasher::new()),
            ended: false,
            failure: Arc::default(),
            remote,
        }
    }

    fn fail(&mut self, error: RegistryError, retry: bool) -> std::io::Error {
        let text = error.to_string();
        self.ended = true;
        if let Ok(mut slot) = self.failure.lock() {
            slot.get_or_insert(SourceFailure { error, retry });
        }
        std::io::Error::new(std::io::ErrorKind::InvalidData, text)
    }

    /// The failure that ended the stream, if any.
    fn take_failure(slot: &Mutex<Option<SourceFailure>>) -> Option<SourceFailure> {
        slot.lock().ok()?.take()
    }
}

impl Checked {
    /// Checks the whole blob once its last byte is in: before that byte is
    /// passed on, so a request with a `Content-Length` never completes with
    /// a wrong blob (hyper may stop polling once the length is reached).
    fn verify(&mut self, hasher: crate::digest::Hasher) -> Result<(), std::io::Error> {
        let (actual, _) = hasher.finish();
        if actual != self.digest {
            let error = RegistryError::DigestMismatch {
                url: RedactedUrl::new(&self.url),
                expected: self.digest.clone(),
                actual,
            };
            return Err(self.fail(error, false));
        }
        Ok(())
    }
}

impl Stream for Checked {
    type Item = std::io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) if chunk.is_empty() => Poll::Ready(Some(Ok(chunk))),
            Poll::Ready(Some(Ok(chunk))) => {
                let Some(hasher) = this.hasher.as_mut() else {
                    // Bytes after the last one the descriptor counts.
                    let error = RegistryError::Protocol {
                        method: "GET".into(),
                        url: RedactedUrl::new(&this.url),
                        reason: format!("the blob is longer than its {} bytes", this.size),
                    };
                    return Poll::Ready(Some(Err(this.fail(error, false))));
                };
                hasher.update(&chunk);
                let len = hasher.len();
                if len > this.size {
                    let error = RegistryError::Protocol {
                        method: "GET".into(),
                        url: RedactedUrl::new(&this.url),
                        reason: format!("the blob is longer than its {} bytes", this.size),
                    };
                    return Poll::Ready(Some(Err(this.fail(error, false))));
                }
                if len == this.size {
                    if let Some(hasher) = this.hasher.take() {
                        if let Err(e) = this.verify(hasher) {
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                let url = RedactedUrl::new(&this.url);
                let http = e.get_ref().is_some_and(|i| i.is::<reqwest::Error>());
                let error = match e.into_inner().map(|b| b.downcast::<reqwest::Error>()) {
                    Some(Ok(re)) if http => RegistryError::Transport {
                        method: "GET".into(),
                        url,
                        attempts: 1,
                        source: *re,
                    },
                    Some(Ok(re)) => {
                        RegistryError::Spool(std::io::Error::other(format!("`{url}`: {re}")))
                    }
                    Some(Err(other)) => {
                        RegistryError::Spool(std::io::Error::other(format!("`{url}`: {other}")))
                    }
                    None => RegistryError::Spool(std::io::Error::other(format!(
                        "`{url}`: the read failed"
                    ))),
                };
                // A registry that breaks off may serve the blob on a new GET;
                // a file that cannot be read will not be readable next time.
                let retry = this.remote;
                Poll::Ready(Some(Err(this.fail(error, retry))))
            }
            Poll::Ready(None) => {
                this.ended = true;
                match this.hasher.take() {
                    // The whole blob was seen (and checked) already.
                    None => Poll::Ready(None),
                    // An empty blob is checked here.
                    Some(h) if this.size == 0 => match this.verify(h) {
                        Ok(()) => Poll::Ready(None),
                        Err(e) => Poll::Ready(Some(Err(e))),
                    },
                    Some(h) => {
                        let error = RegistryError::Protocol {
                            method: "GET".into(),
                            url: RedactedUrl::new(&this.url),
                            reason: format!(
                                "the blob ended after {} of its {} bytes",
                                h.len(),
                                this.size
                            ),
                        };
                        // A short body from a registry is a cut connection.
                        let retry = this.remote;
                        Poll::Ready(Some(Err(this.fail(error, retry))))
                    }
                }
            }
        }
    }
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

/// The registry no longer knows the upload session: it expired, or a
/// replica behind a load balancer never had it. A new session can succeed.
fn session_lost(e: &RegistryError) -> bool {
    e.codes().contains(&"BLOB_UPLOAD_UNKNOWN")
}

/// A spool still being written is streamed (`PATCH`, then `PUT`) only once it
/// holds this much; a smaller blob is waited for and sent in one `PUT`. Each
/// request costs a registry milliseconds of CPU (distribution: about 2.5 ms),
/// which adds up on an image of a hundred small layers. Within the spool's
/// in-memory window, so the stream still starts from memory.
pub const STREAM_AFTER: u64 = 2 << 20;

impl RegistryClient {
    /// Uploads a blob into `repo` (see the module doc). `on_progress` gets
    /// bytes sent, and the negative of a failed try's bytes.
    pub async fn upload_blob(
        &self,
        repo: &str,
        body: BlobBody,
        on_progress: &(dyn Fn(i64) + Send + Sync),
    ) -> Result<UploadOutcome, RegistryError> {
        if let Some((digest, size)) = &body.known() {
            if self.blob_exists(repo, digest).await? {
                return Ok(UploadOutcome::AlreadyPresent {
                    digest: digest.clone(),
                    size: *size,
                });
            }
        }
        self.upload_new_blob(repo, body, on_progress).await
    }

    /// [`RegistryClient::upload_blob`] without asking first whether the
    /// registry has the blob: for one the caller believes missing (it has
    /// just compressed it, or just found it missing), where the HEAD would
    /// cost a round trip to learn nothing; a blob sent again is kept once
    /// (the registry stores one copy per digest).
    pub async fn upload_new_blob(
        &self,
        repo: &str,
        body: BlobBody,
        on_progress: &(dyn Fn(i64) + Send + Sync),
    ) -> Result<UploadOutcome, RegistryError> {
        let mut retry = RetryState::new(self.inner.policy);
        let mut chunk = self.inner.chunk_size;
        let mut fell_back = false;
        loop {
            let mut sent = 0u64;
            let mut source_cut = false;
            let result = self
                .upload_once(repo, &body, chunk, on_progress, &mut sent, &mut source_cut)
                .await;
            match result {
                Ok(outcome) => return Ok(outcome),
                Err(e) => {
                    if sent > 0 {
                        on_progress(-(sent as i64));
                    }
                    if e.is_transient() || source_cut || session_lost(&e) {
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
        source_cut: &mut bool,
    ) -> Result<UploadOutcome, RegistryError> {
        let (session, min_chunk) = self.start_session(repo).await?;
        if let BlobBody::Spool(spool) = body {
            spool.wait_for(STREAM_AFTER).await;
        }
        // The digest may have become known since the HEAD (or a failed try).
        let known = body.known();
        // Opened before this registry's job is taken (in `send_body`), so
        // that a slow source does not hold one.
        let source = body.open().await?;
        let failure = match &source {
            BodySource::Stream(s) => Some(s.failure.clone()),
            _ => None,
        };
        let result = if let Some(chunk) = chunk {
            let size = chunk_size_for(self.inner.registry.host(), chunk, min_chunk);
            self.upload_chunked(repo, session, source, known, size, on_progress, sent)
                .await
        } else {
            self.upload_whole(repo, session, source, known, on_progress, sent)
                .await
        };
        // A source that failed mid-body explains the failed request better
        // than the request's own error does.
        match (result, failure.as_deref().and_then(Checked::take_failure)) {
            (Err(_), Some(f)) => {
                *source_cut = f.retry;
                Err(f.error)
            }
            (result, _) => result,
        }
    }

    /// Monolithic when the digest is known, else one streamed `PATCH`.
    async fn upload_whole(
        &self,
        repo: &str,
        session: Url,
        source: BodySource,
        known: Option<(Digest, u64)>,
        on_progress: &(dyn Fn(i64) + Send + Sync),
        sent: &mut u64,
    ) -> Result<UploadOutcome, RegistryError> {
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
                if !resp.status().is_success() {
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
            (None, BodySource::Bytes(_) | BodySource::Stream(_)) => Err(RegistryError::Protocol {
                method: "PUT".into(),
                url: RedactedUrl::new(&session),
                reason: "a blob without a digest that is not a spool".into(),
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
    #[allow(clippy::too_many_arguments)]
    async fn upload_chunked(
        &self,
        repo: &str,
        mut session: Url,
        source: BodySource,
        known: Option<(Digest, u64)>,
        chunk: u64,
        on_progress: &(dyn Fn(i64) + Send + Sync),
        sent: &mut u64,
    ) -> Result<UploadOutcome, RegistryError> {
        let chunk = usize::try_from(chunk).unwrap_or(usize::MAX);
        let spool = match &source {
            BodySource::Spool(s) => Some(s.clone()),
            _ => None,
        };
        let mut stream: Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>> = match source {
            BodySource::Bytes(b) => Box::pin(futures::stream::iter([Ok(b)])),
            BodySource::Spool(s) => Box::pin(s.stream()),
            // Checked: it ends with an error unless every byte was the blob's.
            BodySource::Stream(s) => Box::into_pin(s),
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
        let (digest, size) = match (spool, known) {
            (Some(s), _) => s.done().await.map_err(RegistryError::Spool)?,
            (None, Some(known)) => known,
            (None, None) => {
                return Err(RegistryError::Protocol {
                    method: "PUT".into(),
                    url: RedactedUrl::new(&session),
                    reason: "a blob without a digest that is not a spool".into(),
                })
            }
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
            _ => None,
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
            BodySource::Stream(checked) => {
                let stream = checked.inspect_ok(move |chunk| {
                    let _ = tx.send(chunk.len() as u64);
                });
                reqwest::Body::wrap_stream(stream)
            }
        };
        let _permit = self.inner.jobs.acquire().await;
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

/// What one try reads from.
enum BodySource {
    Bytes(Bytes),
    Spool(Spool),
    /// A remote or file blob, checked as it flows.
    Stream(Box<Checked>),
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

    fn checked(parts: &[&'static [u8]], digest: Digest, size: u64, remote: bool) -> Checked {
        let items: Vec<std::io::Result<Bytes>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Checked::new(
            Box::pin(futures::stream::iter(items)),
            Url::parse("http://127.0.0.1:1/v2/a/blobs/x").unwrap(),
            digest,
            size,
            remote,
        )
    }

    async fn drain(mut c: Checked) -> (Vec<u8>, Option<std::io::Error>, Option<SourceFailure>) {
        let mut got = Vec::new();
        let mut err = None;
        while let Some(item) = c.try_next().await.transpose() {
            match item {
                Ok(b) => got.extend_from_slice(&b),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        assert!(c.next().await.is_none(), "nothing after the end");
        let failure = Checked::take_failure(&c.failure);
        (got, err, failure)
    }

    use futures::StreamExt as _;

    #[tokio::test]
    async fn a_checked_source_passes_the_right_blob_and_stops_a_wrong_one() {
        let blob: &'static [u8] = b"hello, layer";
        let digest = Digest::of(blob);
        let (got, err, failure) =
            drain(checked(&[&blob[..5], &blob[5..]], digest.clone(), 12, true)).await;
        assert_eq!(got, blob);
        assert!(err.is_none() && failure.is_none());

        // Same length, other bytes: the last chunk is held back.
        let (got, err, failure) =
            drain(checked(&[b"hello, ", b"LAYER"], digest.clone(), 12, true)).await;
        assert_eq!(got, b"hello, ");
        assert!(err.is_some());
        let failure = failure.unwrap();
        assert!(!failure.retry, "a wrong blob is not retried");
        assert!(
            matches!(&failure.error, RegistryError::DigestMismatch { expected, .. } if *expected == digest),
            "{}",
            failure.error
        );

        // Longer than its descriptor.
        let (_, err, failure) = drain(checked(&[blob, b"!"], digest.clone(), 12, true)).await;
        assert!(err.is_some());
        assert!(failure
            .unwrap()
            .error
            .to_string()
            .contains("longer than its 12 bytes"));

        // Shorter: a cut connection, retried for a registry, not for a file.
        let (_, _, failure) = drain(checked(&[&blob[..4]], digest.clone(), 12, true)).await;
        let failure = failure.unwrap();
        assert!(failure.retry);
        assert!(
            failure
                .error
                .to_string()
                .contains("ended after 4 of its 12 bytes"),
            "{}",
            failure.error
        );
        let (_, _, failure) = drain(checked(&[&blob[..4]], digest, 12, false)).await;
        assert!(!failure.unwrap().retry);
    }

    #[tokio::test]
    async fn a_file_body_is_read_and_checked_on_each_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, b"file blob").unwrap();
        let body = BlobBody::File {
            path: path.clone(),
            offset: 0,
            digest: Digest::of(b"file blob"),
            size: 9,
        };
        for _ in 0..2 {
            let bytes: Vec<Bytes> = body
                .open_stream()
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            assert_eq!(bytes.concat(), b"file blob");
        }
        std::fs::write(&path, b"file blub").unwrap();
        let read: Result<Vec<Bytes>, _> = body.open_stream().await.unwrap().try_collect().await;
        assert!(read
            .unwrap_err()
            .to_string()
            .contains("sent content with digest"));
        std::fs::remove_file(&path).unwrap();
        let Err(e) = body.open_stream().await else {
            panic!("a missing file opened")
        };
        assert!(format!("{:?}", e).contains("blob"), "{e:?}");
    }
}
