//! The ledger's public proofs over HTTP: `GET /v1/ledger/public-key`
//! (open), `GET /v1/ledger/checkpoints` and `GET /v1/ledger/consistency`
//! (any tenant token or the operator's, [`LedgerReader`]).

use std::sync::Arc;

use axum::extract::{Query, State as Extract};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use dcwatt_verify::check::ConsistencyProof;
use serde::Deserialize;

use super::auth::LedgerReader;
use super::query::ms_or_rfc3339;
use super::{read, ApiError};
use crate::app::Collector;
use crate::transparency::MAX_CHECKPOINTS;

fn error400(text: &str) -> Response {
    ApiError::bad_request(text).into_response()
}

/// `GET /v1/ledger/public-key`: the checkpoints' Ed25519 public key (open to
/// anyone: it is public). 404 when the collector signs nothing.
pub(super) async fn public_key(Extract(collector): Extract<Arc<Collector>>) -> Response {
    match &collector.site().ledger_key {
        Some(key) => Json(serde_json::json!({
            "algorithm": "ed25519",
            "public_key": hex::encode(key.verifying_key().to_bytes()),
            "collector_id": collector.site().collector_id,
        }))
        .into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "no [ledger] signing_key_file: this collector signs no checkpoints",
        )
        .into_response(),
    }
}

/// `GET /v1/ledger/checkpoints` query: both optional.
#[derive(Deserialize)]
pub(super) struct CheckpointQuery {
    from: Option<String>,
    to: Option<String>,
}

/// `GET /v1/ledger/checkpoints?from=…&to=…`: the signed checkpoints whose
/// hour is in `[from, to)` (default: all), oldest first, at most
/// [`MAX_CHECKPOINTS`] (`more: true` when cut: ask again from the last hour + 1).
pub(super) async fn checkpoints(
    Extract(collector): Extract<Arc<Collector>>,
    _: LedgerReader,
    query: Result<Query<CheckpointQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error400("query: from and to are instants");
    };
    let from = match q
        .from
        .as_deref()
        .map(|t| ms_or_rfc3339("from", t))
        .transpose()
    {
        Ok(v) => v.unwrap_or(i64::MIN),
        Err(r) => return r.into_response(),
    };
    let to = match q.to.as_deref().map(|t| ms_or_rfc3339("to", t)).transpose() {
        Ok(v) => v.unwrap_or(i64::MAX),
        Err(r) => return r.into_response(),
    };
    if to < from {
        return error400("to: must not be before from");
    }
    let list = read(&collector, move |store| {
        store.checkpoints(from, to, MAX_CHECKPOINTS + 1)
    })
    .await;
    match list {
        Ok(mut list) => {
            let more = list.len() > MAX_CHECKPOINTS;
            list.truncate(MAX_CHECKPOINTS);
            Json(serde_json::json!({
                "collector_id": collector.site().collector_id,
                "public_key": collector.site().ledger_key.as_ref().map(|k| hex::encode(k.verifying_key().to_bytes())),
                "checkpoints": list,
                "more": more,
            }))
            .into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /v1/ledger/consistency` query.
#[derive(Deserialize)]
pub(super) struct ConsistencyQuery {
    from_size: Option<String>,
    to_size: Option<String>,
}

/// A size of the query: a whole number (400 naming the parameter otherwise).
fn size_param(key: &str, text: Option<&str>) -> Result<u64, ApiError> {
    let text = text.ok_or_else(|| ApiError::bad_request(format!("{key}: missing")))?;
    text.parse::<u64>()
        .map_err(|_| ApiError::bad_request(format!("{key}: {text:?} is not a whole number")))
}

/// `GET /v1/ledger/consistency?from_size=M&to_size=N`: the RFC 9162
/// consistency proof from the tree of M rows to the tree of N rows
/// (`1 ≤ M ≤ N ≤` the tree's size), as [`ConsistencyProof`].
pub(super) async fn consistency(
    Extract(collector): Extract<Arc<Collector>>,
    _: LedgerReader,
    query: Result<Query<ConsistencyQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error400("query: from_size and to_size are whole numbers");
    };
    let (from, to) = match (
        size_param("from_size", q.from_size.as_deref()),
        size_param("to_size", q.to_size.as_deref()),
    ) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(r), _) | (_, Err(r)) => return r.into_response(),
    };
    if from == 0 {
        return error400("from_size: must be at least 1");
    }
    if from > to {
        return error400("from_size: must be at most to_size");
    }
    // The tree only grows: a size read first stays provable after it.
    let answer = read(&collector, move |store| {
        let size = store.tree_head()?.0;
        if to > size {
            return Ok(Err(ApiError::bad_request(format!(
                "to_size: must be at most the tree's size, {size}"
            ))));
        }
        store.consistency_proof(from, to).map(Ok)
    })
    .await;
    match answer {
        Ok(Ok(proof)) => Json(ConsistencyProof {
            from_size: from,
            to_size: to,
            proof: proof.iter().map(hex::encode).collect(),
        })
        .into_response(),
        Ok(Err(e)) | Err(e) => e.into_response(),
    }
}
