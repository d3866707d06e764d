//! Ingest of `POST /v1/batches`: who is sending (bearer token → agent), is the
//! batch acceptable (every field checked before anything changes), and has it
//! been applied before (each `(agent, seq)` once).
//!
//! A rejected batch changes nothing: validation is a pure function of the batch,
//! and the state is touched only after it passed.

use dcwatt_wire::binary::Encoding;
use dcwatt_wire::{Batch, Entity, Quantity, VERSION};

use crate::site::token_hash;
use crate::site::Site;

/// Why a request was refused; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    /// No or unknown bearer token (401).
    #[error("{0}")]
    Unauthorized(String),
    /// A valid token used for something it may not do (403).
    #[error("{0}")]
    Forbidden(String),
    /// The body is not an acceptable batch (400).
    #[error("{0}")]
    Invalid(String),
    /// The body is larger than `max_body_bytes` (413).
    #[error("{0}")]
    TooLarge(String),
    /// The body is not JSON (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The collector cannot apply it now (503); the agent retries.
    #[error("{0}")]
    Unavailable(String),
    /// The body did not arrive in time (408).
    #[error("{0}")]
    Timeout(String),
    /// The agent posts faster than its rate limit (429 with `Retry-After`).
    #[error("{error}")]
    TooManyRequests {
        /// What was exceeded.
        error: String,
        /// Seconds until the next batch is accepted.
        retry_after_s: u64,
    },
    /// A merged batch overlaps what was applied already (409): nothing applied;
    /// the agent re-sends from `last_seq + 1`.
    #[error("{error}")]
    Conflict {
        /// What overlaps.
        error: String,
        /// The highest sequence number applied for this agent.
        last_seq: u64,
    },
}

/// Extracts the token from an `Authorization` header value.
pub fn bearer(header: Option<&str>) -> Result<&str, Rejection> {
    let value =
        header.ok_or_else(|| Rejection::Unauthorized("missing Authorization header".into()))?;
    let token = value
        .strip_prefix("Bearer ")
        .ok_or_else(|| Rejection::Unauthorized("Authorization must be \"Bearer <token>\"".into()))?
        .trim();
    if token.is_empty() {
        return Err(Rejection::Unauthorized("empty bearer token".into()));
    }
    Ok(token)
}

/// The agent id a bearer token belongs to. Tokens are looked up by their SHA-256:
/// the map is keyed by a hash, so lookup timing says nothing about the token.
pub fn authenticate_agent<'a>(site: &'a Site, header: Option<&str>) -> Result<&'a str, Rejection> {
    let token = bearer(header)?;
    site.agent_tokens
        .get(&token_hash(token))
        .map(String::as_str)
        .ok_or_else(|| Rejection::Unauthorized("unknown agent token".into()))
}

/// True when the header carries the operator's token.
pub fn is_operator(site: &Site, header: Option<&str>) -> bool {
    match (site.operator_token, bearer(header)) {
        (Some(want), Ok(token)) => constant_time_eq(&want, &token_hash(token)),
        _ => false,
    }
}

/// True when the header carries the scrape token (`[metrics]`).
pub fn is_scraper(site: &Site, header: Option<&str>) -> bool {
    match (site.metrics_token, bearer(header)) {
        (Some(want), Ok(token)) => constant_time_eq(&want, &token_hash(token)),
        _ => false,
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parses and validates a JSON batch body for the authenticated `agent`.
pub fn decode(body: &[u8], agent: &str, site: &Site, now_ms: i64) -> Result<Batch, Rejection> {
    decode_as(Encoding::Json, body, agent, site, now_ms)
}

/// Parses a batch body in either encoding and validates it (the same
/// checks for both) for the authenticated `agent`.
pub fn decode_as(
    encoding: Encoding,
    body: &[u8],
    agent: &str,
    site: &Site,
    now_ms: i64,
) -> Result<Batch, Rejection> {
    let batch: Batch = match encoding {
        Encoding::Json => serde_json::from_slice(body)
            .map_err(|e| Rejection::Invalid(format!("malformed batch: {e}")))?,
        Encoding::Binary => dcwatt_wire::binary::decode(body)
            .map_err(|e| Rejection::Invalid(format!("malformed binary batch: {e}")))?,
    };
    validate(&batch, agent, site, now_ms)?;
    Ok(batch)
}

/// Checks every field of a batch; the error names the first bad one.
pub fn validate(batch: &Batch, agent: &str, site: &Site, now_ms: i64) -> Result<(), Rejection> {
    let bad = |field: String, why: &str| Rejection::Invalid(format!("{field}: {why}"));
    if batch.version != VERSION {
        return Err(bad(
            "version".into(),
            &format!(
                "unsupported version {}, this collector reads {VERSION}",
                batch.version
            ),
        ));
    }
    if batch.agent != agent {
        return Err(Rejection::Forbidden(format!(
            "agent: the token belongs to agent {agent:?}, not {:?}",
            batch.agent
        )));
    }
    check_id(&batch.node).map_err(|why| bad("node".into(), why))?;
    // The agent's id is its node's name: an agent speaks for its own node only,
    // or it could bill its GPUs to whoever leases another node.
    if batch.node != agent {
        return Err(Rejection::Forbidden(format!(
            "node: agent {agent:?} reports only its own node, not {:?}",
            batch.node
        )));
    }
    // Sequence numbers are stored as SQLite integers (i64): one above that
    // would fail at commit, after it was applied in memory.
    if batch.seq == 0 || batch.seq > MAX_SEQ {
        return Err(bad(
            "seq".into(),
            &format!("{} is outside [1, {MAX_SEQ}]", batch.seq),
        ));
    }
    if let Some(first) = batch.first_seq {
        if first == 0 || first > batch.seq {
            return Err(bad(
                "first_seq".into(),
                &format!("{first} is outside [1, seq = {}]", batch.seq),
            ));
        }
    }
    // The first module each GPU names, and where.
    let mut named: std::collections::HashMap<&str, (usize, &str)> = Default::default();
    for (i, g) in batch.gpus.iter().enumerate() {
        check_id(&g.uuid).map_err(|why| bad(format!("gpus[{i}].uuid"), why))?;
        if g.model.len() > 256 || g.model.chars().any(char::is_control) {
            return Err(bad(
                format!("gpus[{i}].model"),
                "must be at most 256 printable characters",
            ));
        }
        if let Some(m) = &g.module {
            check_id(m).map_err(|why| bad(format!("gpus[{i}].module"), why))?;
            // One GPU, one module: the same GPU listed again with another
            // module is refused (its module's energy could not be split).
            // (A map, not a scan of the earlier entries: a body of many
            // thousand entries must not cost quadratic time.)
            let (j, other) = *named.entry(g.uuid.as_str()).or_insert((i, m.as_str()));
            if other != m {
                return Err(bad(
                    format!("gpus[{i}].module"),
                    &format!(
                        "GPU {} already names module in gpus[{j}]: a GPU belongs to one module",
                        g.uuid
                    ),
                ));
            }
        }
    }
    let (oldest, newest) = (
        now_ms.saturating_sub(site.max_age_ms),
        now_ms.saturating_add(site.max_future_ms),
    );
    for (i, r) in batch.readings.iter().enumerate() {
        if r.ts_ms < oldest || r.ts_ms > newest {
            return Err(bad(
                format!("readings[{i}].ts_ms"),
                &format!("{} is outside the accepted range [{oldest}, {newest}] (collector clock {now_ms})", r.ts_ms),
            ));
        }
        // An unknown entity kind (a newer agent) is not checked: it is
        // ignored and counted when applied.
        if let Entity::Gpu(id) | Entity::Meter(id) | Entity::Node(id) | Entity::Module(id) =
            &r.entity
        {
            check_id(id).map_err(|why| bad(format!("readings[{i}].entity"), why))?;
        }
        check_value(r.quantity, r.value)
            .map_err(|why| bad(format!("readings[{i}].value"), &why))?;
    }
    if batch.created_ms < oldest || batch.created_ms > newest {
        return Err(bad(
            "created_ms".into(),
            &format!(
                "{} is outside the accepted range [{oldest}, {newest}] (collector clock {now_ms})",
                batch.created_ms
            ),
        ));
    }
    // Well formed: now, may this agent speak for each meter it names?
    for (i, r) in batch.readings.iter().enumerate() {
        if let Entity::Meter(m) = &r.entity {
            if !site.agent_meters.get(agent).is_some_and(|a| a.contains(m)) {
                return Err(Rejection::Forbidden(format!(
                    "readings[{i}].entity: meter {m:?} is not one of agent {agent:?}'s meters"
                )));
            }
        }
    }
    Ok(())
}

/// The largest sequence number accepted: SQLite stores it as a signed 64-bit integer.
pub const MAX_SEQ: u64 = i64::MAX as u64;

/// Checks an id from a batch or a request path: 1–128 characters of
/// `[A-Za-z0-9._:-]`, the config's alphabet.
pub fn check_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() || id.len() > 128 {
        return Err("must be 1 to 128 characters");
    }
    // The same alphabet as the config's ids: they become label values and
    // URL path segments.
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err("may only contain ASCII letters, digits, '-', '_', '.', ':'");
    }
    Ok(())
}

/// Physically plausible ranges, in SI units.
fn check_value(q: Quantity, v: f64) -> Result<(), String> {
    if !v.is_finite() {
        return Err(format!("{v} is not a finite number"));
    }
    let (lo, hi) = match q {
        Quantity::PowerWatts | Quantity::PowerLimitWatts | Quantity::PowerDefaultLimitWatts => {
            (0.0, 1e9)
        }
        Quantity::EnergyJoules => (0.0, 1e18),
        Quantity::TemperatureCelsius | Quantity::MemoryTemperatureCelsius => (-100.0, 250.0),
        Quantity::UtilizationRatio
        | Quantity::MemoryUtilizationRatio
        | Quantity::SmActiveRatio
        | Quantity::SmOccupancyRatio
        | Quantity::TensorActiveRatio
        | Quantity::DramActiveRatio => (0.0, 1.0),
        // Counters: a decrease is a reset, applied as such.
        Quantity::XidErrorsTotal => (0.0, 1e12),
        Quantity::IntegratedEnergyJoules => (0.0, 1e18),
        // A code (wire `DOWN_REASONS`): a whole number; one not listed (a
        // newer agent's) is taken as "down, reason not listed".
        Quantity::GpuDownReasonCode => {
            if v.fract() != 0.0 {
                return Err(format!("{v} is not a whole gpu_down_reason_code"));
            }
            (0.0, f64::from(u32::MAX))
        }
        Quantity::MemoryUsedBytes | Quantity::MemoryTotalBytes => (0.0, 1e15),
        Quantity::GpuUp
        | Quantity::ThrottleSwPowerCap
        | Quantity::ThrottleHwSlowdown
        | Quantity::ThrottleHwThermalSlowdown
        | Quantity::ThrottleSwThermalSlowdown
        | Quantity::ThrottleHwPowerBrakeSlowdown => (0.0, 1.0),
        Quantity::TemperatureSlowdownCelsius
        | Quantity::TemperatureShutdownCelsius
        | Quantity::TemperatureGpuMaxCelsius
        | Quantity::TemperatureMemoryMaxCelsius
        | Quantity::CoolantSupplyTemperatureCelsius
        | Quantity::CoolantReturnTemperatureCelsius => (-100.0, 250.0),
        Quantity::CoolantFlowCubicMetersPerSecond => (0.0, 100.0),
        Quantity::HeatRemovedWatts => (-1e9, 1e9),
        // A counter: the largest site meters register up to 10^8 m³ before wrapping.
        Quantity::WaterVolumeCubicMeters => (0.0, 1e12),
        Quantity::Other => (f64::MIN, f64::MAX),
    };
    if v < lo || v > hi {
        let name = serde_json::to_value(q)
            .ok()
            .and_then(|j| j.as_str().map(str::to_owned))
            .unwrap_or_default();
        return Err(format!("{v} is out of range for {name} [{lo}, {hi}]"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use dcwatt_wire::time::{DAY_MS, HOUR_MS};
    use dcwatt_wire::Reading;

    fn site() -> Site {
        Config::from_toml(&format!(
            "[[agents]]\nid = \"a1\"\ntoken_sha256 = \"{}\"\nmeters = [\"m\"]\n[[meters]]\nid = \"m\"\nrole = \"facility\"",
            hex::encode(token_hash("secret"))
        ))
        .unwrap()
        .build()
        .unwrap()
    }

    fn batch(value: f64, ts_ms: i64) -> Batch {
        Batch {
            version: VERSION,
            agent: "a1".into(),
            seq: 1,
            first_seq: None,
            node: "a1".into(),
            created_ms: ts_ms,
            gpus: vec![],
            readings: vec![Reading {
                ts_ms,
                entity: Entity::Meter("m".into()),
                quantity: Quantity::PowerWatts,
                value,
            }],
        }
    }

    #[test]
    fn tokens() {
        let s = site();
        assert_eq!(authenticate_agent(&s, Some("Bearer secret")), Ok("a1"));
        assert!(matches!(
            authenticate_agent(&s, Some("Bearer nope")),
            Err(Rejection::Unauthorized(_))
        ));
        assert!(matches!(
            authenticate_agent(&s, Some("Basic secret")),
            Err(Rejection::Unauthorized(_))
        ));
        assert!(matches!(
            authenticate_agent(&s, None),
            Err(Rejection::Unauthorized(_))
        ));
        assert!(!is_operator(&s, Some("Bearer secret")));
    }

    #[test]
    fn values_and_timestamps_are_checked() {
        let s = site();
        let now = 1_800_000_000_000;
        assert!(validate(&batch(100.0, now), "a1", &s, now).is_ok());
        for (b, needle) in [
            (batch(-1.0, now), "readings[0].value"),
            (batch(f64::NAN, now), "not a finite"),
            (batch(f64::INFINITY, now), "not a finite"),
            (batch(1.0, now - 400 * DAY_MS), "readings[0].ts_ms"),
            (batch(1.0, now + HOUR_MS), "readings[0].ts_ms"),
        ] {
            let e = validate(&b, "a1", &s, now).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        // A down reason code: a whole number; one not listed is taken.
        for (v, ok) in [
            (2.0, true),
            (999.0, true),
            (1.5, false),
            (-1.0, false),
            (f64::NAN, false),
            (1e12, false),
        ] {
            assert_eq!(
                check_value(Quantity::GpuDownReasonCode, v).is_ok(),
                ok,
                "{v}"
            );
        }
        assert!(check_value(Quantity::GpuDownReasonCode, 1.5)
            .unwrap_err()
            .contains("gpu_down_reason_code"));
        assert!(matches!(
            validate(&batch(1.0, now), "other", &s, now),
            Err(Rejection::Forbidden(_))
        ));
        // A meter the config does not name for this agent: refused.
        let mut b = batch(1.0, now);
        b.readings[0].entity = Entity::Meter("n".into());
        assert!(matches!(
            validate(&b, "a1", &s, now),
            Err(Rejection::Forbidden(e)) if e.contains("readings[0].entity")
        ));
    }

    #[test]
    fn sequence_numbers_and_creation_time_are_checked() {
        let s = site();
        let now = 1_800_000_000_000;
        let with = |f: &dyn Fn(&mut Batch)| {
            let mut b = batch(1.0, now);
            f(&mut b);
            validate(&b, "a1", &s, now).map_err(|e| e.to_string())
        };
        assert!(with(&|_| {}).is_ok());
        assert!(with(&|b| b.seq = MAX_SEQ).is_ok());
        for (f, needle) in [
            (
                &(|b: &mut Batch| b.seq = 0) as &dyn Fn(&mut Batch),
                "seq: 0",
            ),
            (&|b: &mut Batch| b.seq = 1 << 63, "seq: 9223372036854775808"),
            (&|b: &mut Batch| b.seq = u64::MAX, "seq: "),
            (&|b: &mut Batch| b.first_seq = Some(0), "first_seq: 0"),
            (&|b: &mut Batch| b.first_seq = Some(2), "first_seq: 2"),
            (&|b: &mut Batch| b.created_ms = i64::MIN, "created_ms"),
            (&|b: &mut Batch| b.created_ms = i64::MAX, "created_ms"),
        ] {
            let e = with(f).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
        // The range checks do not overflow at the ends of i64.
        assert!(validate(&batch(1.0, i64::MAX), "a1", &s, i64::MAX).is_ok());
        assert!(validate(&batch(1.0, i64::MIN), "a1", &s, i64::MIN).is_ok());
    }

    #[test]
    fn malformed_json_names_the_problem() {
        let s = site();
        let e = decode(br#"{"version":1,"agent":"a1"}"#, "a1", &s, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `seq`"), "{e}");
        let e = decode(b"not json", "a1", &s, 0).unwrap_err().to_string();
        assert!(e.contains("malformed batch"), "{e}");
    }
}
