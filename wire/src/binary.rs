//! A compact binary encoding of a [`Batch`], for agents told to use it
//! (`[[collectors]] encoding = "binary"`): the same batch as the JSON one,
//! decoded by the collector at a fraction of the cost (no text to scan, each
//! GPU UUID, meter id and quantity name written once per request, not once
//! per reading). Sent with `Content-Type:` [`CONTENT_TYPE`]; collectors
//! accept JSON (`application/json`) and this side by side, so agents already
//! deployed go on as they are. A collector older than this refuses the
//! binary form with 415: upgrade collectors first, then turn agents over.
//!
//! # Layout (version 1)
//! Integers are LEB128 varints (`u`: unsigned; `s`: signed, zigzag), at
//! most 10 bytes; `f64` is 8 bytes, little-endian; strings are referred to
//! by their index in the string table.
//!
//! ```text
//! magic       4 bytes  "DCWB"
//! format      1 byte   1
//! strings     u count, then each: u byte length, UTF-8 bytes
//! version     u        (Batch::version)
//! agent       u        string index
//! node        u        string index
//! seq         u
//! first_seq   u        0: none; n: n - 1
//! created_ms  s
//! gpus        u count, then each: uuid (u string index), index (u),
//!                      model (u string index), module (u: 0 none; n: string n - 1)
//! readings    u count, then each: kind (1 byte: 0 gpu, 1 meter, 2 node,
//!                      3 module, 4 a kind this version does not know, by its key),
//!                      id or key (u string index), quantity (u string index of its
//!                      wire name), ts_ms - created_ms (s), value (f64)
//! ```
//!
//! Nothing may follow the last reading. A quantity name this version does
//! not know decodes as [`Quantity::Other`], as in JSON. Decoding checks
//! every length against the bytes left before allocating, so a hostile body
//! costs at most its own size; the values are then validated like a JSON
//! batch's (the collector's `ingest`: finite values, sane times, ids).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{Batch, Entity, GpuInfo, Quantity, Reading};

/// The media type of the binary form.
pub const CONTENT_TYPE: &str = "application/vnd.dcwatt.batch";

/// The media type of the JSON form.
pub const JSON_CONTENT_TYPE: &str = "application/json";

const MAGIC: &[u8; 4] = b"DCWB";
const FORMAT: u8 = 1;

/// How an agent encodes the batches it posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// JSON (`application/json`): what every collector reads.
    #[default]
    Json,
    /// This module's form ([`CONTENT_TYPE`]).
    Binary,
}

impl Encoding {
    /// Its `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => JSON_CONTENT_TYPE,
            Encoding::Binary => CONTENT_TYPE,
        }
    }

    /// The encoding of a request's `Content-Type` (parameters after `;`
    /// ignored), `None` for one a collector does not read.
    pub fn of_content_type(value: &str) -> Option<Encoding> {
        let media = value.split(';').next().unwrap_or("").trim();
        if media.eq_ignore_ascii_case(JSON_CONTENT_TYPE) {
            Some(Encoding::Json)
        } else if media.eq_ignore_ascii_case(CONTENT_TYPE) {
            Some(Encoding::Binary)
        } else {
            None
        }
    }
}

/// Encodes a batch. Infallible: every batch has a binary form.
pub fn encode(batch: &Batch) -> Vec<u8> {
    let mut table = Table::default();
    let agent = table.index(&batch.agent);
    let node = table.index(&batch.node);
    let gpus: Vec<(u64, u64, u64)> = batch
        .gpus
        .iter()
        .map(|g| {
            let module = g.module.as_deref().map_or(0, |m| table.index(m) + 1);
            (table.index(&g.uuid), table.index(&g.model), module)
        })
        .collect();
    let mut quantities: BTreeMap<Quantity, u64> = BTreeMap::new();
    let readings: Vec<(u8, u64, u64)> = batch
        .readings
        .iter()
        .map(|r| {
            let q = *quantities
                .entry(r.quantity)
                .or_insert_with(|| table.index(&quantity_name(r.quantity)));
            let (kind, id) = match &r.entity {
                Entity::Gpu(id) => (0, id),
                Entity::Meter(id) => (1, id),
                Entity::Node(id) => (2, id),
                Entity::Module(id) => (3, id),
                Entity::Other(key) => (4, key),
            };
            (kind, table.index(id), q)
        })
        .collect();

    let mut out = Vec::with_capacity(64 + table.bytes + batch.readings.len() * 14);
    out.extend_from_slice(MAGIC);
    out.push(FORMAT);
    put_u(&mut out, table.strings.len() as u64);
    for s in &table.strings {
        put_u(&mut out, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    }
    put_u(&mut out, u64::from(batch.version));
    put_u(&mut out, agent);
    put_u(&mut out, node);
    put_u(&mut out, batch.seq);
    // `first_seq` + 1 (0: none); u64::MAX has no room and is left out (no
    // real spool reaches it; the collector refuses seqs above i64::MAX).
    put_u(
        &mut out,
        batch.first_seq.and_then(|f| f.checked_add(1)).unwrap_or(0),
    );
    put_s(&mut out, batch.created_ms);
    put_u(&mut out, gpus.len() as u64);
    for (g, (uuid, model, module)) in batch.gpus.iter().zip(gpus) {
        put_u(&mut out, uuid);
        put_u(&mut out, u64::from(g.index));
        put_u(&mut out, model);
        put_u(&mut out, module);
    }
    put_u(&mut out, readings.len() as u64);
    for (r, (kind, id, q)) in batch.readings.iter().zip(readings) {
        out.push(kind);
        put_u(&mut out, id);
        put_u(&mut out, q);
        put_s(&mut out, r.ts_ms.wrapping_sub(batch.created_ms));
        out.extend_from_slice(&r.value.to_le_bytes());
    }
    out
}

/// Decodes a batch; the error says what is wrong and where (byte offset).
pub fn decode(body: &[u8]) -> Result<Batch, String> {
    let mut r = Reader { buf: body, at: 0 };
    if r.take(4)? != MAGIC {
        return Err("not a binary batch (no DCWB magic)".into());
    }
    let format = r.byte()?;
    if format != FORMAT {
        return Err(format!(
            "binary batch format {format}, this version reads {FORMAT}"
        ));
    }
    // Each string takes at least its length byte.
    let n = r.count(1, "strings")?;
    let mut strings: Vec<&str> = Vec::with_capacity(n);
    for _ in 0..n {
        let len = r.count(1, "string length")?;
        let at = r.at;
        let bytes = r.take(len)?;
        strings.push(
            std::str::from_utf8(bytes).map_err(|_| format!("string at byte {at} is not UTF-8"))?,
        );
    }
    let string = |r: &mut Reader<'_>, what: &str| -> Result<String, String> {
        let at = r.at;
        let i = r.u()?;
        usize::try_from(i)
            .ok()
            .and_then(|i| strings.get(i))
            .map(|s| (*s).to_owned())
            .ok_or_else(|| format!("{what} at byte {at}: no string {i} in the table"))
    };
    let at = r.at;
    let version =
        u32::try_from(r.u()?).map_err(|_| format!("version at byte {at}: out of range"))?;
    let agent = string(&mut r, "agent")?;
    let node = string(&mut r, "node")?;
    let seq = r.u()?;
    let first_seq = r.u()?.checked_sub(1);
    let created_ms = r.s()?;
    // A GPU takes at least 4 bytes, a reading 12.
    let n = r.count(4, "gpus")?;
    let mut gpus = Vec::with_capacity(n);
    for _ in 0..n {
        let uuid = string(&mut r, "gpu uuid")?;
        let at = r.at;
        let index =
            u32::try_from(r.u()?).map_err(|_| format!("gpu index at byte {at}: out of range"))?;
        let model = string(&mut r, "gpu model")?;
        let at = r.at;
        let module = match r.u()? {
            0 => None,
            m => Some(
                usize::try_from(m - 1)
                    .ok()
                    .and_then(|i| strings.get(i))
                    .map(|s| (*s).to_owned())
                    .ok_or_else(|| {
                        format!("gpu module at byte {at}: no string {} in the table", m - 1)
                    })?,
            ),
        };
        gpus.push(GpuInfo {
            uuid,
            index,
            model,
            module,
        });
    }
    // Each table entry's quantity, parsed once.
    let mut quantities: Vec<Option<Quantity>> = vec![None; strings.len()];
    let n = r.count(12, "readings")?;
    let mut readings = Vec::with_capacity(n);
    for _ in 0..n {
        let at = r.at;
        let kind = r.byte()?;
        let id = string(&mut r, "entity")?;
        let entity = match kind {
            0 => Entity::Gpu(id),
            1 => Entity::Meter(id),
            2 => Entity::Node(id),
            3 => Entity::Module(id),
            4 => Entity::Other(id),
            k => {
                return Err(format!(
                    "reading at byte {at}: entity kind {k} is not 0..=4"
                ))
            }
        };
        let qat = r.at;
        let q = usize::try_from(r.u()?)
            .ok()
            .filter(|i| *i < strings.len())
            .ok_or_else(|| format!("quantity at byte {qat}: not in the string table"))?;
        let quantity = *quantities[q].get_or_insert_with(|| quantity_of(strings[q]));
        let ts_ms = created_ms.wrapping_add(r.s()?);
        let value = f64::from_le_bytes(r.take(8)?.try_into().map_err(|_| "short value")?);
        readings.push(Reading {
            ts_ms,
            entity,
            quantity,
            value,
        });
    }
    if r.at != body.len() {
        return Err(format!(
            "{} bytes after the last reading (at byte {})",
            body.len() - r.at,
            r.at
        ));
    }
    Ok(Batch {
        version,
        agent,
        seq,
        first_seq,
        node,
        created_ms,
        gpus,
        readings,
    })
}

/// A quantity's wire name (its JSON string).
fn quantity_name(q: Quantity) -> String {
    serde_json::to_value(q)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The quantity of a wire name; [`Quantity::Other`] for one not known.
fn quantity_of(name: &str) -> Quantity {
    Quantity::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(name))
        .unwrap_or(Quantity::Other)
}

/// The string table being built: each distinct string once, by first use.
#[derive(Default)]
struct Table {
    strings: Vec<String>,
    index: BTreeMap<String, u64>,
    bytes: usize,
}

impl Table {
    fn index(&mut self, s: &str) -> u64 {
        if let Some(i) = self.index.get(s) {
            return *i;
        }
        let i = self.strings.len() as u64;
        self.strings.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        self.bytes += s.len() + 2;
        i
    }
}

fn put_u(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_s(out: &mut Vec<u8>, v: i64) {
    put_u(out, ((v << 1) ^ (v >> 63)) as u64);
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| format!("truncated at byte {} (wanted {n} more)", self.at))?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u(&mut self) -> Result<u64, String> {
        let start = self.at;
        let mut v: u64 = 0;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            let part = u64::from(b & 0x7f);
            if shift == 63 && part > 1 {
                return Err(format!("integer at byte {start} overflows 64 bits"));
            }
            v |= part << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("integer at byte {start} is longer than 10 bytes"))
    }

    fn s(&mut self) -> Result<i64, String> {
        let u = self.u()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    /// A count of items each taking at least `min_bytes`: refused when the
    /// bytes left cannot hold them (so nothing is allocated for a lie).
    fn count(&mut self, min_bytes: usize, what: &str) -> Result<usize, String> {
        let at = self.at;
        let n = self.u()?;
        let left = self.buf.len() - self.at;
        usize::try_from(n)
            .ok()
            .filter(|n| n.saturating_mul(min_bytes) <= left)
            .ok_or_else(|| format!("{what} at byte {at}: {n} do not fit in the {left} bytes left"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VERSION;

    fn batch() -> Batch {
        Batch {
            version: VERSION,
            agent: "node-1".into(),
            seq: 300,
            first_seq: Some(296),
            node: "node-1".into(),
            created_ms: 1_764_000_000_000,
            gpus: vec![
                GpuInfo {
                    uuid: "GPU-a".into(),
                    index: 0,
                    model: "NVIDIA GB300".into(),
                    module: Some("sn-1".into()),
                },
                GpuInfo {
                    uuid: "GPU-b".into(),
                    index: 1,
                    model: "NVIDIA GB300".into(),
                    module: None,
                },
            ],
            readings: vec![
                Reading {
                    ts_ms: 1_764_000_000_000,
                    entity: Entity::Gpu("GPU-a".into()),
                    quantity: Quantity::PowerWatts,
                    value: 512.25,
                },
                Reading {
                    ts_ms: 1_763_999_996_000,
                    entity: Entity::Gpu("GPU-b".into()),
                    quantity: Quantity::EnergyJoules,
                    value: 1.5e12,
                },
                Reading {
                    ts_ms: 1_764_000_000_010,
                    entity: Entity::Meter("pdu-1".into()),
                    quantity: Quantity::EnergyJoules,
                    value: -0.0,
                },
                Reading {
                    ts_ms: 0,
                    entity: Entity::Node("node-1".into()),
                    quantity: Quantity::Other,
                    value: 7.0,
                },
                Reading {
                    ts_ms: i64::MAX,
                    entity: Entity::Module("sn-1".into()),
                    quantity: Quantity::IntegratedEnergyJoules,
                    value: 1.0,
                },
                Reading {
                    ts_ms: i64::MIN,
                    entity: Entity::Other("rack".into()),
                    quantity: Quantity::GpuUp,
                    value: f64::MAX,
                },
            ],
        }
    }

    #[test]
    fn round_trips_every_field_and_is_smaller_than_json() {
        let b = batch();
        let bytes = encode(&b);
        assert_eq!(decode(&bytes).unwrap(), b);
        let mut none = b.clone();
        none.first_seq = None;
        none.gpus.clear();
        none.readings.clear();
        assert_eq!(decode(&encode(&none)).unwrap(), none);
        let json = serde_json::to_vec(&b).unwrap();
        assert!(
            bytes.len() * 2 < json.len(),
            "{} vs {}",
            bytes.len(),
            json.len()
        );
    }

    #[test]
    fn every_truncation_and_any_trailing_byte_is_an_error() {
        let bytes = encode(&batch());
        for n in 0..bytes.len() {
            let e = decode(&bytes[..n]).unwrap_err();
            assert!(!e.is_empty(), "{n}");
        }
        let mut more = bytes.clone();
        more.push(0);
        assert!(decode(&more)
            .unwrap_err()
            .contains("after the last reading"));
    }

    #[test]
    fn hostile_bodies_are_refused_with_a_reason() {
        let mut head = MAGIC.to_vec();
        head.push(FORMAT);
        let with = |tail: &[u8]| {
            let mut v = head.clone();
            v.extend_from_slice(tail);
            decode(&v).unwrap_err()
        };
        assert!(decode(b"{\"version\":1}").unwrap_err().contains("magic"));
        assert!(decode(b"DCWB\x02").unwrap_err().contains("format 2"));
        // A billion strings in a few bytes: refused before any allocation.
        assert!(with(&[0x80, 0x94, 0xeb, 0xdc, 0x03]).contains("do not fit"));
        // An 11-byte varint, and one that overflows 64 bits.
        let mut long = [0x80u8; 11];
        long[10] = 0;
        assert!(with(&long).contains("longer than 10 bytes"));
        assert!(
            with(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f])
                .contains("overflows")
        );
        // Invalid UTF-8 in the table.
        assert!(with(&[1, 2, 0xc3, 0x28]).contains("not UTF-8"));
        // A string index past the table (agent = string 5 of 1).
        assert!(with(&[1, 1, b'a', 1, 5]).contains("no string 5"));
        // An unknown entity kind.
        let mut b = encode(&Batch {
            readings: vec![batch().readings[0].clone()],
            ..batch()
        });
        let kind_at = b.len() - 8 - 1 - 1 - 1 - 1;
        assert_eq!(b[kind_at], 0);
        b[kind_at] = 9;
        assert!(decode(&b).unwrap_err().contains("entity kind 9"));
    }

    #[test]
    fn an_unknown_quantity_name_decodes_as_other() {
        let mut b = batch();
        b.readings.truncate(1);
        let bytes = encode(&b);
        let name = quantity_name(Quantity::PowerWatts);
        assert_eq!(name, "power_watts");
        let at = bytes
            .windows(name.len())
            .position(|w| w == name.as_bytes())
            .unwrap();
        let mut renamed = bytes.clone();
        renamed[at..at + name.len()].copy_from_slice(b"power_wattz");
        assert_eq!(
            decode(&renamed).unwrap().readings[0].quantity,
            Quantity::Other
        );
    }

    #[test]
    fn content_types_are_recognised_with_parameters() {
        for (ct, e) in [
            ("application/json", Some(Encoding::Json)),
            ("application/json; charset=utf-8", Some(Encoding::Json)),
            ("Application/JSON", Some(Encoding::Json)),
            (CONTENT_TYPE, Some(Encoding::Binary)),
            ("application/vnd.dcwatt.batch; v=1", Some(Encoding::Binary)),
            ("text/plain", None),
            ("", None),
            ("application/jsonx", None),
        ] {
            assert_eq!(Encoding::of_content_type(ct), e, "{ct}");
        }
    }
}
