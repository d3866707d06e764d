//! The HTTP side shared by the `http_json` and `prometheus_text` sources: one
//! configured meter, its request, client and reset tracker, and the turn of
//! an extracted answer into a [`Collected`]. Each source brings only how it
//! reads a body.

use std::time::Duration;

use dcwatt_wire::{Entity, Quantity, Reading};

use super::meter::{self, Extracted, MeterError, MeterStatus, ResetTracker};
use super::{now_ms, Collected};
use crate::config::HttpSpec;

/// One meter read over one HTTP request.
#[derive(Debug)]
pub struct HttpMeter {
    meter: String,
    http: HttpSpec,
    client: reqwest::Client,
    resets: ResetTracker,
}

impl HttpMeter {
    /// The meter `meter`, read with `http`.
    pub fn new(meter: &str, http: &HttpSpec) -> Result<Self, meter::ClientError> {
        Ok(Self {
            meter: meter.to_owned(),
            client: meter::client(http.timeout, &http.tls)?,
            http: http.clone(),
            resets: ResetTracker::default(),
        })
    }

    /// The meter id.
    pub fn meter(&self) -> &str {
        &self.meter
    }

    /// The time one read may take.
    pub fn timeout(&self) -> Duration {
        self.http.timeout
    }

    /// This meter's own interval, if configured.
    pub fn interval(&self) -> Option<Duration> {
        self.http.interval
    }

    /// Reads once: the request (with its configured body when `send_body`),
    /// asking for `accept`; `extract` reads the answer's body. An error names
    /// the request. The reading time is the request's midpoint unless the
    /// meter stamps its own.
    pub async fn read(
        &self,
        accept: &'static str,
        send_body: bool,
        extract: impl FnOnce(Vec<u8>) -> Result<Extracted, MeterError>,
    ) -> Collected {
        let h = &self.http;
        let start = now_ms();
        let answer = meter::fetch(
            &self.client,
            meter::Request {
                method: h.method.clone(),
                url: &h.url,
                headers: &h.headers,
                body: h.body.as_deref().filter(|_| send_body),
                accept,
            },
            None,
            false,
        )
        .await;
        let mid = start + (now_ms() - start) / 2;
        let result = answer.and_then(|a| {
            extract(a.body).map_err(|e| {
                MeterError::new(
                    e.kind,
                    format!("{} {}: {e}", h.method.as_str().to_lowercase(), h.url),
                )
            })
        });
        self.collected(result, mid)
    }

    /// One meter's extracted values (or its error) as a [`Collected`].
    fn collected(&self, result: Result<Extracted, MeterError>, mid_ms: i64) -> Collected {
        let meter = self.meter.as_str();
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
                let n = self.resets.observe(meter, energy, None);
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
}
