//! Reads one meter that answers JSON over HTTP (a Shelly-style plug, a BMS
//! gateway, a JSON-RPC meter via `POST`): one RFC 6901 JSON Pointer, unit and
//! scale per quantity, converted to SI here.
//!
//! A pointer to `null` is an absent reading; a pointer to nothing is a parse
//! error (a wrong pointer should not look like a quiet meter). Numbers given as
//! strings (`"123.4"`) are accepted; anything else is a value error.

use serde_json::Value;

use super::http_meter::HttpMeter;
use super::meter::{self, check_value, ErrorKind, Extracted, MeterError};
use super::Collected;
use crate::config::{HttpJsonSpec, QuantitySpec, TimestampFormat, TimestampSpec};

/// One configured `type = "http_json"` meter.
#[derive(Debug)]
pub struct HttpJsonSource {
    /// The request and the meter.
    pub http: HttpMeter,
    quantities: Vec<QuantitySpec>,
    timestamp: Option<TimestampSpec>,
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
        TimestampFormat::Rfc3339 => {
            return v.as_str().and_then(dcwatt_wire::time::parse_rfc3339_ms)
        }
        TimestampFormat::UnixSeconds => num()? * 1000.0,
        TimestampFormat::UnixMillis => num()?,
    };
    // Years 1970..=2200 only: anything else is not a clock.
    (ms.is_finite() && (0.0..7.3e12).contains(&ms)).then_some(ms as i64)
}

impl HttpJsonSource {
    /// A source for one configured meter.
    pub fn new(spec: HttpJsonSpec) -> Result<Self, meter::ClientError> {
        Ok(Self {
            http: HttpMeter::new(&spec.meter, &spec.http)?,
            quantities: spec.quantities,
            timestamp: spec.timestamp,
        })
    }

    /// Reads the meter once.
    pub async fn collect(&self) -> Collected {
        self.http
            .read("application/json", true, |body| {
                extract(&body, &self.quantities, self.timestamp.as_ref())
            })
            .await
    }
}
