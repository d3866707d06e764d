//! Reads one Redfish `PowerDistributionMetrics` resource over HTTP(S):
//! `PowerWatts.Reading` (W) and `EnergykWh.Reading` (kWh → J).
//!
//! A null or missing reading is absent, never 0. A body that is not JSON, a
//! reading that is not a finite non-negative number, or an HTTP error fails the
//! whole meter for that tick (`dcwatt_meter_up{meter} 0`).

use std::time::Duration;

use dcwatt_wire::{Entity, Quantity, Reading};
use reqwest::Url;
use serde_json::Value;

use super::{now_ms, Collected};
use crate::config::RedfishSpec;

/// Joules per kilowatt-hour.
pub const JOULES_PER_KWH: f64 = 3.6e6;

/// The largest body read from a meter; a Metrics resource is a few kB.
const MAX_BODY_BYTES: usize = 1 << 20;

/// One configured Redfish meter.
#[derive(Debug)]
pub struct RedfishSource {
    meter: String,
    url: Url,
    timeout: Duration,
    client: reqwest::Client,
}

/// Why a meter read failed.
#[derive(Debug, thiserror::Error)]
pub enum RedfishError {
    /// Connecting, sending or reading the body failed, or timed out.
    #[error("get {url}: {reason}")]
    Request {
        /// The resource URL.
        url: String,
        /// The error and its causes, joined.
        reason: String,
    },
    /// The meter answered a non-2xx status.
    #[error("get {url}: http status {status}")]
    Status {
        /// The resource URL.
        url: String,
        /// The status it answered.
        status: reqwest::StatusCode,
    },
    /// The body was larger than we are willing to read.
    #[error("get {url}: body larger than {MAX_BODY_BYTES} bytes")]
    TooLarge {
        /// The resource URL.
        url: String,
    },
    /// The body was not a valid Metrics resource.
    #[error("get {url}: {source}")]
    Parse {
        /// The resource URL.
        url: String,
        /// What was wrong with it.
        source: ParseError,
    },
}

/// Why a body is not a usable `PowerDistributionMetrics` resource.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    /// Not JSON at all (HTML error page, truncated body, a bare `NaN`…).
    #[error("body is not json: {0}")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("body is not a json object")]
    NotObject,
    /// A property has the wrong shape or an impossible value.
    #[error("{field}: {reason}")]
    Invalid {
        /// The property path, e.g. `PowerWatts.Reading`.
        field: &'static str,
        /// Why, in lowercase.
        reason: String,
    },
}

/// The readings of one Metrics resource, in SI units. `None` = not reported.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MeterValues {
    /// `PowerWatts.Reading`, watts.
    pub power_watts: Option<f64>,
    /// `EnergykWh.Reading` converted to joules.
    pub energy_joules: Option<f64>,
}

/// Parses a `PowerDistributionMetrics` body. Pure; the unit conversion happens here.
pub fn parse(body: &[u8]) -> Result<MeterValues, ParseError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| ParseError::NotJson(e.to_string()))?;
    let obj = v.as_object().ok_or(ParseError::NotObject)?;
    let power_watts = sensor_reading(obj, "PowerWatts", "PowerWatts.Reading")?;
    let energy_kwh = sensor_reading(obj, "EnergykWh", "EnergykWh.Reading")?;
    Ok(MeterValues {
        power_watts,
        energy_joules: energy_kwh.map(|kwh| kwh * JOULES_PER_KWH),
    })
}

/// `obj[prop].Reading` as a finite, non-negative number; absent when the
/// property or its reading is missing or null.
fn sensor_reading(
    obj: &serde_json::Map<String, Value>,
    prop: &str,
    field: &'static str,
) -> Result<Option<f64>, ParseError> {
    let sensor = match obj.get(prop) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(s)) => s,
        Some(other) => {
            return Err(ParseError::Invalid {
                field,
                reason: format!("expected an object, got {}", kind(other)),
            })
        }
    };
    match sensor.get("Reading") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let x = n
                .as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| ParseError::Invalid {
                    field,
                    reason: format!("{n} is not a finite number"),
                })?;
            if x < 0.0 {
                return Err(ParseError::Invalid {
                    field,
                    reason: format!("negative value {x}"),
                });
            }
            Ok(Some(x))
        }
        Some(other) => Err(ParseError::Invalid {
            field,
            reason: format!("expected a number, got {}", kind(other)),
        }),
    }
}

fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

impl RedfishSource {
    /// A source for one configured meter.
    pub fn new(spec: RedfishSpec) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(spec.timeout)
            .user_agent(concat!("dcwatt-agent/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            meter: spec.meter,
            url: spec.url,
            timeout: spec.timeout,
            client,
        })
    }

    /// The meter's configured id.
    pub fn meter(&self) -> &str {
        &self.meter
    }

    /// The time one read may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// GETs the resource once. Readings carry the request's midpoint as timestamp.
    pub async fn collect(&self) -> Collected {
        let start = now_ms();
        match self.fetch().await {
            Ok(body) => {
                let ts_ms = start + (now_ms() - start) / 2;
                match parse(&body) {
                    Ok(values) => Collected::ok(self.readings(ts_ms, values)),
                    Err(source) => Collected::failed(
                        RedfishError::Parse {
                            url: self.url.to_string(),
                            source,
                        }
                        .to_string(),
                    ),
                }
            }
            Err(e) => Collected::failed(e.to_string()),
        }
    }

    async fn fetch(&self) -> Result<Vec<u8>, RedfishError> {
        let request_error = |e: reqwest::Error| RedfishError::Request {
            url: self.url.to_string(),
            reason: super::error_chain(&e.without_url()),
        };
        let mut resp = self
            .client
            .get(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(request_error)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(RedfishError::Status {
                url: self.url.to_string(),
                status,
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(request_error)? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(RedfishError::TooLarge {
                    url: self.url.to_string(),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn readings(&self, ts_ms: i64, v: MeterValues) -> Vec<Reading> {
        let entity = Entity::Meter(self.meter.clone());
        [
            (Quantity::PowerWatts, v.power_watts),
            (Quantity::EnergyJoules, v.energy_joules),
        ]
        .into_iter()
        .filter_map(|(quantity, value)| {
            value.map(|value| Reading {
                ts_ms,
                entity: entity.clone(),
                quantity,
                value,
            })
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Vec<u8> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/fixtures/redfish/public-pdu/PowerEquipment/RackPDUs/1/Metrics/index.json"
        );
        std::fs::read(path).unwrap()
    }

    #[test]
    fn parses_the_dmtf_mockup() {
        let v = parse(&fixture()).unwrap();
        assert_eq!(v.power_watts, Some(6438.0));
        assert_eq!(v.energy_joules, Some(56438.0 * 3.6e6));
    }

    #[test]
    fn null_or_missing_reading_is_absent() {
        let v = parse(br#"{"PowerWatts":{"Reading":null},"EnergykWh":{"Reading":1.5}}"#).unwrap();
        assert_eq!(v.power_watts, None);
        assert_eq!(v.energy_joules, Some(1.5 * 3.6e6));
        let v = parse(br#"{"PowerWatts":{"Reading":12.25}}"#).unwrap();
        assert_eq!(v.power_watts, Some(12.25));
        assert_eq!(v.energy_joules, None);
        let v = parse(br#"{"PowerWatts":null,"EnergykWh":{}}"#).unwrap();
        assert_eq!(v, MeterValues::default());
    }

    #[test]
    fn full_precision_energy_is_kept() {
        let v = parse(br#"{"EnergykWh":{"Reading":1234.567890123}}"#).unwrap();
        assert_eq!(v.energy_joules, Some(1234.567890123 * 3.6e6));
    }

    #[test]
    fn non_json_is_an_error() {
        assert!(matches!(
            parse(b"<html>oops</html>"),
            Err(ParseError::NotJson(_))
        ));
        assert!(matches!(
            parse(br#"{"PowerWatts":{"Reading":NaN}}"#),
            Err(ParseError::NotJson(_))
        ));
        assert_eq!(parse(b"[1,2]"), Err(ParseError::NotObject));
    }

    #[test]
    fn nan_like_string_is_an_error() {
        let err = parse(br#"{"PowerWatts":{"Reading":"NaN"}}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "PowerWatts.Reading: expected a number, got string \"NaN\""
        );
    }

    #[test]
    fn huge_number_is_an_error() {
        assert!(parse(br#"{"EnergykWh":{"Reading":1e999}}"#).is_err());
    }

    #[test]
    fn negative_value_is_an_error() {
        let err = parse(br#"{"PowerWatts":{"Reading":-3}}"#).unwrap_err();
        assert_eq!(err.to_string(), "PowerWatts.Reading: negative value -3");
    }

    #[test]
    fn wrong_shape_is_an_error() {
        let err = parse(br#"{"EnergykWh":5}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "EnergykWh.Reading: expected an object, got number 5"
        );
    }
}
