//! What is worth retrying, and how long to wait: one classifier and one
//! backoff for the whole registry client.
//!
//! The client's `send` retries idempotent requests with it; `upload.rs`
//! retries a whole blob upload with it (a streamed body cannot be replayed
//! request by request). Both stop at the same bounds: a count and a total
//! time.

use std::error::Error as _;
use std::time::{Duration, Instant};

use rand::Rng as _;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;

/// 408, 429 and every 5xx: the registry may answer differently next time.
pub fn is_transient_status(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// Connect errors, timeouts, resets and connections closed mid-answer.
pub fn is_transient_error(err: &reqwest::Error) -> bool {
    if err.is_timeout() || err.is_connect() {
        return true;
    }
    if err.is_builder() || err.is_redirect() || err.is_status() || err.is_decode() {
        return false;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = err.source();
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | TimedOut
            ) {
                return true;
            }
        }
        // hyper's `IncompleteMessage` (the peer closed the connection before
        // answering, common behind load balancers) is not an io::Error, and
        // hyper is not a direct dependency: recognise it by its message.
        let text = c.to_string();
        if text.contains("connection closed before message completed")
            || text.contains("connection reset")
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The wait a `Retry-After` header asks for (seconds form only; an HTTP date
/// falls back to our own backoff).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Bounds on retrying.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub max_retries: u32,
    /// No retry starts after this much time since the first try.
    pub max_elapsed: Duration,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    pub fn new(max_retries: u32) -> RetryPolicy {
        RetryPolicy {
            max_retries,
            max_elapsed: Duration::from_secs(120),
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(15),
        }
    }

    /// Exponential backoff with full jitter for retry number `retry`
    /// (0-based): uniform in `[d/2, d]` with `d = base * 2^retry`, capped.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << retry.min(16))
            .min(self.max_delay);
        let half = exp / 2;
        let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter)
    }
}

/// One retry loop's state: how many tries so far, since when.
#[derive(Debug)]
pub struct RetryState {
    policy: RetryPolicy,
    started: Instant,
    retries: u32,
}

impl RetryState {
    pub fn new(policy: RetryPolicy) -> RetryState {
        RetryState {
            policy,
            started: Instant::now(),
            retries: 0,
        }
    }

    /// Tries made so far (first try included).
    pub fn attempts(&self) -> u32 {
        self.retries + 1
    }

    /// The wait before the next try, or `None` when the budget is spent.
    /// `asked` is the registry's `Retry-After`, honoured up to the budget.
    pub fn next_delay(&mut self, asked: Option<Duration>) -> Option<Duration> {
        if self.retries >= self.policy.max_retries {
            return None;
        }
        let delay = asked.unwrap_or_else(|| self.policy.backoff(self.retries));
        if self.started.elapsed() + delay > self.policy.max_elapsed {
            return None;
        }
        self.retries += 1;
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retried_statuses_are_pinned() {
        let retried: Vec<u16> = (100..600)
            .filter(|c| is_transient_status(StatusCode::from_u16(*c).unwrap()))
            .filter(|c| {
                [
                    200, 201, 202, 400, 401, 403, 404, 405, 408, 409, 416, 429, 500, 502, 503, 504,
                ]
                .contains(c)
            })
            .collect();
        assert_eq!(retried, [408, 429, 500, 502, 503, 504]);
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let p = RetryPolicy::new(5);
        for retry in 0..20 {
            let d = p.backoff(retry);
            let full = p
                .base_delay
                .saturating_mul(1 << retry.min(16))
                .min(p.max_delay);
            assert!(d >= full / 2 && d <= full, "{retry}: {d:?} vs {full:?}");
        }
    }

    #[test]
    fn retry_after_is_honoured_within_the_budget() {
        let mut headers = HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), None);

        let mut s = RetryState::new(RetryPolicy::new(2));
        assert_eq!(
            s.next_delay(Some(Duration::from_secs(1))),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            s.next_delay(Some(Duration::from_secs(500))),
            None,
            "over the time budget"
        );
        assert!(s.next_delay(None).is_some());
        assert_eq!(s.next_delay(None), None, "over the count");
        assert_eq!(s.attempts(), 3);
    }

    #[tokio::test]
    async fn connection_refused_is_transient() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let err = reqwest::get(format!("http://127.0.0.1:{port}/"))
            .await
            .unwrap_err();
        assert!(is_transient_error(&err), "{err:?}");
    }
}
