//! Who asks: extractors that read the `Authorization` header (in one place,
//! [`authorization`]) and check it against the site's tokens before a
//! handler runs. Each refuses with the status and text its routes answer.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};

use super::ApiError;
use crate::app::Collector;
use crate::ingest::{self, Rejection};

/// The `Authorization` header's value, if it is text.
pub fn authorization(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// An agent's token: the agent it names.
pub struct AgentAuth(pub String);

impl FromRequestParts<Arc<Collector>> for AgentAuth {
    type Rejection = Rejection;

    async fn from_request_parts(
        parts: &mut Parts,
        collector: &Arc<Collector>,
    ) -> Result<Self, Self::Rejection> {
        ingest::authenticate_agent(collector.site(), authorization(parts))
            .map(|agent| AgentAuth(agent.to_owned()))
    }
}

/// The operator's token, always (admin routes and the ledger check).
pub struct OperatorAuth;

impl FromRequestParts<Arc<Collector>> for OperatorAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        collector: &Arc<Collector>,
    ) -> Result<Self, Self::Rejection> {
        if ingest::is_operator(collector.site(), authorization(parts)) {
            Ok(OperatorAuth)
        } else {
            Err(ApiError::unauthorized("this needs the operator token"))
        }
    }
}

/// Hall-wide data: the operator's token when an operator is configured,
/// anyone otherwise (a lab setup).
pub struct HallAuth;

impl FromRequestParts<Arc<Collector>> for HallAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        collector: &Arc<Collector>,
    ) -> Result<Self, Self::Rejection> {
        let site = collector.site();
        if site.operator_token.is_none() || ingest::is_operator(site, authorization(parts)) {
            Ok(HallAuth)
        } else {
            Err(ApiError::unauthorized("this needs the operator token"))
        }
    }
}

/// `/metrics`: every tenant's figures are in it, so with an operator
/// configured only the operator and the scrape token read it.
pub struct ScrapeAuth;

impl FromRequestParts<Arc<Collector>> for ScrapeAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        collector: &Arc<Collector>,
    ) -> Result<Self, Self::Rejection> {
        let site = collector.site();
        let auth = authorization(parts);
        if site.operator_token.is_some()
            && !ingest::is_operator(site, auth)
            && !ingest::is_scraper(site, auth)
        {
            return Err(ApiError::unauthorized(
                "/metrics needs the scrape token ([metrics] token_sha256) or the operator token",
            ));
        }
        Ok(ScrapeAuth)
    }
}

/// The ledger's public proofs: any tenant's token or the operator's.
pub struct LedgerReader;

impl FromRequestParts<Arc<Collector>> for LedgerReader {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        collector: &Arc<Collector>,
    ) -> Result<Self, Self::Rejection> {
        let site = collector.site();
        let auth = authorization(parts);
        let token = ingest::bearer(auth).map_err(|e| ApiError::unauthorized(e.to_string()))?;
        if ingest::is_operator(site, auth)
            || site
                .tenant_tokens
                .contains_key(&crate::site::token_hash(token))
        {
            Ok(LedgerReader)
        } else {
            Err(ApiError::unauthorized(
                "this needs a tenant's or the operator's token",
            ))
        }
    }
}

/// The `{tenant}` of a tenant route, read by the operator or by that tenant
/// itself (401/403), and a tenant the site knows (404).
pub struct TenantAuth(pub String);

impl FromRequestParts<Arc<Collector>> for TenantAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        collector: &Arc<Collector>,
    ) -> Result<Self, Self::Rejection> {
        let Path(tenant) = Path::<String>::from_request_parts(parts, collector)
            .await
            .map_err(|e| ApiError::bad_request(format!("tenant: {e}")))?;
        let site = collector.site();
        let auth = authorization(parts);
        let token = ingest::bearer(auth).map_err(|e| ApiError::unauthorized(e.to_string()))?;
        if !ingest::is_operator(site, auth) {
            match site.tenant_tokens.get(&crate::site::token_hash(token)) {
                Some(own) if *own == tenant => {}
                Some(_) => {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "tenant: this token reads only its own tenant",
                    ))
                }
                None => return Err(ApiError::unauthorized("unknown token")),
            }
        }
        if !site.tenant_tokens.values().any(|t| *t == tenant) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("tenant: no tenant {tenant:?}"),
            ));
        }
        Ok(TenantAuth(tenant))
    }
}
