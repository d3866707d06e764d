//! Validation of the meter sources (`redfish`, `http_json`,
//! `prometheus_text`): ids, requests, quantities and units.

use super::*;

pub(super) fn build_meter_id(i: usize, meter: &str) -> Result<String, ConfigError> {
    let meter = meter.trim().to_owned();
    if meter.is_empty() {
        return Err(invalid(format!("sources[{i}].meter"), "empty"));
    }
    if meter.chars().any(char::is_control) {
        return Err(invalid(
            format!("sources[{i}].meter"),
            "contains a control character",
        ));
    }
    Ok(meter)
}

pub(super) fn build_redfish(i: usize, r: RedfishConfig) -> Result<RedfishSpec, ConfigError> {
    let meter = build_meter_id(i, &r.meter)?;
    let url = parse_http_url(&r.url).map_err(|e| invalid(format!("sources[{i}].url"), e))?;
    if r.timeout.is_zero() {
        return Err(invalid(format!("sources[{i}].timeout"), "must be above 0"));
    }
    let password = match &r.password_file {
        None => None,
        Some(path) => {
            let key = format!("sources[{i}].password_file");
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid(&key, format!("cannot read {}: {e}", path.display())))?;
            Some(text.trim().to_owned())
        }
    };
    let auth = match (r.auth.as_deref(), r.username, password) {
        (None, None, None) => RedfishAuth::None,
        (Some(a), None, _) => {
            return Err(invalid(
                format!("sources[{i}].username"),
                format!("missing (required by auth = {a:?})"),
            ))
        }
        (_, Some(_), None) => {
            return Err(invalid(
                format!("sources[{i}].password_file"),
                "missing (required with username)",
            ))
        }
        (_, None, Some(_)) => {
            return Err(invalid(
                format!("sources[{i}].username"),
                "missing (required with password_file)",
            ))
        }
        (None | Some("basic"), Some(username), Some(password)) => {
            RedfishAuth::Basic { username, password }
        }
        (Some("session"), Some(username), Some(password)) => {
            RedfishAuth::Session { username, password }
        }
        (Some(other), ..) => {
            return Err(invalid(
                format!("sources[{i}].auth"),
                format!("unknown {other:?} (expected \"basic\" or \"session\")"),
            ))
        }
    };
    let common = build_common(i, r.common, r.timeout)?;
    Ok(RedfishSpec {
        meter,
        url,
        timeout: r.timeout,
        discover: r.discover,
        interval: common.interval,
        auth,
        tls: common.tls,
    })
}

/// The validated shared keys.
pub(super) struct Common {
    interval: Option<Duration>,
    tls: TlsSpec,
    headers: Vec<(String, String)>,
}

pub(super) fn build_common(
    i: usize,
    c: MeterCommonConfig,
    timeout: Duration,
) -> Result<Common, ConfigError> {
    if let Some(iv) = c.interval {
        if iv < MIN_INTERVAL {
            return Err(invalid(
                format!("sources[{i}].interval"),
                format!(
                    "{} is shorter than the minimum of {}",
                    humantime_serde::re::humantime::format_duration(iv),
                    humantime_serde::re::humantime::format_duration(MIN_INTERVAL)
                ),
            ));
        }
    }
    let _ = timeout;
    if let Some(path) = &c.ca_file {
        let key = format!("sources[{i}].ca_file");
        let pem = std::fs::read(path)
            .map_err(|e| invalid(&key, format!("cannot read {}: {e}", path.display())))?;
        reqwest::Certificate::from_pem(&pem).map_err(|e| {
            invalid(
                &key,
                format!("{} is not a PEM certificate: {e}", path.display()),
            )
        })?;
    }
    let mut headers = Vec::with_capacity(c.headers.len());
    for (k, v) in c.headers {
        let key = format!("sources[{i}].headers.{k}");
        reqwest::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| invalid(&key, "not a valid http header name"))?;
        reqwest::header::HeaderValue::from_str(&v)
            .map_err(|_| invalid(&key, "not a valid http header value"))?;
        headers.push((k, v));
    }
    Ok(Common {
        interval: c.interval,
        tls: TlsSpec {
            ca_file: c.ca_file,
            insecure_skip_verify: c.tls_insecure_skip_verify,
        },
        headers,
    })
}

/// The wire quantity and unit dimension of each quantity key.
pub(super) fn quantity_of(key: &str) -> Option<(Quantity, Dimension)> {
    Some(match key {
        "power" => (Quantity::PowerWatts, Dimension::Power),
        "energy" => (Quantity::EnergyJoules, Dimension::Energy),
        "temperature" => (Quantity::TemperatureCelsius, Dimension::Temperature),
        "coolant_supply_temperature" => (
            Quantity::CoolantSupplyTemperatureCelsius,
            Dimension::Temperature,
        ),
        "coolant_return_temperature" => (
            Quantity::CoolantReturnTemperatureCelsius,
            Dimension::Temperature,
        ),
        "coolant_flow" => (Quantity::CoolantFlowCubicMetersPerSecond, Dimension::Flow),
        "heat_removed" => (Quantity::HeatRemovedWatts, Dimension::Power),
        "water_volume" => (Quantity::WaterVolumeCubicMeters, Dimension::Volume),
        _ => return None,
    })
}

pub(super) fn build_quantities(
    i: usize,
    qs: Vec<(&'static str, QuantityConfig)>,
    json: bool,
) -> Result<Vec<QuantitySpec>, ConfigError> {
    if qs.is_empty() {
        return Err(invalid(
            format!("sources[{i}]"),
            "no quantity configured (set at least one of power, energy, temperature, \
             coolant_supply_temperature, coolant_return_temperature, coolant_flow, heat_removed, \
             water_volume)",
        ));
    }
    let mut out = Vec::with_capacity(qs.len());
    for (key, q) in qs {
        let k = |sub: &str| format!("sources[{i}].{key}.{sub}");
        let Some((quantity, dimension)) = quantity_of(key) else {
            return Err(invalid(format!("sources[{i}].{key}"), "unknown quantity"));
        };
        let unit = Unit::parse(&q.unit).ok_or_else(|| {
            invalid(
                k("unit"),
                format!(
                    "unknown unit {:?} (expected one of {})",
                    q.unit,
                    Unit::names()
                ),
            )
        })?;
        if unit.dimension != dimension {
            return Err(invalid(
                k("unit"),
                format!(
                    "{:?} is not a unit of {key} (expected a unit convertible to {})",
                    q.unit,
                    dimension.si()
                ),
            ));
        }
        let scale = q.scale.unwrap_or(1.0);
        if !scale.is_finite() || scale <= 0.0 {
            return Err(invalid(
                k("scale"),
                format!("{scale} must be finite and above 0"),
            ));
        }
        let path = if json {
            if q.metric.is_some() {
                return Err(invalid(
                    k("metric"),
                    "not valid for type = \"http_json\" (use pointer)",
                ));
            }
            if q.labels.is_some() {
                return Err(invalid(k("labels"), "not valid for type = \"http_json\""));
            }
            let p = q.pointer.ok_or_else(|| invalid(k("pointer"), "missing"))?;
            if !(p.is_empty() || p.starts_with('/')) {
                return Err(invalid(
                    k("pointer"),
                    format!("{p:?} is not a JSON Pointer (it must start with /)"),
                ));
            }
            p
        } else {
            if q.pointer.is_some() {
                return Err(invalid(
                    k("pointer"),
                    "not valid for type = \"prometheus_text\" (use metric)",
                ));
            }
            let m = q.metric.ok_or_else(|| invalid(k("metric"), "missing"))?;
            if !crate::sources::prometheus_text::valid_metric_name(&m) {
                return Err(invalid(k("metric"), format!("{m:?} is not a metric name")));
            }
            m
        };
        out.push(QuantitySpec {
            key,
            quantity,
            path,
            labels: q.labels.unwrap_or_default(),
            unit,
            scale,
        });
    }
    Ok(out)
}

pub(super) fn build_http(
    i: usize,
    url: &str,
    timeout: Duration,
    method: Option<String>,
    body: Option<String>,
    common: MeterCommonConfig,
) -> Result<HttpSpec, ConfigError> {
    let url = parse_http_url(url).map_err(|e| invalid(format!("sources[{i}].url"), e))?;
    if timeout.is_zero() {
        return Err(invalid(format!("sources[{i}].timeout"), "must be above 0"));
    }
    let method = match method.as_deref() {
        None | Some("GET") => reqwest::Method::GET,
        Some("POST") => reqwest::Method::POST,
        Some(other) => {
            return Err(invalid(
                format!("sources[{i}].method"),
                format!("{other:?} (expected \"GET\" or \"POST\")"),
            ))
        }
    };
    if body.is_some() && method != reqwest::Method::POST {
        return Err(invalid(
            format!("sources[{i}].body"),
            "only valid with method = \"POST\"",
        ));
    }
    let c = build_common(i, common, timeout)?;
    Ok(HttpSpec {
        url,
        method,
        body,
        headers: c.headers,
        timeout,
        interval: c.interval,
        tls: c.tls,
    })
}

pub(super) fn build_http_json(i: usize, c: HttpJsonConfig) -> Result<HttpJsonSpec, ConfigError> {
    let meter = build_meter_id(i, &c.meter)?;
    let http = build_http(i, &c.url, c.timeout, c.method, c.body, c.common)?;
    let timestamp = match c.timestamp {
        None => None,
        Some(t) => {
            let format = match t.format.as_deref() {
                None | Some("rfc3339") => TimestampFormat::Rfc3339,
                Some("unix_s") => TimestampFormat::UnixSeconds,
                Some("unix_ms") => TimestampFormat::UnixMillis,
                Some(other) => {
                    return Err(invalid(
                        format!("sources[{i}].timestamp.format"),
                        format!("{other:?} (expected \"rfc3339\", \"unix_s\" or \"unix_ms\")"),
                    ))
                }
            };
            if !(t.pointer.is_empty() || t.pointer.starts_with('/')) {
                return Err(invalid(
                    format!("sources[{i}].timestamp.pointer"),
                    format!(
                        "{:?} is not a JSON Pointer (it must start with /)",
                        t.pointer
                    ),
                ));
            }
            Some(TimestampSpec {
                pointer: t.pointer,
                format,
            })
        }
    };
    let quantities = build_quantities(i, c.quantities, true)?;
    Ok(HttpJsonSpec {
        meter,
        http,
        timestamp,
        quantities,
    })
}

pub(super) fn build_prometheus_text(
    i: usize,
    c: PrometheusTextConfig,
) -> Result<PrometheusTextSpec, ConfigError> {
    let meter = build_meter_id(i, &c.meter)?;
    let http = build_http(i, &c.url, c.timeout, None, None, c.common)?;
    let quantities = build_quantities(i, c.quantities, false)?;
    Ok(PrometheusTextSpec {
        meter,
        http,
        quantities,
    })
}

/// An absolute `http`/`https` URL, or the reason it is not one.
pub(super) fn parse_http_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| e.to_string())?;
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(format!(
                "unsupported scheme {other:?} (expected http or https)"
            ))
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host".to_owned());
    }
    Ok(url)
}
