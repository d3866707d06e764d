//! `POST /v1/batches`: an agent's batch, acknowledged once it is written.

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::State as Extract;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dcwatt_wire::binary::Encoding;
use dcwatt_wire::time::now_ms;
use dcwatt_wire::BatchAck;

use super::auth::AgentAuth;
use crate::app::{Applied, Collector};
use crate::ingest::{self, Rejection};

pub(super) async fn post_batch(
    Extract(collector): Extract<Arc<Collector>>,
    agent: Result<AgentAuth, Rejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = std::time::Instant::now();
    let accepted = match agent {
        Ok(AgentAuth(agent)) => accept_batch(&collector, &agent, &headers, body).await,
        Err(r) => Err(r),
    };
    let response = match accepted {
        Ok(ack) => Json(ack).into_response(),
        Err(rejection) => {
            collector.count_batch(rejection_label(&rejection));
            tracing::debug!(error = %rejection, "Batch rejected.");
            rejection.into_response()
        }
    };
    collector.ingest_latency().observe(started.elapsed());
    response
}

fn rejection_label(r: &Rejection) -> &'static str {
    match r {
        Rejection::Unauthorized(_) => "unauthorized",
        Rejection::Forbidden(_) => "forbidden",
        Rejection::Invalid(_) => "invalid",
        Rejection::TooLarge(_) => "too_large",
        Rejection::UnsupportedMediaType(_) => "unsupported_media_type",
        Rejection::Conflict { .. } => "conflict",
        Rejection::Unavailable(_) => "unavailable",
        Rejection::Timeout(_) => "timeout",
        Rejection::TooManyRequests { .. } => "rate_limited",
    }
}

async fn accept_batch(
    collector: &Arc<Collector>,
    agent: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<BatchAck, Rejection> {
    let site = collector.site();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(encoding) = Encoding::of_content_type(content_type) else {
        return Err(Rejection::UnsupportedMediaType(format!(
            "content-type must be {} or {}, not {content_type:?}",
            Encoding::Json.content_type(),
            Encoding::Binary.content_type()
        )));
    };
    collector
        .take_token(agent)
        .map_err(|retry_after_s| Rejection::TooManyRequests {
            error: format!(
                "agent {agent:?} posts more than {} batches per second",
                site.agent_rate
            ),
            retry_after_s,
        })?;
    let bytes = tokio::time::timeout(site.request_timeout, to_bytes(body, site.max_body_bytes))
        .await
        .map_err(|_| {
            Rejection::Timeout(format!(
                "the body did not arrive within {} s",
                site.request_timeout.as_secs_f64()
            ))
        })?
        .map_err(|_| {
            Rejection::TooLarge(format!("body larger than {} bytes", site.max_body_bytes))
        })?;
    let now = now_ms();
    let batch = ingest::decode_as(encoding, &bytes, agent, site, now)?;
    // A resend of a batch that is applied but not yet committed waits for its
    // group's outcome: a duplicate is answered only for what is durable.
    let deadline = tokio::time::Instant::now() + site.request_timeout;
    let (accepted, written) = loop {
        let committed = collector.committed();
        match collector.apply_batch(&batch, agent, now) {
            Applied::Queued { accepted, written } => break (accepted, written),
            Applied::Answer(a) => return a,
            Applied::Wait => {
                if tokio::time::timeout_at(deadline, committed).await.is_err() {
                    return Err(Rejection::Unavailable(format!(
                        "agent {agent:?}'s earlier batches are still being written; send again"
                    )));
                }
            }
        }
    };
    // Acknowledged only once the transaction that holds it committed.
    let written = written
        .await
        .unwrap_or_else(|_| Err("the collector is stopping".into()));
    if let Err(e) = written {
        return Err(Rejection::Unavailable(format!(
            "the collector could not store the batch: {e}"
        )));
    }
    Ok(BatchAck {
        accepted,
        duplicate: false,
        last_seq: batch.seq,
    })
}
