//! Reads one meter from another exporter's `/metrics` (an SNMP or Modbus
//! exporter in front of PDUs and UPSes): per quantity, a metric name plus
//! labels that must match exactly one sample; unit and scale converted to SI.
//!
//! The text exposition format (version 0.0.4) is parsed fully: `# HELP` and
//! `# TYPE` lines, label escapes (`\\`, `\"`, `\n`), `NaN`/`±Inf`, optional
//! millisecond timestamps. A malformed line fails the whole read, as it would
//! fail a Prometheus scrape.

use super::http_meter::HttpMeter;
use super::meter::{self, check_value, ErrorKind, Extracted, MeterError};
use super::Collected;
use crate::config::{PrometheusTextSpec, QuantitySpec};

/// One sample of an exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels in the order written.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
    /// The exposed timestamp, Unix ms.
    pub ts_ms: Option<i64>,
}

/// True for a valid metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
pub fn valid_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses a whole exposition; an error names the line.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let r = if let Some(rest) = line.strip_prefix('#') {
            comment(rest.trim_start())
        } else {
            sample(line).map(|s| out.push(s))
        };
        r.map_err(|e| format!("line {}: {e}", n + 1))?;
    }
    Ok(out)
}

fn comment(rest: &str) -> Result<(), String> {
    let mut words = rest.split_whitespace();
    match words.next() {
        Some("TYPE") => {
            let name = words.next().ok_or("# TYPE without a metric name")?;
            if !valid_metric_name(name) {
                return Err(format!("# TYPE: invalid metric name {name:?}"));
            }
            match words.next() {
                Some("counter" | "gauge" | "histogram" | "summary" | "untyped") => Ok(()),
                other => Err(format!("# TYPE {name}: unknown type {other:?}")),
            }
        }
        Some("HELP") => {
            let name = words.next().ok_or("# HELP without a metric name")?;
            if valid_metric_name(name) {
                Ok(())
            } else {
                Err(format!("# HELP: invalid metric name {name:?}"))
            }
        }
        _ => Ok(()),
    }
}

fn sample(line: &str) -> Result<Sample, String> {
    let end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..end];
    if !valid_metric_name(name) {
        return Err(format!("invalid metric name in {line:?}"));
    }
    let mut rest = line[end..].trim_start();
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        loop {
            while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
            match chars.peek() {
                Some((_, '}')) => {
                    chars.next();
                    break;
                }
                None => return Err("unterminated label set".to_owned()),
                _ => {}
            }
            let mut lname = String::new();
            while let Some((_, c)) = chars.next_if(|(_, c)| c.is_ascii_alphanumeric() || *c == '_')
            {
                lname.push(c);
            }
            if lname.is_empty() || lname.starts_with(|c: char| c.is_ascii_digit()) {
                return Err(format!("invalid label name in {line:?}"));
            }
            while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
            if chars.next().map(|(_, c)| c) != Some('=') {
                return Err(format!("label {lname}: expected ="));
            }
            while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {lname}: expected a quoted value"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    None => return Err(format!("label {lname}: unterminated value")),
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => {
                            return Err(format!(
                                "label {lname}: invalid escape \\{}",
                                other.map(|(_, c)| c).unwrap_or(' ')
                            ))
                        }
                    },
                    Some((_, c)) => value.push(c),
                }
            }
            labels.push((lname, value));
            while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
            match chars.next() {
                Some((_, ',')) => {}
                Some((_, '}')) => break,
                _ => return Err(format!("expected , or }} after label in {line:?}")),
            }
        }
        let consumed = chars.peek().map(|(i, _)| *i).unwrap_or(r.len());
        rest = r[consumed..].trim_start();
    }
    let mut parts = rest.split_whitespace();
    let v = parts
        .next()
        .ok_or_else(|| format!("no value in {line:?}"))?;
    let value = match v {
        "NaN" => f64::NAN,
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        _ => v
            .parse::<f64>()
            .map_err(|_| format!("invalid value {v:?}"))?,
    };
    let ts_ms = match parts.next() {
        None => None,
        Some(t) => Some(
            t.parse::<i64>()
                .map_err(|_| format!("invalid timestamp {t:?}"))?,
        ),
    };
    if parts.next().is_some() {
        return Err(format!("trailing text in {line:?}"));
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
        ts_ms,
    })
}

/// Picks the configured quantities from parsed samples; pure.
pub fn extract(samples: &[Sample], quantities: &[QuantitySpec]) -> Result<Extracted, MeterError> {
    let mut values = Vec::with_capacity(quantities.len());
    let mut ts = None;
    for q in quantities {
        let series = series_text(&q.path, q.labels.iter());
        let matching: Vec<&Sample> = samples
            .iter()
            .filter(|s| {
                s.name == q.path
                    && q.labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
            })
            .collect();
        let s = match matching.as_slice() {
            [one] => *one,
            [] => {
                return Err(MeterError::new(
                    ErrorKind::Parse,
                    format!("{}: no sample matches {series}", q.key),
                ))
            }
            many => {
                let first = series_text(&many[0].name, many[0].labels.iter().map(|(a, b)| (a, b)));
                return Err(MeterError::new(
                    ErrorKind::Parse,
                    format!(
                        "{}: {} samples match {series} (e.g. {first}); add labels to pick one",
                        q.key,
                        many.len()
                    ),
                ));
            }
        };
        let field = format!("{} ({series})", q.key);
        let v = check_value(q.quantity, q.unit.to_si(s.value * q.scale), &field)?;
        values.push((q.quantity, v));
        ts = ts.or(s.ts_ms);
    }
    Ok((values, ts))
}

fn series_text<'a>(name: &str, labels: impl Iterator<Item = (&'a String, &'a String)>) -> String {
    let l: Vec<String> = labels.map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", l.join(","))
}

/// One configured `type = "prometheus_text"` meter.
#[derive(Debug)]
pub struct PrometheusTextSource {
    /// The request and the meter.
    pub http: HttpMeter,
    quantities: Vec<QuantitySpec>,
}

impl PrometheusTextSource {
    /// A source for one configured meter.
    pub fn new(spec: PrometheusTextSpec) -> Result<Self, meter::ClientError> {
        Ok(Self {
            http: HttpMeter::new(&spec.meter, &spec.http)?,
            quantities: spec.quantities,
        })
    }

    /// Scrapes once.
    pub async fn collect(&self) -> Collected {
        self.http
            .read("text/plain;version=0.0.4", false, |body| {
                let text = String::from_utf8(body)
                    .map_err(|_| MeterError::new(ErrorKind::Parse, "body is not utf-8"))?;
                let samples = parse(&text)
                    .map_err(|e| MeterError::new(ErrorKind::Parse, format!("exposition {e}")))?;
                extract(&samples, &self.quantities)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_escapes_timestamps_and_specials() {
        let s = parse(
            "# HELP x Some help.\n# TYPE x gauge\nx{a=\"q\\\"\\\\\\n\",b=\"2\",} 1.5e3 1700000000000\ny NaN\nz{} +Inf\n",
        )
        .unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].labels[0], ("a".to_owned(), "q\"\\\n".to_owned()));
        assert_eq!(s[0].value, 1500.0);
        assert_eq!(s[0].ts_ms, Some(1_700_000_000_000));
        assert!(s[1].value.is_nan());
        assert_eq!(s[2].value, f64::INFINITY);
    }

    #[test]
    fn malformed_lines_name_the_line() {
        assert_eq!(
            parse("a 1\nb{c=\"d} 2\n").unwrap_err(),
            "line 2: label c: unterminated value"
        );
        assert!(parse("# TYPE a wat\n").unwrap_err().starts_with("line 1:"));
        assert!(parse("a one\n").is_err());
        assert!(parse("<html>\n").is_err());
    }
}
