//! The HTTP routes. Handlers are thin: they check who asks ([`auth`]), parse
//! the query ([`query`]), call the [`Collector`] (store reads on a read
//! connection, off the async workers: [`read`]) and write the answer. Every
//! refusal is one [`ApiError`]: a status and an [`ErrorBody`].

mod admin;
pub mod auth;
mod hall;
mod ingest;
mod ledger;
pub mod query;
mod tenants;

use std::sync::Arc;

use axum::extract::State as Extract;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dcwatt_wire::{ErrorBody, BATCHES_PATH};

use crate::app::Collector;
use crate::ingest::Rejection;
use crate::store::{Store, StoreError};

pub use query::{MAX_EXCURSIONS, MAX_INSTANT_MS, MAX_SPAN_MS, MAX_STEPS, MIN_INSTANT_MS};

/// The router over the collector.
pub fn router(collector: Arc<Collector>) -> Router {
    Router::new()
        .route(BATCHES_PATH, post(ingest::post_batch))
        .route("/metrics", get(hall::metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/summary", get(hall::summary))
        .route("/v1/pue", get(hall::pue_period))
        .route("/v1/reports/efficiency", get(hall::efficiency_report))
        .route("/v1/tenants/{tenant}/energy", get(tenants::energy))
        .route("/v1/tenants/{tenant}/statement", get(tenants::statement))
        .route("/v1/tenants/{tenant}/excursions", get(tenants::excursions))
        .route("/v1/ledger/verify", get(admin::ledger_verify))
        .route("/v1/ledger/public-key", get(ledger::public_key))
        .route("/v1/ledger/checkpoints", get(ledger::checkpoints))
        .route("/v1/ledger/consistency", get(ledger::consistency))
        .route("/v1/admin/leases/reload", post(admin::reload_leases))
        .route("/v1/admin/gpus/{uuid}/release", post(admin::release_gpu))
        .with_state(collector)
}

/// A refused request: its status and the [`ErrorBody`] it answers with
/// (with `Retry-After` when rate limited).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    retry_after_s: Option<u64>,
}

impl ApiError {
    /// `status` with `text` as the error.
    pub fn new(status: StatusCode, text: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                error: text.into(),
                last_seq: None,
            },
            retry_after_s: None,
        }
    }

    /// A 400 with `text`.
    pub fn bad_request(text: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, text)
    }

    /// A 401 with `text`.
    pub fn unauthorized(text: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, text)
    }

    /// A 503 with `text`.
    pub fn unavailable(text: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, text)
    }

    /// The status it answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> ApiError {
        let status = match &r {
            Rejection::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Rejection::Forbidden(_) => StatusCode::FORBIDDEN,
            Rejection::Invalid(_) => StatusCode::BAD_REQUEST,
            Rejection::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Rejection::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Rejection::TooManyRequests { retry_after_s, .. } => {
                let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, r.to_string());
                e.retry_after_s = Some(*retry_after_s);
                return e;
            }
            Rejection::Conflict { error, last_seq } => {
                let mut e = ApiError::new(StatusCode::CONFLICT, error.clone());
                e.body.last_seq = Some(*last_seq);
                return e;
            }
        };
        ApiError::new(status, r.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self.retry_after_s {
            Some(s) => (
                self.status,
                [(header::RETRY_AFTER, s.to_string())],
                Json(self.body),
            )
                .into_response(),
            None => (self.status, Json(self.body)).into_response(),
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

/// Runs `f` on a read connection ([`Collector::with_reader`]) on a blocking
/// thread: the committer neither waits for it nor holds it up. A store
/// error is a 503.
pub async fn read<T: Send + 'static>(
    collector: &Arc<Collector>,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let c = Arc::clone(collector);
    match tokio::task::spawn_blocking(move || c.with_reader(f)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ApiError::unavailable(format!("store: {e}"))),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the store failed: {e}"),
        )),
    }
}

/// `GET /readyz`: 200 once the state is loaded and the committer runs, else 503.
async fn readyz(Extract(collector): Extract<Arc<Collector>>) -> Response {
    if collector.is_ready() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: state not loaded or committer not running\n",
        )
            .into_response()
    }
}

#[cfg(test)]
mod readiness_tests {
    use super::*;

    async fn status(c: &Arc<Collector>) -> StatusCode {
        readyz(Extract(Arc::clone(c))).await.status()
    }

    #[tokio::test]
    async fn readyz_follows_the_committer() {
        let site = crate::config::Config::from_toml("")
            .unwrap()
            .build()
            .unwrap();
        let c = Collector::open(site).unwrap();
        assert_eq!(status(&c).await, StatusCode::SERVICE_UNAVAILABLE);
        let jobs = c.start().unwrap();
        while !c.is_ready() {
            tokio::task::yield_now().await;
        }
        assert_eq!(status(&c).await, StatusCode::OK);
        jobs.stop();
        assert_eq!(status(&c).await, StatusCode::SERVICE_UNAVAILABLE);
    }
}
