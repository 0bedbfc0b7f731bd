//! OAuth2 client credentials with a cached token.
//!
//! One refresh at a time: the cache sits behind an async mutex that is held while a token is
//! fetched, so a hundred tasks that find it stale cause one token request, and the rest reuse
//! its answer. A 401 invalidates only the token that was refused (by generation), so many
//! requests refused with the same token trigger one refresh, not many.

use std::time::Duration;

use reqwest::header::HeaderValue;
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::body::{read_capped, size, BodyError, MAX_TOKEN_BODY};
use super::path::SEGMENT;
use super::retry::{classify_status, classify_transport, Verdict};
use super::GraphError;
use crate::secret::Secret;

const SCOPE: &str = "https://graph.microsoft.com/.default";

/// Entra's tokens live about an hour; a longer `expires_in` is believed up to a day, so a broken
/// or hostile answer can neither keep a token forever nor overflow the refresh instant.
const LONGEST_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A token as the `Authorization` header that carries it, built once per token rather than once
/// per request. The header value is marked sensitive: its `Debug` shows no token.
#[derive(Clone)]
pub struct BearerToken {
    pub authorization: HeaderValue,
    pub generation: u64,
}

struct Cached {
    authorization: HeaderValue,
    refresh_at: Instant,
    generation: u64,
}

pub struct TokenSource {
    http: reqwest::Client,
    token_url: String,
    client_id: String,
    client_secret: Secret,
    /// Refresh this long before expiry so no request leaves with a token about to lapse.
    margin: Duration,
    cache: Mutex<Option<Cached>>,
    generations: std::sync::atomic::AtomicU64,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct TokenErrorAnswer {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

impl TokenSource {
    pub fn new(
        http: reqwest::Client,
        login_base_url: &str,
        tenant_id: &str,
        client_id: &str,
        client_secret: Secret,
        margin: Duration,
    ) -> Self {
        let tenant = percent_encoding::utf8_percent_encode(tenant_id, SEGMENT);
        TokenSource {
            http,
            token_url: format!(
                "{}/{tenant}/oauth2/v2.0/token",
                login_base_url.trim_end_matches('/')
            ),
            client_id: client_id.to_owned(),
            client_secret,
            margin,
            cache: Mutex::new(None),
            generations: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// A valid token, fetched only when the cached one is missing or close to expiry.
    pub async fn bearer(&self) -> Result<BearerToken, GraphError> {
        let mut cache = self.cache.lock().await;
        if let Some(cached) = cache.as_ref() {
            if Instant::now() < cached.refresh_at {
                return Ok(BearerToken {
                    authorization: cached.authorization.clone(),
                    generation: cached.generation,
                });
            }
        }
        let (authorization, lifetime) = self.fetch().await?;
        let generation = self
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        // A very short lifetime still gets used once rather than refreshed in a loop.
        let usable = lifetime.saturating_sub(self.margin).max(lifetime / 2);
        let now = Instant::now();
        *cache = Some(Cached {
            authorization: authorization.clone(),
            // Past the clock's range (not with LONGEST_LIFETIME): refresh at the next request.
            refresh_at: now.checked_add(usable).unwrap_or(now),
            generation,
        });
        tracing::debug!(
            generation,
            lifetime_s = lifetime.as_secs(),
            "fetched a Graph access token"
        );
        Ok(BearerToken {
            authorization,
            generation,
        })
    }

    /// Graph refused the token of `generation`: drop it, unless a newer one is already cached.
    pub async fn invalidate(&self, generation: u64) {
        let mut cache = self.cache.lock().await;
        if cache.as_ref().is_some_and(|c| c.generation == generation) {
            *cache = None;
        }
    }

    async fn fetch(&self) -> Result<(HeaderValue, Duration), GraphError> {
        let response = self.ask_for_token().await?;
        let status = response.status();
        if status.is_redirection() {
            return Err(GraphError::Token {
                transient: false,
                reason: self.refused_redirect(status, response.headers()),
            });
        }
        let body = token_body(response, status).await?;
        // No Retry-After is read here, so the cap on holding one does not matter.
        match classify_status(status, None, Duration::ZERO) {
            Verdict::Success => token_from(&body),
            verdict => Err(token_refused(status, &verdict, &body)),
        }
    }

    /// The client-credentials request; a failure to send it is classified as a transport error.
    async fn ask_for_token(&self) -> Result<reqwest::Response, GraphError> {
        let form = [
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose()),
            ("scope", SCOPE),
            ("grant_type", "client_credentials"),
        ];
        self.http
            .post(&self.token_url)
            .form(&form)
            .send()
            .await
            .map_err(|error| {
                let (transient, reason) = match classify_transport(&error) {
                    Verdict::GiveUp(reason) => (false, reason),
                    Verdict::Backoff(reason) => (true, reason),
                    other => (true, format!("{other:?}")),
                };
                GraphError::Token { transient, reason }
            })
    }

    /// Why a redirect is not followed, naming where it pointed by host alone: the rest of a
    /// Location is the other side's to fill, and this text goes into logs.
    fn refused_redirect(
        &self,
        status: reqwest::StatusCode,
        headers: &reqwest::header::HeaderMap,
    ) -> String {
        let target = headers
            .get(reqwest::header::LOCATION)
            .and_then(|location| location.to_str().ok())
            .and_then(|location| url::Url::parse(&self.token_url).ok()?.join(location).ok())
            .and_then(|url| {
                let host = url.host_str()?.to_owned();
                Some(match url.port() {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                })
            })
            .unwrap_or_else(|| "an unreadable location".to_owned());
        format!(
            "HTTP {} redirect to {target} not followed: the token request carries the client secret; point --login-url at the login endpoint itself",
            status.as_u16()
        )
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// The token endpoint's answer, within [`MAX_TOKEN_BODY`]; an unreadable body counts as empty,
/// so that the status alone says what happened.
async fn token_body(
    response: reqwest::Response,
    status: reqwest::StatusCode,
) -> Result<Vec<u8>, GraphError> {
    match read_capped(response, MAX_TOKEN_BODY).await {
        Ok(body) => Ok(body),
        Err(BodyError::TooLarge) => Err(GraphError::Token {
            transient: false,
            reason: format!(
                "HTTP {}: answer larger than {}",
                status.as_u16(),
                size(MAX_TOKEN_BODY)
            ),
        }),
        Err(BodyError::Read(_)) => Ok(Vec::new()),
    }
}

/// A granted token as its `Authorization` header, and how long to keep it (Graph's
/// `expires_in`, a number or a string, capped). A token that cannot travel in a header is
/// refused here, as an unreadable answer is, rather than failing each request sent with it.
fn token_from(body: &[u8]) -> Result<(HeaderValue, Duration), GraphError> {
    let answer: TokenAnswer = serde_json::from_slice(body).map_err(|e| GraphError::Token {
        transient: true,
        reason: format!("unreadable token answer: {e}"),
    })?;
    let seconds = answer
        .expires_in
        .as_ref()
        .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
        .unwrap_or(3599);
    let lifetime = Duration::from_secs(seconds).min(LONGEST_LIFETIME);
    let mut authorization = HeaderValue::try_from(format!("Bearer {}", answer.access_token))
        .map_err(|_| GraphError::Token {
            transient: true,
            reason: "the granted access token holds characters a header cannot carry".into(),
        })?;
    authorization.set_sensitive(true);
    Ok((authorization, lifetime))
}

/// Why no token was granted. The AADSTS error text names the problem (bad secret, unknown
/// tenant) and never echoes the secret, so it is safe and useful to pass on.
fn token_refused(status: reqwest::StatusCode, verdict: &Verdict, body: &[u8]) -> GraphError {
    let detail: TokenErrorAnswer = serde_json::from_slice(body).unwrap_or_default();
    let transient = matches!(
        verdict,
        Verdict::Backoff(_) | Verdict::RetryAfter(_) | Verdict::WaitTooLong(_)
    );
    GraphError::Token {
        transient,
        reason: format!(
            "HTTP {}: {} {}",
            status.as_u16(),
            detail.error.unwrap_or_default(),
            first_line(&detail.error_description.unwrap_or_default())
        )
        .trim()
        .to_owned(),
    }
}
