//! The operator's routes: `POST /v1/admin/leases/reload`,
//! `POST /v1/admin/gpus/{uuid}/release` and `GET /v1/ledger/verify`.

use std::sync::Arc;

use axum::extract::{Path, State as Extract};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::auth::OperatorAuth;
use super::{read, ApiError};
use crate::app::{Collector, ReleaseError};
use crate::ingest;

/// Re-reads the leases from the config file; see [`Collector::reload_leases`].
pub(super) async fn reload_leases(
    Extract(collector): Extract<Arc<Collector>>,
    _: OperatorAuth,
) -> Response {
    match collector.reload_leases() {
        Ok(n) => Json(serde_json::json!({ "leases": n })).into_response(),
        Err(e) => ApiError::bad_request(e).into_response(),
    }
}

/// `POST /v1/admin/gpus/{uuid}/release`: the GPU moved to another node; the
/// next agent to report it owns it. Its energy stays.
pub(super) async fn release_gpu(
    Extract(collector): Extract<Arc<Collector>>,
    _: OperatorAuth,
    Path(uuid): Path<String>,
) -> Response {
    if let Err(why) = ingest::check_id(&uuid) {
        return ApiError::bad_request(format!("uuid: {why}")).into_response();
    }
    let (owner, written) = match collector.release_gpu(&uuid) {
        Ok(v) => v,
        Err(ReleaseError::NotOwned) => {
            return ApiError::new(
                StatusCode::NOT_FOUND,
                format!("uuid: no agent owns GPU {uuid:?}"),
            )
            .into_response()
        }
        Err(ReleaseError::Store(e)) => {
            return ApiError::unavailable(format!("store: {e}")).into_response()
        }
    };
    match written.await {
        Ok(Ok(())) => {
            tracing::info!(gpu = %uuid, agent = %owner, "GPU released by the operator.");
            Json(serde_json::json!({ "gpu": uuid, "released_from": owner })).into_response()
        }
        Ok(Err(e)) => ApiError::unavailable(format!("store: {e}")).into_response(),
        Err(_) => ApiError::unavailable("the collector is stopping").into_response(),
    }
}

/// `GET /v1/ledger/verify`: the chain is the operator's to check, even in a
/// lab setup.
pub(super) async fn ledger_verify(
    Extract(collector): Extract<Arc<Collector>>,
    _: OperatorAuth,
) -> Response {
    match read(&collector, |store| store.verify_ledger()).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}
