//! Authentication: `WWW-Authenticate` challenges (RFC 7235), bearer tokens
//! per scope with their expiry, and the token request itself (Basic
//! credentials, an identity token, or anonymous).
//!
//! The client (`client.rs`) decides when to ask: it learns the challenge by
//! pinging `/v2/`, keeps one [`TokenCache`] per registry, and drops a token
//! when the registry answers 401. Where credentials may be sent is checked
//! here: a token realm on plain HTTP gets them only when the registry itself
//! is allowed plain HTTP.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::StatusCode;
use serde::Deserialize;
use url::Url;

use super::credentials::{CredentialKind, Credentials, Secret};
use super::error::{hint_for, parse_oci_errors, RedactedUrl, RegistryError, ERROR_BODY_LIMIT};

/// One challenge: a scheme (lower-cased) and its parameters (names
/// lower-cased).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: HashMap<String, String>,
}

/// Parses a `WWW-Authenticate` value: several challenges, quoted values that
/// may hold commas and escaped quotes.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let chars: Vec<char> = header.chars().collect();
    let mut i = 0;
    let mut out: Vec<Challenge> = Vec::new();
    let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~/".contains(c);
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && (chars[*i] == ' ' || chars[*i] == '\t') {
            *i += 1;
        }
    };
    let read_token = |i: &mut usize| {
        *i = (*i).min(chars.len());
        let start = *i;
        while *i < chars.len() && is_tchar(chars[*i]) {
            *i += 1;
        }
        chars[start..*i].iter().collect::<String>()
    };
    while i < chars.len() {
        // Between challenges: whitespace and commas.
        while i < chars.len() && (chars[i] == ' ' || chars[i] == '\t' || chars[i] == ',') {
            i += 1;
        }
        let scheme = read_token(&mut i);
        if scheme.is_empty() {
            // Not a token: skip one character so the loop always advances.
            i += 1;
            continue;
        }
        let mut challenge = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: HashMap::new(),
        };
        loop {
            skip_ws(&mut i);
            while i < chars.len() && chars[i] == ',' {
                i += 1;
                skip_ws(&mut i);
            }
            let mark = i;
            let name = read_token(&mut i);
            if name.is_empty() {
                break;
            }
            skip_ws(&mut i);
            if i >= chars.len() || chars[i] != '=' {
                // A bare token: the next challenge's scheme.
                i = mark;
                break;
            }
            i += 1;
            skip_ws(&mut i);
            let value = if i < chars.len() && chars[i] == '"' {
                i += 1;
                let mut v = String::new();
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    v.push(chars[i]);
                    i += 1;
                }
                i = (i + 1).min(chars.len()); // the closing quote
                v
            } else {
                read_token(&mut i)
            };
            challenge.params.insert(name.to_ascii_lowercase(), value);
        }
        out.push(challenge);
    }
    out
}

/// How a registry wants to be talked to, learnt from `/v2/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `/v2/` answered 200: no auth needed.
    None,
    Basic,
    Bearer {
        realm: Url,
        service: Option<String>,
    },
}

impl Scheme {
    /// The scheme a set of challenges asks for: Bearer when offered, else
    /// Basic.
    pub fn from_challenges(challenges: &[Challenge]) -> Option<Scheme> {
        if let Some(c) = challenges.iter().find(|c| c.scheme == "bearer") {
            let realm = c.params.get("realm").and_then(|r| Url::parse(r).ok())?;
            return Some(Scheme::Bearer {
                realm,
                service: c.params.get("service").cloned(),
            });
        }
        challenges
            .iter()
            .any(|c| c.scheme == "basic")
            .then_some(Scheme::Basic)
    }
}

/// `repository:<repo>:<actions>` scopes joined into a cache key.
pub fn scope_key(scopes: &[String]) -> String {
    scopes.join(" ")
}

/// Access tokens per scope, with their expiry.
#[derive(Default)]
pub struct TokenCache {
    tokens: HashMap<String, (Secret, Instant)>,
}

impl TokenCache {
    /// A token for `scopes` valid for at least `min_valid` more.
    pub fn get(&self, scopes: &[String], min_valid: Duration) -> Option<Secret> {
        let (token, expires) = self.tokens.get(&scope_key(scopes))?;
        (Instant::now() + min_valid < *expires).then(|| token.clone())
    }

    pub fn insert(&mut self, scopes: &[String], token: Secret, lifetime: Duration) {
        self.tokens
            .insert(scope_key(scopes), (token, Instant::now() + lifetime));
    }

    pub fn remove(&mut self, scopes: &[String]) {
        self.tokens.remove(&scope_key(scopes));
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// A token lives 60 s when the answer does not say (distribution spec).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// Asks the realm for a token for `scopes`. `realm_http_allowed`: whether
/// credentials may go to a plain-HTTP realm (only when the registry itself is
/// allowed plain HTTP).
pub async fn fetch_token(
    http: &reqwest::Client,
    registry: &str,
    realm: &Url,
    service: Option<&str>,
    scopes: &[String],
    creds: &Credentials,
    realm_http_allowed: bool,
) -> Result<(Secret, Duration), RegistryError> {
    let redacted = RedactedUrl::new(realm);
    let token_err = |status: Option<StatusCode>, body: &[u8], source: Option<reqwest::Error>| {
        let errors = parse_oci_errors(body);
        let hint = status.and_then(|s| hint_for(registry, s, &errors, creds.source()));
        RegistryError::Token {
            registry: registry.to_owned(),
            realm: redacted.clone(),
            status,
            errors,
            hint,
            source,
        }
    };
    if realm.scheme() != "https" && !realm_http_allowed && !creds.is_anonymous() {
        return Err(RegistryError::Auth {
            registry: registry.to_owned(),
            reason: format!(
                "its token realm `{redacted}` is plain HTTP; credentials are not sent there \
                 (hint: name the registry with `--insecure-registry` if this is intended)"
            ),
        });
    }
    let request = match creds.kind() {
        CredentialKind::IdentityToken(refresh) => {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "refresh_token");
            form.append_pair("refresh_token", refresh.expose());
            if let Some(s) = service {
                form.append_pair("service", s);
            }
            form.append_pair("client_id", "manifold");
            if !scopes.is_empty() {
                form.append_pair("scope", &scopes.join(" "));
            }
            http.post(realm.clone())
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(form.finish())
        }
        kind => {
            let mut url = realm.clone();
            {
                let mut q = url.query_pairs_mut();
                if let Some(s) = service {
                    q.append_pair("service", s);
                }
                for scope in scopes {
                    q.append_pair("scope", scope);
                }
            }
            let rb = http.get(url);
            match kind {
                CredentialKind::Basic { username, password } => {
                    rb.basic_auth(username, Some(password.expose()))
                }
                _ => rb,
            }
        }
    };
    tracing::debug!(realm = %redacted, ?scopes, "token request");
    let resp = request
        .send()
        .await
        .map_err(|e| token_err(None, b"", Some(e)))?;
    let status = resp.status();
    let body = read_limited(resp, ERROR_BODY_LIMIT)
        .await
        .map_err(|e| token_err(Some(status), b"", Some(e)))?;
    if !status.is_success() {
        return Err(token_err(Some(status), &body, None));
    }
    let answer: TokenAnswer =
        serde_json::from_slice(&body).map_err(|_| token_err(Some(status), b"", None))?;
    let token = answer
        .token
        .filter(|t| !t.is_empty())
        .or(answer.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| token_err(Some(status), b"", None))?;
    let lifetime = answer
        .expires_in
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TOKEN_LIFETIME);
    Ok((Secret::new(token), lifetime))
}

/// Reads at most `max` bytes of a body (the rest is dropped).
pub async fn read_limited(
    mut resp: reqwest::Response,
    max: usize,
) -> Result<Bytes, reqwest::Error> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = max.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= max {
            break;
        }
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_challenge_with_quoted_commas() {
        let h = r#"Bearer realm="http://127.0.0.1:1/token",service="test-registry",scope="repository:a/b:pull,push repository:c:pull""#;
        let c = parse_challenges(h);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].params["realm"], "http://127.0.0.1:1/token");
        assert_eq!(c[0].params["service"], "test-registry");
        assert_eq!(
            c[0].params["scope"],
            "repository:a/b:pull,push repository:c:pull"
        );
    }

    #[test]
    fn several_challenges_in_one_header() {
        let h = r#"Basic realm="Registry Realm", Bearer realm = "https://auth.example/token" , service=reg, error="invalid_token",  Negotiate"#;
        let c = parse_challenges(h);
        let schemes: Vec<&str> = c.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["basic", "bearer", "negotiate"]);
        assert_eq!(c[0].params["realm"], "Registry Realm");
        assert_eq!(c[1].params["service"], "reg");
        assert_eq!(c[1].params["error"], "invalid_token");
        assert_eq!(
            Scheme::from_challenges(&c),
            Some(Scheme::Bearer {
                realm: Url::parse("https://auth.example/token").unwrap(),
                service: Some("reg".into())
            })
        );
        let basic = parse_challenges(r#"basic realm="x\"y""#);
        assert_eq!(basic[0].params["realm"], "x\"y");
        assert_eq!(Scheme::from_challenges(&basic), Some(Scheme::Basic));
        assert_eq!(Scheme::from_challenges(&parse_challenges("")), None);
        // Garbage never panics.
        for junk in ["=", "\"", "Bearer realm=\"unterminated", ",,,", "Bearer ="] {
            let _ = parse_challenges(junk);
        }
    }

    #[tokio::test]
    async fn credentials_never_go_to_a_plain_http_realm_unless_allowed() {
        // Port 9 on loopback: if a request were sent it would fail to
        // connect, which is a different error.
        let realm = Url::parse("http://127.0.0.1:9/token").unwrap();
        let creds = Credentials::basic("u", Secret::new("pw"), "test");
        let http = reqwest::Client::new();
        let e = fetch_token(&http, "reg.example", &realm, None, &[], &creds, false)
            .await
            .unwrap_err();
        assert!(matches!(e, RegistryError::Auth { .. }), "{e:?}");
        assert!(e.to_string().contains("plain HTTP"), "{e}");
        let e = fetch_token(&http, "reg.example", &realm, None, &[], &creds, true)
            .await
            .unwrap_err();
        assert!(
            matches!(e, RegistryError::Token { .. }),
            "allowed: it tried: {e:?}"
        );
    }

    #[test]
    fn cache_respects_expiry_margin() {
        let mut cache = TokenCache::default();
        let scopes = vec!["repository:a:pull,push".to_owned()];
        cache.insert(&scopes, Secret::new("t"), Duration::from_secs(30));
        assert!(cache.get(&scopes, Duration::ZERO).is_some());
        assert!(
            cache.get(&scopes, Duration::from_secs(60)).is_none(),
            "a streamed upload wants a token that lasts"
        );
        assert!(cache.get(&["other".to_owned()], Duration::ZERO).is_none());
        cache.remove(&scopes);
        assert!(cache.get(&scopes, Duration::ZERO).is_none());
    }
}
