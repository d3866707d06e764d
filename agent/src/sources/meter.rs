//! What every facility-meter source shares: the HTTP client (timeouts, TLS
//! roots, body limit), the closed set of error kinds, unit conversion to SI at
//! the edge, device timestamps, and per-meter counter-reset tracking.
//!
//! The protocol files ([`super::redfish`], [`super::http_json`],
//! [`super::prometheus_text`]) only turn bodies into values.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use dcwatt_wire::time::MINUTE_MS;
use dcwatt_wire::Quantity;
use reqwest::{Method, StatusCode, Url};

/// The largest body read from a meter. A Redfish resource or a meter's JSON is
/// a few kB; an exporter's `/metrics` a few hundred kB.
pub const MAX_BODY_BYTES: usize = 4 << 20;

/// Joules per kilowatt-hour.
pub const JOULES_PER_KWH: f64 = 3.6e6;

/// Why one meter produced no reading this time: the `kind` label of
/// `dcwatt_meter_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// The meter did not answer within its timeout.
    Timeout,
    /// Connecting failed (refused, unreachable, DNS).
    Connect,
    /// TLS handshake or certificate verification failed.
    Tls,
    /// The meter answered a non-2xx status (or a redirect loop).
    Http,
    /// The meter refused our credentials (401/403 after a fresh login).
    Auth,
    /// The body was truncated or larger than [`MAX_BODY_BYTES`].
    Body,
    /// The body was not the expected format (HTML error page, bad JSON, bad
    /// exposition, missing series).
    Parse,
    /// A value was present but impossible: not finite, negative power or energy,
    /// a wrong unit, a wrong type.
    Value,
}

impl ErrorKind {
    /// Every kind, in label order.
    pub const ALL: [ErrorKind; 8] = [
        Self::Timeout,
        Self::Connect,
        Self::Tls,
        Self::Http,
        Self::Auth,
        Self::Body,
        Self::Parse,
        Self::Value,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::Http => "http",
            Self::Auth => "auth",
            Self::Body => "body",
            Self::Parse => "parse",
            Self::Value => "value",
        }
    }
}

/// One failed meter read: what kind, and a sentence naming the URL and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct MeterError {
    /// The class of failure.
    pub kind: ErrorKind,
    /// Lowercase, names the URL or field.
    pub message: String,
}

impl MeterError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// How one configured meter fared in one collection.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterStatus {
    /// The meter id.
    pub id: String,
    /// Why it produced nothing this time; `None` when it answered.
    pub error: Option<MeterError>,
    /// Energy-counter resets seen this time (a decrease, or a new `SensorResetTime`).
    pub resets: u64,
}

impl MeterStatus {
    /// A meter that answered.
    pub fn up(id: impl Into<String>, resets: u64) -> Self {
        Self {
            id: id.into(),
            error: None,
            resets,
        }
    }

    /// A meter that failed.
    pub fn down(id: impl Into<String>, error: MeterError) -> Self {
        Self {
            id: id.into(),
            error: Some(error),
            resets: 0,
        }
    }
}

/// TLS settings shared by the meter sources.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TlsSpec {
    /// PEM file of extra root certificates (a site CA, a BMC's self-signed cert).
    pub ca_file: Option<std::path::PathBuf>,
    /// Accept any certificate and host name. Loudly named; warned at start.
    pub insecure_skip_verify: bool,
}

/// Why an HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA file could not be read or parsed.
    #[error("ca_file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// reqwest refused the settings.
    #[error("cannot build http client: {0}")]
    Build(String),
}

/// A client with the meter's timeout, TLS roots, a 10-redirect limit and our
/// user agent.
pub fn client(timeout: Duration, tls: &TlsSpec) -> Result<reqwest::Client, ClientError> {
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::limited(10))
        .user_agent(concat!("dcwatt-agent/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &tls.ca_file {
        b = b.add_root_certificate(read_ca(path)?);
    }
    if tls.insecure_skip_verify {
        b = b.danger_accept_invalid_certs(true);
    }
    b.build()
        .map_err(|e| ClientError::Build(super::error_chain(&e)))
}

fn read_ca(path: &Path) -> Result<reqwest::Certificate, ClientError> {
    let err = |reason: String| ClientError::CaFile {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    reqwest::Certificate::from_pem(&pem).map_err(|e| err(super::error_chain(&e)))
}

/// One HTTP request to a meter.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// GET or POST.
    pub method: Method,
    /// Absolute URL.
    pub url: &'a Url,
    /// Extra headers (already validated).
    pub headers: &'a [(String, String)],
    /// Request body (POST).
    pub body: Option<&'a str>,
    /// `Accept` header value.
    pub accept: &'static str,
}

/// A successful answer: the status and the whole body.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status (2xx, or 401/403 when `allow_auth_failure`).
    pub status: StatusCode,
    /// The body, at most [`MAX_BODY_BYTES`].
    pub body: Vec<u8>,
    /// Response headers.
    pub headers: reqwest::header::HeaderMap,
}

/// Sends `req` and reads the body. A non-2xx status is an error, except 401/403
/// when `auth_ok` (the caller logs in again).
pub async fn fetch(
    client: &reqwest::Client,
    req: Request<'_>,
    extra: Option<(&str, &str)>,
    auth_ok: bool,
) -> Result<Answer, MeterError> {
    let what = format!("{} {}", req.method.as_str().to_lowercase(), req.url);
    let mut rb = client
        .request(req.method.clone(), req.url.clone())
        .header(reqwest::header::ACCEPT, req.accept);
    for (k, v) in req.headers {
        rb = rb.header(k.as_str(), v.as_str());
    }
    if let Some((k, v)) = extra {
        rb = rb.header(k, v);
    }
    if let Some(body) = req.body {
        rb = rb
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_owned());
    }
    let mut resp = rb.send().await.map_err(|e| request_error(&what, e))?;
    let status = resp.status();
    let auth_failure = status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
    if !(status.is_success() || (auth_ok && auth_failure)) {
        let kind = if auth_failure {
            ErrorKind::Auth
        } else {
            ErrorKind::Http
        };
        return Err(MeterError::new(
            kind,
            format!("{what}: http status {status}"),
        ));
    }
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_BODY_BYTES as u64)
    {
        return Err(too_large(&what));
    }
    let headers = resp.headers().clone();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| request_error(&what, e))? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_large(&what));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status,
        body,
        headers,
    })
}

fn too_large(what: &str) -> MeterError {
    MeterError::new(
        ErrorKind::Body,
        format!("{what}: body larger than {MAX_BODY_BYTES} bytes"),
    )
}

fn request_error(what: &str, e: reqwest::Error) -> MeterError {
    let (timeout, redirect, connect) = (e.is_timeout(), e.is_redirect(), e.is_connect());
    let text = super::error_chain(&e.without_url());
    let lower = text.to_lowercase();
    let kind = if timeout {
        ErrorKind::Timeout
    } else if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake")
    {
        ErrorKind::Tls
    } else if redirect {
        ErrorKind::Http
    } else if connect {
        ErrorKind::Connect
    } else {
        ErrorKind::Body
    };
    MeterError::new(kind, format!("{what}: {text}"))
}

/// A unit a meter may speak, with its factor to the SI unit of its dimension.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Unit {
    /// The dimension, which decides the wire quantity.
    pub dimension: Dimension,
    /// Multiply by this to get SI (W, J, m³/s, m³); `offset` is added after (K → °C).
    pub factor: f64,
    /// Added after `factor` (only temperature).
    pub offset: f64,
}

/// What a unit measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    /// Watts.
    Power,
    /// Joules.
    Energy,
    /// Degrees Celsius.
    Temperature,
    /// Cubic metres per second.
    Flow,
    /// Cubic metres.
    Volume,
}

impl Dimension {
    /// The SI unit's name, for error messages.
    pub fn si(self) -> &'static str {
        match self {
            Self::Power => "W",
            Self::Energy => "J",
            Self::Temperature => "Cel",
            Self::Flow => "m3/s",
            Self::Volume => "m3",
        }
    }
}

/// The accepted unit names (UCUM spellings as Redfish uses, plus the common ones).
pub const UNITS: &[(&str, Dimension, f64, f64)] = &[
    ("mW", Dimension::Power, 1e-3, 0.0),
    ("W", Dimension::Power, 1.0, 0.0),
    ("kW", Dimension::Power, 1e3, 0.0),
    ("MW", Dimension::Power, 1e6, 0.0),
    ("mJ", Dimension::Energy, 1e-3, 0.0),
    ("J", Dimension::Energy, 1.0, 0.0),
    ("kJ", Dimension::Energy, 1e3, 0.0),
    ("MJ", Dimension::Energy, 1e6, 0.0),
    ("Wh", Dimension::Energy, 3600.0, 0.0),
    ("W.h", Dimension::Energy, 3600.0, 0.0),
    ("kWh", Dimension::Energy, JOULES_PER_KWH, 0.0),
    ("kW.h", Dimension::Energy, JOULES_PER_KWH, 0.0),
    ("MWh", Dimension::Energy, 3.6e9, 0.0),
    ("MW.h", Dimension::Energy, 3.6e9, 0.0),
    ("Cel", Dimension::Temperature, 1.0, 0.0),
    ("C", Dimension::Temperature, 1.0, 0.0),
    ("K", Dimension::Temperature, 1.0, -273.15),
    ("L/min", Dimension::Flow, 1e-3 / 60.0, 0.0),
    ("L/s", Dimension::Flow, 1e-3, 0.0),
    ("m3/h", Dimension::Flow, 1.0 / 3600.0, 0.0),
    ("m3/s", Dimension::Flow, 1.0, 0.0),
    ("L", Dimension::Volume, 1e-3, 0.0),
    ("m3", Dimension::Volume, 1.0, 0.0),
    // The US liquid gallon, exactly 231 cubic inches; `gal` means it too
    // (an imperial gallon is `L` with scale = 4.54609).
    ("[gal_us]", Dimension::Volume, US_GALLON_M3, 0.0),
    ("gal", Dimension::Volume, US_GALLON_M3, 0.0),
];

/// Cubic metres in a US liquid gallon (231 in³).
pub const US_GALLON_M3: f64 = 3.785_411_784e-3;

impl Unit {
    /// Looks a unit up by name (case-sensitive: `mW` is not `MW`).
    pub fn parse(name: &str) -> Option<Unit> {
        UNITS
            .iter()
            .find(|(n, ..)| *n == name)
            .map(|&(_, dimension, factor, offset)| Unit {
                dimension,
                factor,
                offset,
            })
    }

    /// The names accepted, for error messages.
    pub fn names() -> String {
        UNITS
            .iter()
            .map(|(n, ..)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Converts a raw value (already multiplied by any configured scale) to SI.
    pub fn to_si(self, raw: f64) -> f64 {
        raw * self.factor + self.offset
    }
}

/// Checks a converted value for its quantity: finite; power, energy, flow and
/// heat not negative; temperature above absolute zero.
pub fn check_value(quantity: Quantity, v: f64, field: &str) -> Result<f64, MeterError> {
    if !v.is_finite() {
        return Err(MeterError::new(
            ErrorKind::Value,
            format!("{field}: {v} is not a finite number"),
        ));
    }
    let temperature = matches!(
        quantity,
        Quantity::TemperatureCelsius
            | Quantity::CoolantSupplyTemperatureCelsius
            | Quantity::CoolantReturnTemperatureCelsius
    );
    if temperature {
        if v < -273.15 {
            return Err(MeterError::new(
                ErrorKind::Value,
                format!("{field}: {v} °C is below absolute zero"),
            ));
        }
    } else if v < 0.0 {
        return Err(MeterError::new(
            ErrorKind::Value,
            format!("{field}: negative value {v}"),
        ));
    }
    Ok(v)
}

/// The largest difference accepted between a device's own reading time and our
/// request midpoint; beyond it the device clock is wrong and the midpoint is used
/// (the collector refuses readings far from its own clock).
pub const MAX_CLOCK_SKEW_MS: i64 = MINUTE_MS;

/// The device's time when it is plausible, else the request midpoint.
pub fn pick_ts(device_ms: Option<i64>, midpoint_ms: i64) -> i64 {
    match device_ms {
        Some(t) if (t - midpoint_ms).abs() <= MAX_CLOCK_SKEW_MS => t,
        _ => midpoint_ms,
    }
}

type LastEnergy = (Option<f64>, Option<String>);

/// Values extracted from one answer: `(quantity, SI value)` pairs and the
/// device's own timestamp (Unix ms), if any.
pub type Extracted = (Vec<(Quantity, f64)>, Option<i64>);

/// Remembers each meter's last energy value and reset marker, to count resets.
#[derive(Debug, Default)]
pub struct ResetTracker {
    /// Per meter: the last energy (J) and the last reset marker.
    last: Mutex<BTreeMap<String, LastEnergy>>,
}

impl ResetTracker {
    /// Records the latest energy (J) and reset marker (`SensorResetTime`) of
    /// `meter`; returns 1 when this is a reset: the counter went down, or the
    /// marker changed.
    pub fn observe(&self, meter: &str, energy: Option<f64>, marker: Option<&str>) -> u64 {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = last.entry(meter.to_owned()).or_default();
        let mut reset = false;
        if let (Some(before), Some(now)) = (entry.0, energy) {
            reset |= now < before;
        }
        if let (Some(before), Some(now)) = (entry.1.as_deref(), marker) {
            reset |= before != now;
        }
        if energy.is_some() {
            entry.0 = energy;
        }
        if marker.is_some() {
            entry.1 = marker.map(str::to_owned);
        }
        u64::from(reset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_convert_to_si() {
        let u = |n| Unit::parse(n).unwrap();
        assert_eq!(u("kW.h").to_si(2.0), 7.2e6);
        assert_eq!(u("Wh").to_si(1.0), 3600.0);
        assert_eq!(u("mJ").to_si(1500.0), 1.5);
        assert!((u("L/min").to_si(60.0) - 1e-3).abs() < 1e-15);
        assert!((u("K").to_si(300.0) - 26.85).abs() < 1e-9);
        assert_eq!(u("L").to_si(2500.0), 2.5);
        assert_eq!(u("m3").to_si(7.0), 7.0);
        assert!((u("gal").to_si(1000.0) - 3.785_411_784).abs() < 1e-12);
        assert_eq!(u("[gal_us]"), u("gal"));
        assert_eq!(u("L").dimension, Dimension::Volume);
        assert_eq!(Unit::parse("kwh"), None);
    }

    #[test]
    fn resets_are_decreases_or_new_markers() {
        let t = ResetTracker::default();
        assert_eq!(t.observe("m", Some(10.0), Some("a")), 0);
        assert_eq!(t.observe("m", Some(12.0), Some("a")), 0);
        assert_eq!(t.observe("m", Some(1.0), Some("a")), 1);
        assert_eq!(t.observe("m", Some(2.0), Some("b")), 1);
        assert_eq!(t.observe("m", None, None), 0);
        assert_eq!(t.observe("m", Some(3.0), Some("b")), 0);
    }

    #[test]
    fn device_time_only_when_plausible() {
        assert_eq!(pick_ts(Some(1_000), 2_000), 1_000);
        assert_eq!(pick_ts(Some(1_000_000), 2_000), 2_000);
        assert_eq!(pick_ts(None, 2_000), 2_000);
    }
}
