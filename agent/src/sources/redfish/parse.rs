//! Turns one Redfish resource (JSON) into readings in SI units. Pure: no I/O.
//!
//! Recognised, whatever the resource's `@odata.type`:
//! - sensor excerpts `PowerWatts` (else `InputPowerWatts`), `EnergykWh` (else
//!   `EnergyJoules`) — as in `PowerDistributionMetrics`, `Outlet`, `Circuit`,
//!   `PowerSupplyMetrics`, `EnvironmentMetrics`; `TemperatureCelsius` of an
//!   `EnvironmentMetrics` resource only;
//! - coolant connectors: `SupplyTemperatureCelsius`, `ReturnTemperatureCelsius`,
//!   `FlowLitersPerMinute` (L/min → m³/s), `HeatRemovedkW` (kW → W);
//! - a circuit with only `PolyPhasePowerWatts`: the sum of its phases;
//! - the legacy `Power` resource: the sum of `PowerControl[].PowerConsumedWatts`;
//! - a `Sensor` resource, by `ReadingType` (its unit is fixed by the schema;
//!   `ReadingUnits` is used only when it names a unit of the same dimension).
//!
//! `LifetimeReading` is preferred over `Reading` for energy. A null or missing
//! reading is absent, never 0. `DataSourceUri` is never followed.

use dcwatt_wire::Quantity;
use serde_json::{Map, Value};

use crate::sources::meter::{check_value, ErrorKind, MeterError, Unit};
use dcwatt_wire::time::parse_rfc3339_ms;

/// What one resource says, in SI units.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    /// `(quantity, value)`, each quantity at most once.
    pub values: Vec<(Quantity, f64)>,
    /// The device's own `ReadingTime`, Unix ms.
    pub reading_time_ms: Option<i64>,
    /// `SensorResetTime` of the energy reading: a change means the counter reset.
    pub reset_marker: Option<String>,
}

impl Parsed {
    /// The value of `q`, if reported.
    pub fn get(&self, q: Quantity) -> Option<f64> {
        self.values.iter().find(|(k, _)| *k == q).map(|(_, v)| *v)
    }

    fn push(&mut self, q: Quantity, v: Option<f64>) {
        if let Some(v) = v {
            if self.get(q).is_none() {
                self.values.push((q, v));
            }
        }
    }
}

/// Parses a body.
pub fn parse(body: &[u8]) -> Result<Parsed, MeterError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| MeterError::new(ErrorKind::Parse, format!("body is not json: {e}")))?;
    parse_value(&v)
}

/// Parses a decoded resource.
pub fn parse_value(v: &Value) -> Result<Parsed, MeterError> {
    let obj = v
        .as_object()
        .ok_or_else(|| MeterError::new(ErrorKind::Parse, "body is not a json object"))?;
    let mut p = Parsed {
        reading_time_ms: obj
            .get("ReadingTime")
            .and_then(Value::as_str)
            .and_then(parse_rfc3339_ms),
        ..Parsed::default()
    };

    if obj.get("ReadingType").is_some() && obj.contains_key("Reading") {
        sensor(obj, &mut p)?;
        return Ok(p);
    }

    let power = excerpt(obj, "PowerWatts", Quantity::PowerWatts, 1.0)?.or(excerpt(
        obj,
        "InputPowerWatts",
        Quantity::PowerWatts,
        1.0,
    )?);
    p.push(Quantity::PowerWatts, power);
    p.push(Quantity::PowerWatts, polyphase_power(obj)?);
    p.push(Quantity::PowerWatts, legacy_power(obj)?);

    let (kwh, kwh_marker) = energy_excerpt(obj, "EnergykWh", 3.6e6)?;
    let (j, j_marker) = energy_excerpt(obj, "EnergyJoules", 1.0)?;
    if kwh.is_some() {
        p.push(Quantity::EnergyJoules, kwh);
        p.reset_marker = kwh_marker;
    } else {
        p.push(Quantity::EnergyJoules, j);
        p.reset_marker = j_marker;
    }

    // Temperature only from EnvironmentMetrics: a PDU's or PSU's own
    // `TemperatureCelsius` is the device's, not the room's.
    let odata_type = obj.get("@odata.type").and_then(Value::as_str).unwrap_or("");
    if odata_type.starts_with("#EnvironmentMetrics.") {
        p.push(
            Quantity::TemperatureCelsius,
            excerpt(obj, "TemperatureCelsius", Quantity::TemperatureCelsius, 1.0)?,
        );
    }
    for (prop, q, factor) in [
        (
            "SupplyTemperatureCelsius",
            Quantity::CoolantSupplyTemperatureCelsius,
            1.0,
        ),
        (
            "ReturnTemperatureCelsius",
            Quantity::CoolantReturnTemperatureCelsius,
            1.0,
        ),
        (
            "FlowLitersPerMinute",
            Quantity::CoolantFlowCubicMetersPerSecond,
            1e-3 / 60.0,
        ),
        ("HeatRemovedkW", Quantity::HeatRemovedWatts, 1e3),
    ] {
        p.push(q, excerpt(obj, prop, q, factor)?);
    }
    Ok(p)
}

/// A `Sensor` resource: the quantity and unit come from `ReadingType`.
fn sensor(obj: &Map<String, Value>, p: &mut Parsed) -> Result<(), MeterError> {
    let ty = obj.get("ReadingType").and_then(Value::as_str).unwrap_or("");
    let (q, spec_unit) = match ty {
        "Power" => (Quantity::PowerWatts, "W"),
        "EnergykWh" => (Quantity::EnergyJoules, "kW.h"),
        "EnergyJoules" => (Quantity::EnergyJoules, "J"),
        "EnergyWh" => (Quantity::EnergyJoules, "W.h"),
        "Temperature" => (Quantity::TemperatureCelsius, "Cel"),
        "LiquidFlowLPM" => (Quantity::CoolantFlowCubicMetersPerSecond, "L/min"),
        "Heat" => (Quantity::HeatRemovedWatts, "kW"),
        // Voltage, current, humidity…: not a quantity dcwatt reports.
        _ => return Ok(()),
    };
    let spec = Unit::parse(spec_unit).ok_or_else(|| {
        MeterError::new(ErrorKind::Value, format!("no unit {spec_unit} for {ty}"))
    })?;
    // A vendor's `kW` on a power sensor is honoured; a unit of another
    // dimension (`kW` on an energy sensor, seen in the wild) is a label error.
    let unit = obj
        .get("ReadingUnits")
        .and_then(Value::as_str)
        .and_then(Unit::parse)
        .filter(|u| u.dimension == spec.dimension)
        .unwrap_or(spec);
    let field = if q == Quantity::EnergyJoules
        && number(obj, "LifetimeReading", "LifetimeReading")?.is_some()
    {
        "LifetimeReading"
    } else {
        "Reading"
    };
    let raw = number(obj, field, field)?;
    let v = raw
        .map(|x| check_value(q, unit.to_si(x), field))
        .transpose()?;
    p.push(q, v);
    if q == Quantity::EnergyJoules {
        p.reset_marker = obj
            .get("SensorResetTime")
            .and_then(Value::as_str)
            .map(str::to_owned);
    }
    Ok(())
}

/// `obj[prop].Reading × factor`, checked for `q`.
fn excerpt(
    obj: &Map<String, Value>,
    prop: &str,
    q: Quantity,
    factor: f64,
) -> Result<Option<f64>, MeterError> {
    let Some(s) = sub_object(obj, prop)? else {
        return Ok(None);
    };
    let field = format!("{prop}.Reading");
    number(s, "Reading", &field)?
        .map(|x| check_value(q, x * factor, &field))
        .transpose()
}

/// An energy excerpt: `LifetimeReading` if present, else `Reading`; and its
/// `SensorResetTime`.
fn energy_excerpt(
    obj: &Map<String, Value>,
    prop: &str,
    factor: f64,
) -> Result<(Option<f64>, Option<String>), MeterError> {
    let Some(s) = sub_object(obj, prop)? else {
        return Ok((None, None));
    };
    let lifetime = format!("{prop}.LifetimeReading");
    let reading = format!("{prop}.Reading");
    let (raw, field) = match number(s, "LifetimeReading", &lifetime)? {
        Some(x) => (Some(x), lifetime),
        None => (number(s, "Reading", &reading)?, reading),
    };
    let v = raw
        .map(|x| check_value(Quantity::EnergyJoules, x * factor, &field))
        .transpose()?;
    let marker = s
        .get("SensorResetTime")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok((v, marker))
}

/// A circuit with only per-phase power (`PolyPhasePowerWatts`): the sum of the
/// line-to-neutral readings (wye), else of the line-to-line ones (delta).
fn polyphase_power(obj: &Map<String, Value>) -> Result<Option<f64>, MeterError> {
    let Some(phases) = sub_object(obj, "PolyPhasePowerWatts")? else {
        return Ok(None);
    };
    let mut sums = [None::<f64>, None::<f64>];
    for (name, _) in phases {
        let slot = if name.ends_with("ToNeutral") { 0 } else { 1 };
        if let Some(x) = excerpt(phases, name, Quantity::PowerWatts, 1.0)? {
            sums[slot] = Some(sums[slot].unwrap_or(0.0) + x);
        }
    }
    Ok(sums[0].or(sums[1]))
}

/// The legacy `Power` resource: the sum of the reported
/// `PowerControl[].PowerConsumedWatts` (absent when none reports).
fn legacy_power(obj: &Map<String, Value>) -> Result<Option<f64>, MeterError> {
    let Some(list) = obj.get("PowerControl") else {
        return Ok(None);
    };
    let Some(list) = list.as_array() else {
        return Err(MeterError::new(
            ErrorKind::Value,
            format!("PowerControl: expected an array, got {}", kind(list)),
        ));
    };
    let mut sum = None;
    for (i, pc) in list.iter().enumerate() {
        let field = format!("PowerControl[{i}].PowerConsumedWatts");
        let Some(pc) = pc.as_object() else { continue };
        if let Some(x) = number(pc, "PowerConsumedWatts", &field)? {
            let x = check_value(Quantity::PowerWatts, x, &field)?;
            sum = Some(sum.unwrap_or(0.0) + x);
        }
    }
    Ok(sum)
}

fn sub_object<'a>(
    obj: &'a Map<String, Value>,
    prop: &str,
) -> Result<Option<&'a Map<String, Value>>, MeterError> {
    match obj.get(prop) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(s)) => Ok(Some(s)),
        Some(other) => Err(MeterError::new(
            ErrorKind::Value,
            format!("{prop}.Reading: expected an object, got {}", kind(other)),
        )),
    }
}

/// `obj[key]` as a finite number; `None` when missing or null.
fn number(obj: &Map<String, Value>, key: &str, field: &str) -> Result<Option<f64>, MeterError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| {
                MeterError::new(
                    ErrorKind::Value,
                    format!("{field}: {n} is not a finite number"),
                )
            }),
        Some(other) => Err(MeterError::new(
            ErrorKind::Value,
            format!("{field}: expected a number, got {}", kind(other)),
        )),
    }
}

/// A JSON value's kind, for error messages.
pub fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(path: &str) -> Vec<u8> {
        let full = format!(
            "{}/tests/fixtures/redfish/{path}/index.json",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(full).unwrap()
    }

    #[test]
    fn parses_the_dmtf_pdu_metrics() {
        let v = parse(&fixture("public-pdu/PowerEquipment/RackPDUs/1/Metrics")).unwrap();
        assert_eq!(v.get(Quantity::PowerWatts), Some(6438.0));
        assert_eq!(v.get(Quantity::EnergyJoules), Some(56438.0 * 3.6e6));
    }

    #[test]
    fn parses_the_legacy_power_resource() {
        let v = parse(&fixture("public-rackmount1/Chassis/1U/Power")).unwrap();
        assert_eq!(v.get(Quantity::PowerWatts), Some(344.0));
    }

    #[test]
    fn parses_a_coolant_connector() {
        let v = parse(&fixture(
            "public-cooling-unit/ThermalEquipment/CDUs/1/SecondaryCoolantConnectors/1",
        ))
        .unwrap();
        assert_eq!(v.get(Quantity::CoolantSupplyTemperatureCelsius), Some(30.0));
        assert_eq!(v.get(Quantity::CoolantReturnTemperatureCelsius), Some(48.0));
        assert_eq!(
            v.get(Quantity::CoolantFlowCubicMetersPerSecond),
            Some(42.0 * 1e-3 / 60.0)
        );
        assert_eq!(v.get(Quantity::HeatRemovedWatts), Some(25310.0));
    }

    #[test]
    fn null_or_missing_reading_is_absent() {
        let v = parse(br#"{"PowerWatts":{"Reading":null},"EnergykWh":{"Reading":1.5}}"#).unwrap();
        assert_eq!(v.get(Quantity::PowerWatts), None);
        assert_eq!(v.get(Quantity::EnergyJoules), Some(1.5 * 3.6e6));
        let v = parse(br#"{"PowerWatts":null,"EnergykWh":{}}"#).unwrap();
        assert!(v.values.is_empty());
    }

    #[test]
    fn lifetime_reading_and_reset_time_win() {
        let v = parse(
            br#"{"EnergykWh":{"Reading":1,"LifetimeReading":2,"SensorResetTime":"2024-01-01T00:00:00Z"}}"#,
        )
        .unwrap();
        assert_eq!(v.get(Quantity::EnergyJoules), Some(7.2e6));
        assert_eq!(v.reset_marker.as_deref(), Some("2024-01-01T00:00:00Z"));
    }

    #[test]
    fn sensor_by_reading_type() {
        let v = parse(br#"{"ReadingType":"EnergykWh","ReadingUnits":"kW","Reading":3,"ReadingTime":"2024-05-01T12:00:00Z"}"#).unwrap();
        assert_eq!(v.get(Quantity::EnergyJoules), Some(3.0 * 3.6e6));
        assert_eq!(v.reading_time_ms, Some(1_714_564_800_000));
        let v = parse(br#"{"ReadingType":"Power","ReadingUnits":"kW","Reading":3}"#).unwrap();
        assert_eq!(v.get(Quantity::PowerWatts), Some(3000.0));
        let v = parse(br#"{"ReadingType":"Voltage","ReadingUnits":"V","Reading":230}"#).unwrap();
        assert!(v.values.is_empty());
    }

    #[test]
    fn bad_values_are_errors() {
        assert_eq!(
            parse(b"<html>oops</html>").unwrap_err().kind,
            ErrorKind::Parse
        );
        assert_eq!(parse(b"[1]").unwrap_err().kind, ErrorKind::Parse);
        let e = parse(br#"{"PowerWatts":{"Reading":"NaN"}}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "PowerWatts.Reading: expected a number, got string \"NaN\""
        );
        let e = parse(br#"{"PowerWatts":{"Reading":-3}}"#).unwrap_err();
        assert_eq!(e.to_string(), "PowerWatts.Reading: negative value -3");
        assert!(parse(br#"{"EnergykWh":{"Reading":1e999}}"#).is_err());
        let e = parse(br#"{"EnergykWh":5}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "EnergykWh.Reading: expected an object, got number 5"
        );
    }
}
