//! One blob upload, the way docker, skopeo and crane do it: HEAD when the
//! digest is known, POST a session, then either one `PUT ?digest=` with the
//! body (digest known) or one streamed `PATCH` followed by `PUT ?digest=`
//! once the spool has finished (digest known only at the end). Also
//! cross-repository mounts, and the session steps on their own.
//!
//! A failed upload is retried as a unit, with a new session, by reading the
//! spool again from the start: a streamed body cannot be replayed request by
//! request. Progress is reported as bytes sent; a failed try takes its bytes
//! back with a negative count.

use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt as _, TryStreamExt as _};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
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
        loop {
            let mut sent = 0u64;
            let result = self.upload_once(repo, &body, on_progress, &mut sent).await;
            match result {
                Ok(outcome) => return Ok(outcome),
                Err(e) => {
                    if sent > 0 {
                        on_progress(-(sent as i64));
                    }
                    if e.is_transient() {
                        if let Some(delay) = retry.next_delay(None) {
                            tracing::debug!(error = %e, ?delay, "retrying the upload with a new session");
                            tokio::time::sleep(delay).await;
                            continue;
                        }
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
        on_progress: &(dyn Fn(i64) + Send + Sync),
        sent: &mut u64,
    ) -> Result<UploadOutcome, RegistryError> {
        let session = self.start_upload(repo).await?;
        // The digest may have become known since the HEAD (or a failed try).
        let (known, source) = match body {
            BlobBody::Bytes(b) => (
                Some((Digest::of(b), b.len() as u64)),
                BodySource::Bytes(b.clone()),
            ),
            BlobBody::Spool(s) => (s.finished(), BodySource::Spool(s.clone())),
        };
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
        let url = self.url(&format!("{repo}/blobs/uploads/"));
        let mut req = Req::new(Method::POST, url.clone(), Self::push_scopes(repo));
        req.retry = false;
        let resp = self.send(req).await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.status_error(&Method::POST, &url, resp).await);
        }
        location(&resp, &url).ok_or_else(|| missing_location("POST", &url))
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
        let mut req = Req::new(Method::POST, url.clone(), scopes);
        req.retry = false;
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
