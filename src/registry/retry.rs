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

/// Whether TLS verification refused the peer's certificate (rustls says
/// "invalid peer certificate"; rustls is not a direct dependency, so the
/// chain's messages are read).
pub fn is_certificate_error(err: &reqwest::Error) -> bool {
    any_message(
        err,
        &["invalid peer certificate", "certificate verify failed"],
    )
}

/// Whether `err` or one of its sources says one of `needles`: for errors of
/// crates that are not direct dependencies, known only by their messages.
fn any_message(err: &(dyn std::error::Error + 'static), needles: &[&str]) -> bool {
    let mut cause = Some(err);
    while let Some(c) = cause {
        let text = c.to_string();
        if needles.iter().any(|n| text.contains(n)) {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Whether the registry's host name does not exist (getaddrinfo's
/// `EAI_NONAME`/`EAI_NODATA`, as glibc and macOS word them; hyper's resolver
/// passes the message on). `Temporary failure in name resolution` is not
/// one: a resolver that cannot answer now may answer later.
pub fn is_unknown_host(err: &(dyn std::error::Error + 'static)) -> bool {
    any_message(
        err,
        &[
            "Name or service not known",
            "No address associated with hostname",
            "nodename nor servname provided",
        ],
    )
}

/// Connect errors, timeouts, resets and connections closed mid-answer; not
/// a refused certificate or a host name that does not exist, which no retry
/// changes.
pub fn is_transient_error(err: &reqwest::Error) -> bool {
    if is_certificate_error(err) || is_unknown_host(err) {
        return false;
    }
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

/// The wait a `Retry-After` header asks for: delta-seconds, or an HTTP date
/// (IMF-fixdate, what every registry and CDN sends) counted from now; a date
/// in the past means no wait.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_http_date(value)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// Seconds since the epoch of an IMF-fixdate (`Wed, 21 Oct 2015 07:28:00
/// GMT`). The obsolete RFC 850 and asctime forms are not accepted: no
/// registry sends them, and the caller falls back to its own backoff.
pub fn parse_http_date(text: &str) -> Option<u64> {
    const IMF_FIXDATE: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(text, IMF_FIXDATE).ok()?;
    u64::try_from(at.assume_utc().unix_timestamp()).ok()
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
            max_elapsed: Duration::from_secs(300),
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

    /// An error whose message and source chain are given.
    #[derive(Debug)]
    struct Chain(&'static str, Option<Box<Chain>>);

    impl std::fmt::Display for Chain {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Chain {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|c| c as _)
        }
    }

    #[test]
    fn a_host_that_does_not_exist_is_told_from_a_resolver_that_cannot_answer() {
        let chain = |last: &'static str| {
            Chain(
                "client error (Connect)",
                Some(Box::new(Chain(
                    "dns error",
                    Some(Box::new(Chain(last, None))),
                ))),
            )
        };
        for unknown in [
            "failed to lookup address information: Name or service not known",
            "failed to lookup address information: No address associated with hostname",
            "failed to lookup address information: nodename nor servname provided, or not known",
        ] {
            assert!(is_unknown_host(&chain(unknown)), "{unknown}");
        }
        for other in [
            "failed to lookup address information: Temporary failure in name resolution",
            "Connection refused (os error 111)",
        ] {
            assert!(!is_unknown_host(&chain(other)), "{other}");
        }
    }

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
        assert_eq!(retry_after(&headers), Some(Duration::ZERO), "in the past");
        headers.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
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

    #[test]
    fn http_dates_are_parsed() {
        // `date -u -d @1445412480 -R` gives the same instant.
        assert_eq!(
            parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(1_445_412_480)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2028 23:59:59 GMT"),
            Some(1_835_481_599)
        );
        for bad in [
            "",
            "21 Oct 2015 07:28:00 GMT",
            "Wed, 21 Foo 2015 07:28:00 GMT",
            "Wed, 21 Oct 2015 07:28:00 PST",
            "Wed, 21 Oct 2015 25:28:00 GMT",
            "Wednesday, 21-Oct-15 07:28:00 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
        let future = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 30;
        let text = format_http_date_for_test(future);
        let mut headers = HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, text.parse().unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(
            wait.as_secs() >= 28 && wait.as_secs() <= 30,
            "{text}: {wait:?}"
        );
    }

    /// `date -u -R`-style formatting through the `date` command, so the
    /// parser is checked against an independent implementation.
    fn format_http_date_for_test(secs: u64) -> String {
        let out = std::process::Command::new("date")
            .args([
                "-u",
                "-d",
                &format!("@{secs}"),
                "+%a, %d %b %Y %H:%M:%S GMT",
            ])
            .env("LC_ALL", "C")
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// A server that reads the request and closes without answering (a
    /// load balancer dropping an idle connection): the HEAD's EOF is
    /// transient.
    #[tokio::test]
    async fn a_connection_closed_before_the_answer_is_transient() {
        use std::io::Read as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            drop(conn);
        });
        let err = reqwest::Client::new()
            .head(format!("http://127.0.0.1:{port}/v2/a/blobs/x"))
            .send()
            .await
            .unwrap_err();
        server.join().unwrap();
        assert!(is_transient_error(&err), "{err:?}");
        assert!(!is_certificate_error(&err));
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
