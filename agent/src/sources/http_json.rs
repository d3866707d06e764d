//! Reads one meter that answers JSON over HTTP (a Shelly-style plug, a BMS
//! gateway, a JSON-RPC meter via `POST`): one RFC 6901 JSON Pointer, unit and
//! scale per quantity, converted to SI here.
//!
//! A pointer to `null` is an absent reading; a pointer to nothing is a parse
//! error (a wrong pointer should not look like a quiet meter). Numbers given as
//! strings (`"123.4"`) are accepted; anything else is a value error.

use std::time::Duration;

use dcwatt_wire::{Entity, Quantity, Reading};
use serde_json::Value;

use super::meter::{
    self, check_value, ErrorKind, Extracted, MeterError, MeterStatus, ResetTracker,
};
use super::{now_ms, Collected};
use crate::config::{HttpJsonSpec, QuantitySpec, TimestampFormat, TimestampSpec};

/// One configured `type = "http_json"` meter.
#[derive(Debug)]
pub struct HttpJsonSource {
    spec: HttpJsonSpec,
    client: reqwest::Client,
    resets: ResetTracker,
}

/// Extracts the configured quantities from a body; pure. Returns SI values and
/// the meter's own timestamp, if configured and present.
pub fn extract(
    body: &[u8],
    quantities: &[QuantitySpec],
    timestamp: Option<&TimestampSpec>,
) -> Result<Extracted, MeterError> {
    let doc: Value = serde_json::from_slice(body)
        .map_err(|e| MeterError::new(ErrorKind::Parse, format!("body is not json: {e}")))?;
    let mut values = Vec::with_capacity(quantities.len());
    for q in quantities {
        let field = format!("{} (pointer {:?})", q.key, q.path);
        let raw = match doc.pointer(&q.path) {
            None => {
                return Err(MeterError::new(
                    ErrorKind::Parse,
                    format!("{field}: not found in the body"),
                ))
            }
            Some(Value::Null) => continue,
            Some(v) => number(v, &field)?,
        };
        let v = check_value(q.quantity, q.unit.to_si(raw * q.scale), &field)?;
        values.push((q.quantity, v));
    }
    let ts = match timestamp {
        None => None,
        Some(t) => match doc.pointer(&t.pointer) {
            None | Some(Value::Null) => None,
            Some(v) => Some(timestamp_ms(v, t).ok_or_else(|| {
                MeterError::new(
                    ErrorKind::Value,
                    format!("timestamp (pointer {:?}): unreadable value {v}", t.pointer),
                )
            })?),
        },
    };
    Ok((values, ts))
}

fn number(v: &Value, field: &str) -> Result<f64, MeterError> {
    let x = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    x.ok_or_else(|| {
        MeterError::new(
            ErrorKind::Value,
            format!(
                "{field}: expected a number, got {}",
                super::redfish::parse::kind(v)
            ),
        )
    })
}

fn timestamp_ms(v: &Value, t: &TimestampSpec) -> Option<i64> {
    let num = || match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    let ms = match t.format {
        TimestampFormat::Rfc3339 => return v.as_str().and_then(meter::parse_rfc3339_ms),
        TimestampFormat::UnixSeconds => num()? * 1000.0,
        TimestampFormat::UnixMillis => num()?,
    };
    // Years 1970..=2200 only: anything else is not a clock.
    (ms.is_finite() && (0.0..7.3e12).contains(&ms)).then_some(ms as i64)
}

impl HttpJsonSource {
    /// A source for one configured meter.
    pub fn new(spec: HttpJsonSpec) -> Result<Self, meter::ClientError> {
        let client = meter::client(spec.http.timeout, &spec.http.tls)?;
        Ok(Self {
            spec,
            client,
            resets: ResetTracker::default(),
        })
    }

    /// The meter id.
    pub fn meter(&self) -> &str {
        &self.spec.meter
    }

    /// The time one read may take.
    pub fn timeout(&self) -> Duration {
        self.spec.http.timeout
    }

    /// This meter's own interval, if configured.
    pub fn interval(&self) -> Option<Duration> {
        self.spec.http.interval
    }

    /// Reads the meter once.
    pub async fn collect(&self) -> Collected {
        let h = &self.spec.http;
        let start = now_ms();
        let answer = meter::fetch(
            &self.client,
            meter::Request {
                method: h.method.clone(),
                url: &h.url,
                headers: &h.headers,
                body: h.body.as_deref(),
                accept: "application/json",
            },
            None,
            false,
        )
        .await;
        let mid = start + (now_ms() - start) / 2;
        let result = answer.and_then(|a| {
            extract(&a.body, &self.spec.quantities, self.spec.timestamp.as_ref()).map_err(|e| {
                MeterError::new(
                    e.kind,
                    format!("{} {}: {e}", h.method.as_str().to_lowercase(), h.url),
                )
            })
        });
        meter_result(&self.spec.meter, &self.resets, result, mid)
    }
}

/// Turns one meter's extracted values into a [`Collected`].
pub fn meter_result(
    meter: &str,
    resets: &ResetTracker,
    result: Result<Extracted, MeterError>,
    mid_ms: i64,
) -> Collected {
    match result {
        Err(e) => Collected {
            error: Some(e.to_string()),
            meters: vec![MeterStatus::down(meter, e)],
            ..Collected::default()
        },
        Ok((values, device_ts)) => {
            let ts_ms = meter::pick_ts(device_ts, mid_ms);
            let energy = values
                .iter()
                .find(|(q, _)| *q == Quantity::EnergyJoules)
                .map(|(_, v)| *v);
            let n = resets.observe(meter, energy, None);
            let readings = values
                .into_iter()
                .map(|(quantity, value)| Reading {
                    ts_ms,
                    entity: Entity::Meter(meter.to_owned()),
                    quantity,
                    value,
                })
                .collect();
            Collected {
                readings,
                meters: vec![MeterStatus::up(meter, n)],
                ..Collected::default()
            }
        }
    }
}
