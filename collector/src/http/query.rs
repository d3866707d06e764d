//! Query parameters: instants, periods and steps, each checked into range
//! with a 400 naming the parameter.

use dcwatt_wire::time::{DAY_MS, MINUTE_MS};

use super::ApiError;

/// `text` as Unix ms, else as RFC 3339 (`2026-11-01T00:00:00Z`); a 400
/// naming `key` otherwise.
pub fn ms_or_rfc3339(key: &str, text: &str) -> Result<i64, ApiError> {
    let ms = match text.parse::<i64>() {
        Ok(ms) => Some(ms),
        Err(_) => dcwatt_wire::time::parse_rfc3339_ms(text).filter(|ms| *ms >= 0),
    };
    ms.ok_or_else(|| {
        ApiError::bad_request(format!(
            "{key}: {text:?} is neither RFC 3339 (2026-11-01T00:00:00Z) nor Unix milliseconds"
        ))
    })
}

/// The first instant a query may name: 1970-01-01T00:00:00Z.
pub const MIN_INSTANT_MS: i64 = 0;
/// The last instant a query may name: 9999-12-31T23:59:59.999Z.
pub const MAX_INSTANT_MS: i64 = 253_402_300_799_999;
/// The longest period a query may cover: 400 days.
pub const MAX_SPAN_MS: i64 = 400 * DAY_MS;
/// The most steps `GET /v1/tenants/{t}/energy` answers with.
pub const MAX_STEPS: i64 = 10_000;
/// The most excursions one `GET /v1/tenants/{t}/excursions` answers with.
pub const MAX_EXCURSIONS: usize = 10_000;

/// An instant of a query: RFC 3339 or Unix ms, within
/// [`MIN_INSTANT_MS`]..=[`MAX_INSTANT_MS`], so that every sum and difference
/// of two of them fits an `i64`.
pub fn parse_instant(key: &str, text: &str) -> Result<i64, ApiError> {
    let ms = ms_or_rfc3339(key, text)?;
    if !(MIN_INSTANT_MS..=MAX_INSTANT_MS).contains(&ms) {
        return Err(ApiError::bad_request(format!(
            "{key}: {ms} is outside [{MIN_INSTANT_MS}, {MAX_INSTANT_MS}] (1970-01-01 to 9999-12-31)"
        )));
    }
    Ok(ms)
}

/// `from` and `to` of a query: both instants, `to` after `from` by at most
/// [`MAX_SPAN_MS`].
pub fn parse_period(from: &str, to: &str) -> Result<(i64, i64), ApiError> {
    let (from, to) = (parse_instant("from", from)?, parse_instant("to", to)?);
    if to <= from || to - from > MAX_SPAN_MS {
        return Err(ApiError::bad_request(
            "to: must be after from, by at most 400 days",
        ));
    }
    Ok((from, to))
}

/// `step` of a tenant energy query, ms: whole minutes, at most the span, and
/// at most [`MAX_STEPS`] steps over it; absent, the whole span.
pub fn parse_step(step: Option<&str>, span_ms: i64) -> Result<i64, ApiError> {
    let Some(text) = step else {
        return Ok(span_ms);
    };
    let ms = humantime_serde::re::humantime::parse_duration(text)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .filter(|ms| *ms >= MINUTE_MS && ms % MINUTE_MS == 0)
        .ok_or_else(|| ApiError::bad_request("step: must be whole minutes (1m, 1h, 1d)"))?;
    if ms > span_ms {
        return Err(ApiError::bad_request(format!(
            "step: {text} is longer than the period ({} min)",
            span_ms / MINUTE_MS
        )));
    }
    // span ≤ MAX_SPAN_MS and ms ≥ 1 min: no overflow.
    if (span_ms + ms - 1) / ms > MAX_STEPS {
        return Err(ApiError::bad_request(format!(
            "step: {text} cuts the period into more than {MAX_STEPS} steps"
        )));
    }
    Ok(ms)
}
