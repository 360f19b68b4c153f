//! The sidecar's HTTP side (docs/api.md): liveness, readiness, its own
//! metrics, the status of every target, the stored incidents, and the write
//! endpoints (deployments, answers, suppressions, declarations) behind a
//! bearer token. Built by `app()` so tests can call it without a socket;
//! `listen::serve` serves it within limits on open connections and time.

pub mod listen;
pub mod ready;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::engine::input::Event;
use crate::engine::policy::Tier;
use crate::runtime::status::StatusBoard;
use crate::runtime::target::Input;
use crate::store::{AnswerKind, NewAnswer, Store, StoreError};
use crate::telemetry::Telemetry;

/// Each watched target's inbox, by target name. Shared: targets come and go
/// with their policy files.
#[derive(Clone, Default)]
pub struct Inboxes(Arc<RwLock<HashMap<String, mpsc::Sender<Input>>>>);

impl Inboxes {
    pub fn insert(&self, target: String, inbox: mpsc::Sender<Input>) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(target, inbox);
    }

    pub fn remove(&self, target: &str) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(target);
    }

    /// The target an event is for: named, or the only one.
    fn find(&self, target: Option<&str>) -> Result<(String, mpsc::Sender<Input>), ApiError> {
        let inboxes = self.0.read().unwrap_or_else(|e| e.into_inner());
        let found = match target {
            Some(name) => inboxes.get_key_value(name),
            None if inboxes.len() == 1 => inboxes.iter().next(),
            None if inboxes.is_empty() => None,
            None => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "\"target\" is required (service/environment) when rollwatch watches several",
                ));
            }
        };
        found
            .map(|(name, inbox)| (name.clone(), inbox.clone()))
            .ok_or_else(|| {
                let mut known: Vec<&str> = inboxes.keys().map(String::as_str).collect();
                known.sort_unstable();
                error(
                    StatusCode::NOT_FOUND,
                    match target {
                        Some(name) if !known.is_empty() => {
                            format!("no target \"{name}\", expected one of {}", known.join(", "))
                        }
                        _ => "no target is watched".to_string(),
                    },
                )
            })
    }
}

/// Bodies of write requests are small JSON objects.
pub const MAX_BODY: usize = 64 * 1024;

/// Everything the handlers share.
#[derive(Clone)]
pub struct Api {
    pub telemetry: Arc<Telemetry>,
    pub status: StatusBoard,
    /// `None` in a dry run: nothing is stored.
    pub store: Option<Store>,
    /// Each target loop's inbox for events (deployments, declarations, suppressions).
    pub inputs: Inboxes,
    /// From `ROLLWATCH_API_TOKEN`; without one the write endpoints are off.
    /// Surrounding whitespace is not part of it (a secret file's newline).
    pub token: Option<String>,
    /// Reads (`GET /api/...`) need the token too: rollwatch listens beyond
    /// loopback (`reads_need_token(address)`). `/healthz` and `/metrics`
    /// stay open for probes and Prometheus.
    pub reads_need_token: bool,
    /// What `GET /readyz` answers; while shutting down, writes are refused.
    pub readiness: ready::Readiness,
}

/// Whether the API's reads need the token on `address`, the bound one: they
/// show incidents, versions and answers, open to this host only on loopback
/// (an unspecified address, `0.0.0.0`, is every interface).
pub fn reads_need_token(address: std::net::SocketAddr) -> bool {
    !address.ip().to_canonical().is_loopback()
}

pub fn app(api: Api) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
        .route("/api/v1/incidents", get(incidents))
        .route("/api/v1/incidents/{id}", get(incident))
        .route("/api/v1/incidents/{id}/{answer}", post(answer))
        .route("/api/v1/deployments", post(deployment))
        .route("/api/v1/suppressions", post(suppression))
        .route("/api/v1/declare", post(declare))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(close_after_refused_body))
        .layer(axum::middleware::from_fn_with_state(
            api.readiness.clone(),
            refuse_writes_when_stopping,
        ))
        .with_state(Arc::new(api))
}

/// Once shutting down, the target loops take no more events: a write would
/// be accepted and then lost, so it is refused (503) instead.
async fn refuse_writes_when_stopping(
    State(readiness): State<ready::Readiness>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if request.method() == axum::http::Method::POST && readiness.is_stopping() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "rollwatch is shutting down",
        )
        .into_response();
    }
    next.run(request).await
}

/// A body refused as too large is not read to its end, so the connection
/// cannot carry another request: say so (`Connection: close`), or a client
/// that pools connections sends its next request on a dead one and gets an
/// incomplete message.
async fn close_after_refused_body(
    mut response: axum::response::Response,
) -> axum::response::Response {
    if response.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        response.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

type Shared = State<Arc<Api>>;

async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 `{"ready": true}`, or 503 `{"ready": false, "reason": ...}`.
async fn readyz(State(api): Shared) -> Response {
    match api.readiness.check() {
        Ok(()) => axum::Json(serde_json::json!({"ready": true})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"ready": false, "reason": reason})),
        )
            .into_response(),
    }
}

async fn metrics(State(api): Shared) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        api.telemetry.encode(),
    )
}

/// A refused request: its status and what was wrong, sent as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        message: message.into(),
    }
}

type Reply = Result<Response, ApiError>;

fn json_text(text: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
}

async fn status(State(api): Shared, headers: HeaderMap) -> Reply {
    authorize_read(&api, &headers)?;
    // Messages that could not be delivered (and were escalated elsewhere).
    let undelivered = match &api.store {
        Some(store) => match store.failed_notifications(UNDELIVERED_SHOWN).await {
            Ok(failed) => failed,
            Err(e) => {
                tracing::warn!(error = %e, "status: cannot read the undelivered messages");
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    let text = api
        .status
        .to_json_with(&undelivered)
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(json_text(text))
}

/// The newest undelivered messages `GET /api/v1/status` shows.
const UNDELIVERED_SHOWN: i64 = 20;

fn store(api: &Api) -> Result<&Store, ApiError> {
    api.store.as_ref().ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            "a dry run stores no incidents (run without --dry-run)",
        )
    })
}

fn store_error(failure: StoreError) -> ApiError {
    match failure {
        StoreError::NoSuchIncident(id) => error_404(id),
        StoreError::IncidentResolved(id) => error(
            StatusCode::CONFLICT,
            format!("incident {id} is resolved: nothing to answer"),
        ),
        other => {
            tracing::error!(error = %other, "API: the store failed");
            error(StatusCode::SERVICE_UNAVAILABLE, other.to_string())
        }
    }
}

fn error_404(id: i64) -> ApiError {
    error(StatusCode::NOT_FOUND, format!("no incident {id}"))
}

async fn incidents(State(api): Shared, headers: HeaderMap) -> Reply {
    authorize_read(&api, &headers)?;
    let list = store(&api)?
        .list_incidents(200)
        .await
        .map_err(store_error)?;
    Ok(axum::Json(serde_json::json!({ "incidents": list })).into_response())
}

fn parse_id(text: &str) -> Result<i64, ApiError> {
    text.parse::<i64>().map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            format!("\"{text}\" is not an incident id (a number)"),
        )
    })
}

async fn incident(State(api): Shared, Path(id): Path<String>, headers: HeaderMap) -> Reply {
    authorize_read(&api, &headers)?;
    let id = parse_id(&id)?;
    match store(&api)?.incident(id).await.map_err(store_error)? {
        Some(timeline) => Ok(axum::Json(timeline).into_response()),
        None => Err(error_404(id)),
    }
}

/// Writes need `Authorization: Bearer TOKEN`. Without a configured token the
/// write endpoints are off (403); a missing or wrong one is 401, logged
/// without the token.
fn authorize(api: &Api, headers: &HeaderMap, what: &str) -> Result<(), ApiError> {
    let Some(expected) = &api.token else {
        return Err(error(
            StatusCode::FORBIDDEN,
            "write endpoints are off: set ROLLWATCH_API_TOKEN to enable them",
        ));
    };
    check_token(expected, headers, what)
}

/// Reads are open on loopback; elsewhere they need the token, and without
/// one configured they are off (403).
fn authorize_read(api: &Api, headers: &HeaderMap) -> Result<(), ApiError> {
    if !api.reads_need_token {
        return Ok(());
    }
    let Some(expected) = &api.token else {
        return Err(error(
            StatusCode::FORBIDDEN,
            "reads are off: rollwatch listens beyond loopback without ROLLWATCH_API_TOKEN; set it, or listen on 127.0.0.1",
        ));
    };
    check_token(expected, headers, "read")
}

fn check_token(expected: &str, headers: &HeaderMap, what: &str) -> Result<(), ApiError> {
    let given = presented_token(headers);
    if !given.is_some_and(|given| token_matches(given, expected)) {
        tracing::warn!(
            endpoint = what,
            presented = given.is_some(),
            "API: refused a request with a missing or wrong bearer token"
        );
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer ...)",
        ));
    }
    Ok(())
}

/// The token of `Authorization: Bearer TOKEN`; the scheme in any case
/// (RFC 9110 11.1), whitespace around the token ignored.
fn presented_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(|c: char| c.is_ascii_whitespace())?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares trimmed (a token file ends in a newline), in time that depends
/// on neither the contents nor the lengths: digests of equal length are
/// compared whole.
fn token_matches(given: &str, expected: &str) -> bool {
    use sha2::{Digest, Sha256};
    let given = Sha256::digest(given.trim().as_bytes());
    let expected = Sha256::digest(expected.trim().as_bytes());
    given
        .iter()
        .zip(expected.iter())
        .fold(0u8, |differ, (a, b)| differ | (a ^ b))
        == 0
}

/// The body as `T`, or a 400 that says what is wrong with it.
fn body<T: for<'de> Deserialize<'de>>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerBody {
    by: String,
    #[serde(default)]
    note: Option<String>,
}

async fn answer(
    State(api): Shared,
    Path((id, verb)): Path<(String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Reply {
    authorize(&api, &headers, "answer")?;
    let kind = match verb.as_str() {
        "ack" => AnswerKind::Ack,
        "hold" => AnswerKind::Hold,
        "approve" => AnswerKind::Approve,
        other => {
            return Err(error(
                StatusCode::NOT_FOUND,
                format!("unknown answer \"{other}\", expected ack, hold or approve"),
            ));
        }
    };
    let id = parse_id(&id)?;
    let store = store(&api)?;
    let answer: AnswerBody = body(&bytes)?;
    if answer.by.trim().is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "\"by\" must name who answers",
        ));
    }
    match store.incident(id).await.map_err(store_error)? {
        Some(timeline) if timeline.incident.state.is_resolved() => {
            return Err(error(
                StatusCode::CONFLICT,
                format!("incident {id} is resolved: nothing to answer"),
            ));
        }
        Some(_) => {}
        None => return Err(error_404(id)),
    }
    let answer_id = store
        .record_answer(&NewAnswer {
            incident: id,
            kind,
            by: answer.by.clone(),
            at: Utc::now(),
            note: answer.note,
        })
        .await
        .map_err(store_error)?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({
            "incident": id,
            "answer": answer_id,
            "kind": kind.as_str(),
            "by": answer.by,
            "applied": "at the watching target's next poll",
        })),
    )
        .into_response())
}

async fn send(api: &Api, target: Option<&str>, event: Event) -> Reply {
    let (name, inbox) = api.inputs.find(target)?;
    let what = event.name();
    inbox.try_send(Input::Event(event)).map_err(|_| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("target {name} is not taking events right now; try again"),
        )
    })?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({ "target": name, "event": what, "applied": "now" })),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentBody {
    #[serde(default)]
    target: Option<String>,
    version: String,
    #[serde(default)]
    previous: Option<String>,
    #[serde(default)]
    migrations: Vec<String>,
}

async fn deployment(State(api): Shared, headers: HeaderMap, bytes: Bytes) -> Reply {
    authorize(&api, &headers, "deployments")?;
    let deployment: DeploymentBody = body(&bytes)?;
    if deployment.version.trim().is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "\"version\" must not be empty",
        ));
    }
    let event = Event::Deploy {
        version: Some(deployment.version),
        previous: deployment.previous,
        migrations: deployment.migrations,
    };
    send(&api, deployment.target.as_deref(), event).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SuppressionBody {
    #[serde(default)]
    target: Option<String>,
    rule: String,
    until: DateTime<Utc>,
    reason: String,
}

async fn suppression(State(api): Shared, headers: HeaderMap, bytes: Bytes) -> Reply {
    authorize(&api, &headers, "suppressions")?;
    let s: SuppressionBody = body(&bytes)?;
    if s.until <= Utc::now() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "\"until\" must be in the future",
        ));
    }
    if s.reason.trim().is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "\"reason\" must say why (the known issue)",
        ));
    }
    let event = Event::Suppress {
        rule: s.rule,
        until: s.until,
        reason: s.reason,
    };
    send(&api, s.target.as_deref(), event).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeclareBody {
    #[serde(default)]
    target: Option<String>,
    tier: String,
    reason: String,
    #[serde(default)]
    component: Option<String>,
}

async fn declare(State(api): Shared, headers: HeaderMap, bytes: Bytes) -> Reply {
    authorize(&api, &headers, "declare")?;
    let d: DeclareBody = body(&bytes)?;
    // Only a tier that acts can be declared: `watch` and `ignore` would
    // open an incident that nothing ever acts on or ends.
    let Some(tier) = Tier::parse(&d.tier).filter(|t| matches!(t, Tier::Immediate | Tier::Consider))
    else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!(
                "unknown tier \"{}\", expected immediate or consider",
                d.tier
            ),
        ));
    };
    if d.reason.trim().is_empty() {
        return Err(error(StatusCode::BAD_REQUEST, "\"reason\" must say why"));
    }
    let event = Event::Declare {
        tier,
        reason: d.reason,
        component: d.component,
    };
    send(&api, d.target.as_deref(), event).await
}
