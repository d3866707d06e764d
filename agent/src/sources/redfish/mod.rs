//! Reads facility meters over Redfish (HTTP or HTTPS): any resource that
//! carries power, energy, temperature or coolant readings (see [`parse`]).
//!
//! Two modes:
//! - explicit: one configured resource URL is one meter; a CDU (`CoolingUnit`)
//!   resource is read with its secondary coolant connectors and its
//!   `EnvironmentMetrics` (see `Inner::read_cdu`);
//! - discovery: from the service root, follow `@odata.id` links (never building
//!   URIs) under `PowerEquipment`, `Chassis`, `ThermalEquipment` and `Facilities`;
//!   every resource that yields a reading becomes a meter whose id is the
//!   configured prefix plus the resource path below the service root. The walk
//!   is repeated every [`REDISCOVER_AFTER`] and whenever it has never succeeded.
//!
//! Authentication: none, HTTP basic, or a Redfish session (`X-Auth-Token`,
//! logged in again on a 401/403). Timestamps: the device's `ReadingTime` when
//! plausible, else the request midpoint.

pub mod parse;

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dcwatt_wire::{Entity, Reading};
use reqwest::{Method, Url};
use serde_json::Value;
use tracing::{debug, info};

use super::meter::{self, ErrorKind, MeterError, MeterStatus, ResetTracker};
use super::{now_ms, Collected};
use crate::config::{RedfishAuth, RedfishSpec};

pub use super::meter::JOULES_PER_KWH;

/// How often discovery walks the service again to find new resources.
pub const REDISCOVER_AFTER: Duration = Duration::from_secs(3600);

/// The most resources one discovery walk visits.
pub const MAX_DISCOVERED_RESOURCES: usize = 5000;

/// Meters of one source read at the same time, at most. The embedded web
/// servers of PDUs and BMCs serve a few connections at once; a discovered
/// PDU has a hundred meters, and reading them all at once queued requests
/// behind each other until some passed their timeout (seen with the DMTF
/// mockups on a loaded machine). Each request's timeout runs from when it is
/// sent, not from when it waited for its turn.
pub const MAX_CONCURRENT_READS: usize = 4;

/// The collections discovery walks from the service root.
pub const DISCOVERY_ROOTS: [&str; 4] = [
    "PowerEquipment",
    "Chassis",
    "ThermalEquipment",
    "Facilities",
];

/// One configured `type = "redfish"` source.
#[derive(Debug)]
pub struct RedfishSource {
    inner: Arc<Inner>,
}

/// A discovered meter: its id and resource URL.
type Found = (String, Url);

#[derive(Debug)]
struct Inner {
    /// The meter id (explicit) or prefix (discovery).
    name: String,
    url: Url,
    discover: bool,
    timeout: Duration,
    interval: Option<Duration>,
    client: reqwest::Client,
    auth: RedfishAuth,
    /// The current session token.
    token: tokio::sync::Mutex<Option<String>>,
    resets: ResetTracker,
    /// Discovered meters and when they were found.
    found: Mutex<Option<(Instant, Vec<Found>)>>,
    /// [`MAX_CONCURRENT_READS`] permits.
    reads: tokio::sync::Semaphore,
}

impl RedfishSource {
    /// A source for one configured Redfish service or resource.
    pub fn new(spec: RedfishSpec) -> Result<Self, meter::ClientError> {
        let client = meter::client(spec.timeout, &spec.tls)?;
        Ok(Self {
            inner: Arc::new(Inner {
                name: spec.meter,
                url: spec.url,
                discover: spec.discover,
                timeout: spec.timeout,
                interval: spec.interval,
                client,
                auth: spec.auth,
                token: tokio::sync::Mutex::new(None),
                resets: ResetTracker::default(),
                found: Mutex::new(None),
                reads: tokio::sync::Semaphore::new(MAX_CONCURRENT_READS),
            }),
        })
    }

    /// The meter id (explicit mode) or the meter-id prefix (discovery).
    pub fn meter(&self) -> &str {
        &self.inner.name
    }

    /// This source's own interval, if configured.
    pub fn interval(&self) -> Option<Duration> {
        self.inner.interval
    }

    /// True in discovery mode.
    pub fn discovers(&self) -> bool {
        self.inner.discover
    }

    /// The meters this source reads now (discovery: those found so far).
    pub fn meters(&self) -> Vec<String> {
        if !self.inner.discover {
            return vec![self.inner.name.clone()];
        }
        self.inner
            .found
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(_, m)| m.iter().map(|(id, _)| id.clone()).collect())
            .unwrap_or_default()
    }

    /// The time one collection may take. Each request has `timeout`; an
    /// explicit read may need five (a session login: service root, POST, retry;
    /// a CDU: its connectors and metrics), a discovery walk many, so 30.
    pub fn timeout(&self) -> Duration {
        if self.inner.discover {
            self.inner.timeout.saturating_mul(30)
        } else {
            self.inner.timeout.saturating_mul(5)
        }
    }

    /// Reads every meter once. Never fails: failures are in the result.
    pub async fn collect(&self) -> Collected {
        if !self.inner.discover {
            let (status, readings) = self
                .inner
                .read_meter(&self.inner.name, &self.inner.url)
                .await;
            return Collected {
                readings,
                error: status.error.as_ref().map(ToString::to_string),
                meters: vec![status],
                ..Collected::default()
            };
        }
        let meters = match self.inner.discovered().await {
            Ok(m) => m,
            Err(e) => {
                let mut c = Collected::failed(e.to_string());
                c.meters = self
                    .meters()
                    .into_iter()
                    .map(|id| MeterStatus::down(id, e.clone()))
                    .collect();
                return c;
            }
        };
        let mut set = tokio::task::JoinSet::new();
        for (i, (id, url)) in meters.into_iter().enumerate() {
            let inner = Arc::clone(&self.inner);
            set.spawn(async move { (i, inner.read_meter(&id, &url).await) });
        }
        let mut results = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok(r) = r {
                results.push(r);
            }
        }
        results.sort_by_key(|(i, _)| *i);
        let mut c = Collected::default();
        let total = results.len();
        let mut first_error = None;
        let mut failed = 0;
        for (_, (status, readings)) in results {
            if let Some(e) = &status.error {
                failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
            c.readings.extend(readings);
            c.meters.push(status);
        }
        if total > 0 && failed == total {
            c.error = Some(format!(
                "all {total} meters failed; first: {}",
                first_error.unwrap_or_default()
            ));
        }
        c
    }
}

impl Inner {
    /// Reads one resource as meter `id`.
    async fn read_meter(&self, id: &str, url: &Url) -> (MeterStatus, Vec<Reading>) {
        // Never closed, so always a permit.
        let _turn = self.reads.acquire().await.ok();
        let start = now_ms();
        let result = match self.get_doc(url).await {
            Ok(doc) if !self.discover && is_cooling_unit(&doc) => self.read_cdu(url, &doc).await,
            Ok(doc) => parse::parse_value(&doc)
                .map_err(|e| MeterError::new(e.kind, format!("get {url}: {e}"))),
            Err(e) => Err(e),
        };
        let mid = start + (now_ms() - start) / 2;
        match result {
            Err(e) => (MeterStatus::down(id, e), Vec::new()),
            Ok(p) => {
                let ts_ms = meter::pick_ts(p.reading_time_ms, mid);
                let energy = p.get(dcwatt_wire::Quantity::EnergyJoules);
                let resets = self.resets.observe(id, energy, p.reset_marker.as_deref());
                if resets > 0 {
                    info!(meter = %id, "Meter energy counter reset.");
                }
                let readings = p
                    .values
                    .iter()
                    .map(|&(quantity, value)| Reading {
                        ts_ms,
                        entity: Entity::Meter(id.to_owned()),
                        quantity,
                        value,
                    })
                    .collect();
                (MeterStatus::up(id, resets), readings)
            }
        }
    }

    /// GETs `url` and decodes its JSON.
    async fn get_doc(&self, url: &Url) -> Result<Value, MeterError> {
        let body = self.get_json(url).await?;
        serde_json::from_slice(&body).map_err(|e| {
            MeterError::new(
                ErrorKind::Parse,
                format!("get {url}: body is not json: {e}"),
            )
        })
    }

    /// A CDU (`CoolingUnit`) read as one meter: its secondary (rack-side)
    /// coolant connectors — temperatures when there is exactly one, flow and
    /// heat removed summed over all — and its `EnvironmentMetrics` (the CDU's
    /// own power, energy and temperature), following the `@odata.id` links.
    async fn read_cdu(&self, url: &Url, cdu: &Value) -> Result<parse::Parsed, MeterError> {
        use dcwatt_wire::Quantity as Q;
        let link = |v: &Value, key: &str| -> Option<Url> {
            v.get(key)
                .and_then(|l| l.get("@odata.id"))
                .and_then(Value::as_str)
                .and_then(|p| url.join(p).ok())
        };
        let in_body = |u: &Url, e: MeterError| MeterError::new(e.kind, format!("get {u}: {e}"));
        let mut out = parse::Parsed::default();
        if let Some(env_url) = link(cdu, "EnvironmentMetrics") {
            let doc = self.get_doc(&env_url).await?;
            out = parse::parse_value(&doc).map_err(|e| in_body(&env_url, e))?;
        }
        if let Some(coll_url) = link(cdu, "SecondaryCoolantConnectors") {
            let coll = self.get_doc(&coll_url).await?;
            let members: Vec<Url> = coll
                .get("Members")
                .and_then(Value::as_array)
                .map(|m| {
                    m.iter()
                        .filter_map(|x| x.get("@odata.id").and_then(Value::as_str))
                        .filter_map(|p| url.join(p).ok())
                        .collect()
                })
                .unwrap_or_default();
            let single = members.len() == 1;
            let mut flow = None::<f64>;
            let mut heat = None::<f64>;
            for m in &members {
                let doc = self.get_doc(m).await?;
                let p = parse::parse_value(&doc).map_err(|e| in_body(m, e))?;
                if let Some(x) = p.get(Q::CoolantFlowCubicMetersPerSecond) {
                    flow = Some(flow.unwrap_or(0.0) + x);
                }
                if let Some(x) = p.get(Q::HeatRemovedWatts) {
                    heat = Some(heat.unwrap_or(0.0) + x);
                }
                if single {
                    for q in [
                        Q::CoolantSupplyTemperatureCelsius,
                        Q::CoolantReturnTemperatureCelsius,
                    ] {
                        if let Some(x) = p.get(q) {
                            out.values.push((q, x));
                        }
                    }
                }
            }
            for (q, v) in [
                (Q::CoolantFlowCubicMetersPerSecond, flow),
                (Q::HeatRemovedWatts, heat),
            ] {
                if let Some(v) = v {
                    out.values.push((q, v));
                }
            }
        }
        Ok(out)
    }

    /// GETs `url` with the configured authentication; a session is opened (or
    /// opened again after a 401/403) as needed.
    async fn get_json(&self, url: &Url) -> Result<Vec<u8>, MeterError> {
        match &self.auth {
            RedfishAuth::None => Ok(self.get(url, None, false).await?.body),
            RedfishAuth::Basic { username, password } => {
                let header = format!("Basic {}", base64(&format!("{username}:{password}")));
                Ok(self
                    .get(url, Some(("authorization", &header)), false)
                    .await?
                    .body)
            }
            RedfishAuth::Session { .. } => {
                let used = {
                    let mut token = self.token.lock().await;
                    if token.is_none() {
                        *token = Some(self.login().await?);
                    }
                    token.clone().unwrap_or_default()
                };
                let a = self.get(url, Some(("x-auth-token", &used)), true).await?;
                if a.status.is_success() {
                    return Ok(a.body);
                }
                debug!(url = %url, status = %a.status, "Redfish session refused; logging in again.");
                let fresh = {
                    let mut token = self.token.lock().await;
                    // Another meter of this source may have logged in already.
                    if token.as_deref().is_none_or(|t| t == used) {
                        *token = Some(self.login().await?);
                    }
                    token.clone().unwrap_or_default()
                };
                Ok(self
                    .get(url, Some(("x-auth-token", &fresh)), false)
                    .await?
                    .body)
            }
        }
    }

    async fn get(
        &self,
        url: &Url,
        header: Option<(&str, &str)>,
        auth_ok: bool,
    ) -> Result<meter::Answer, MeterError> {
        meter::fetch(
            &self.client,
            meter::Request {
                method: Method::GET,
                url,
                headers: &[],
                body: None,
                accept: "application/json",
            },
            header,
            auth_ok,
        )
        .await
    }

    /// Opens a Redfish session; returns its token. The sessions collection is
    /// the service root's `Links.Sessions`, else the one the standard fixes.
    async fn login(&self) -> Result<String, MeterError> {
        let RedfishAuth::Session { username, password } = &self.auth else {
            return Err(MeterError::new(ErrorKind::Auth, "no session credentials"));
        };
        let root = self.service_root();
        let sessions = match self.get(&root, None, false).await {
            Ok(a) => serde_json::from_slice::<Value>(&a.body)
                .ok()
                .and_then(|v| {
                    v.pointer("/Links/Sessions/@odata.id")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .and_then(|p| root.join(&p).ok()),
            Err(_) => None,
        };
        let sessions = match sessions {
            Some(s) => s,
            None => root
                .join("/redfish/v1/SessionService/Sessions")
                .map_err(|e| MeterError::new(ErrorKind::Auth, e.to_string()))?,
        };
        let body = serde_json::json!({ "UserName": username, "Password": password }).to_string();
        let a = meter::fetch(
            &self.client,
            meter::Request {
                method: Method::POST,
                url: &sessions,
                headers: &[],
                body: Some(&body),
                accept: "application/json",
            },
            None,
            false,
        )
        .await
        .map_err(|e| MeterError::new(ErrorKind::Auth, format!("login: {e}")))?;
        a.headers
            .get("x-auth-token")
            .and_then(|v| v.to_str().ok())
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                MeterError::new(
                    ErrorKind::Auth,
                    format!("login: post {sessions}: no X-Auth-Token in the answer"),
                )
            })
    }

    /// The service root: the configured URL in discovery mode, else
    /// `/redfish/v1/` on the meter's host (fixed by the standard).
    fn service_root(&self) -> Url {
        if self.discover {
            return self.url.clone();
        }
        self.url
            .join("/redfish/v1/")
            .unwrap_or_else(|_| self.url.clone())
    }

    /// The discovered meters, walking the service first when due.
    async fn discovered(&self) -> Result<Vec<(String, Url)>, MeterError> {
        {
            let found = self.found.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((at, m)) = found.as_ref() {
                if at.elapsed() < REDISCOVER_AFTER {
                    return Ok(m.clone());
                }
            }
        }
        let meters = self.walk().await?;
        if meters.is_empty() {
            tracing::warn!(prefix = %self.name, url = %self.url, "Redfish discovery found no meter.");
        } else {
            info!(prefix = %self.name, meters = meters.len(), "Redfish discovery done.");
        }
        *self.found.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), meters.clone()));
        Ok(meters)
    }

    /// Walks the service from its root, following `@odata.id` links only.
    async fn walk(&self) -> Result<Vec<(String, Url)>, MeterError> {
        let root = &self.url;
        let body = self.get_json(root).await?;
        let root_doc: Value = serde_json::from_slice(&body).map_err(|e| {
            MeterError::new(
                ErrorKind::Parse,
                format!("get {root}: service root is not json: {e}"),
            )
        })?;
        let mut prefixes = Vec::new();
        let mut queue = VecDeque::new();
        for key in DISCOVERY_ROOTS {
            if let Some(p) = root_doc
                .get(key)
                .and_then(|v| v.get("@odata.id"))
                .and_then(Value::as_str)
            {
                prefixes.push(p.trim_end_matches('/').to_owned());
                queue.push_back(p.to_owned());
            }
        }
        let root_path = root.path().trim_end_matches('/').to_owned();
        let mut seen: BTreeSet<String> = queue.iter().cloned().collect();
        let mut meters = Vec::new();
        let mut visited = 0;
        while let Some(path) = queue.pop_front() {
            if visited >= MAX_DISCOVERED_RESOURCES {
                break;
            }
            visited += 1;
            let Ok(url) = root.join(&path) else { continue };
            // A dangling link is tolerated: skipped, not fatal.
            let doc = match self.get_json(&url).await {
                Ok(b) => match serde_json::from_slice::<Value>(&b) {
                    Ok(v) => v,
                    Err(_) => continue,
                },
                Err(e) => {
                    debug!(url = %url, error = %e, "Redfish discovery skipped a resource.");
                    continue;
                }
            };
            if parse::parse_value(&doc).is_ok_and(|p| !p.values.is_empty()) {
                let rel = path
                    .trim_end_matches('/')
                    .strip_prefix(&root_path)
                    .unwrap_or(&path)
                    .to_owned();
                meters.push((meter_id(&self.name, &rel), url));
            }
            let mut links = Vec::new();
            collect_links(&doc, &mut links);
            for l in links {
                let l = l.trim_end_matches('/');
                let under_root = prefixes
                    .iter()
                    .any(|p| l == p || l.starts_with(&format!("{p}/")));
                if under_root && !l.contains('#') && seen.insert(l.to_owned()) {
                    queue.push_back(l.to_owned());
                }
            }
        }
        Ok(meters)
    }
}

/// A discovered meter's id: the prefix, then the resource path below the
/// service root with `/` as `.`, and any character outside the collector's id
/// alphabet (`[A-Za-z0-9._:-]`) as `_`: `pdu-r1` + `/Chassis/PDU/Sensors/PowerA`
/// → `pdu-r1.Chassis.PDU.Sensors.PowerA`.
fn meter_id(prefix: &str, rel: &str) -> String {
    let path: String = rel
        .chars()
        .map(|c| match c {
            '/' => '.',
            c if c.is_ascii_alphanumeric() || "._:-".contains(c) => c,
            _ => '_',
        })
        .collect();
    format!("{prefix}{path}")
}

/// True for a `CoolingUnit` resource (a CDU).
fn is_cooling_unit(doc: &Value) -> bool {
    doc.get("@odata.type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.starts_with("#CoolingUnit."))
}

/// Every `@odata.id` in a resource except its own, outside `Links` (cross
/// references, walked from their own owner instead).
fn collect_links(v: &Value, out: &mut Vec<String>) {
    fn rec(v: &Value, out: &mut Vec<String>, top: bool) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    if k == "@odata.id" {
                        if !top {
                            if let Some(s) = child.as_str() {
                                out.push(s.to_owned());
                            }
                        }
                    } else if k != "Links" && k != "RelatedItem" && k != "Actions" {
                        rec(child, out, false);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|c| rec(c, out, false)),
            _ => {}
        }
    }
    rec(v, out, true);
}

/// Standard base64 with padding (for the basic-auth header).
fn base64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &x)| acc | (u32::from(x) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovered_ids_use_the_collector_alphabet() {
        assert_eq!(
            meter_id("pdu-r1", "/Chassis/PDU/Sensors/PowerA"),
            "pdu-r1.Chassis.PDU.Sensors.PowerA"
        );
        assert_eq!(meter_id("cdu", "/CDUs/1 (A)#x"), "cdu.CDUs.1__A__x");
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(""), "");
        assert_eq!(base64("f"), "Zg==");
        assert_eq!(base64("fo"), "Zm8=");
        assert_eq!(base64("foo"), "Zm9v");
        assert_eq!(base64("admin:secret"), "YWRtaW46c2VjcmV0");
    }

    #[test]
    fn links_skip_self_and_cross_references() {
        let v: Value = serde_json::from_str(
            r#"{"@odata.id":"/a","B":{"@odata.id":"/a/b"},"Members":[{"@odata.id":"/a/c"}],
                "Links":{"Chassis":[{"@odata.id":"/x"}]}}"#,
        )
        .unwrap();
        let mut out = Vec::new();
        collect_links(&v, &mut out);
        assert_eq!(out, vec!["/a/b".to_owned(), "/a/c".to_owned()]);
    }
}
