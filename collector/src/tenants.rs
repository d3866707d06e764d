//! Leases and the attribution of GPU energy to tenants.
//!
//! A lease gives a tenant nodes (names or globs with `*` and `?`) or GPUs (by
//! UUID) over `[from, to)`. Each GPU-minute of energy is split by time among
//! the leases that cover it: time no lease covers is *unleased*; time two
//! leases cover at once (a configuration conflict the static check could not
//! see, such as two globs matching one node) is *unattributed*. The parts add
//! up to the GPU-minute's energy exactly: the last part takes the remainder.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Deserialize;

use crate::check::{check_id, invalid, ConfigError};

/// The owner of GPU time no lease covers.
pub const UNLEASED: &str = "_unleased";
/// The owner of GPU time more than one lease covers.
pub const UNATTRIBUTED: &str = "_unattributed";

/// A lease: a tenant's nodes (names or globs with `*` and `?`) or GPUs (UUIDs)
/// over `[from, to)`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseConfig {
    /// The lease's id (`[A-Za-z0-9._:-]`, unique among the leases), named
    /// in statements' per-lease service levels. Default: the tenant and
    /// the lease's 1-based position among the tenant's leases in the file
    /// (`lab-a.1`, `lab-a.2`, …): set it to keep it when leases move.
    #[serde(default)]
    pub id: Option<String>,
    /// The tenant.
    pub tenant: String,
    /// Node names or globs.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// GPU UUIDs.
    #[serde(default)]
    pub gpus: Vec<String>,
    /// Start, RFC 3339.
    pub from: String,
    /// End (exclusive), RFC 3339.
    pub to: String,
}

/// One lease, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    /// Its id (configured, else `{tenant}.{n}`: see [`LeaseConfig::id`]).
    pub id: String,
    /// The tenant.
    pub tenant: String,
    /// Node names or globs.
    pub nodes: Vec<String>,
    /// GPU UUIDs.
    pub gpus: Vec<String>,
    /// Start, Unix ms.
    pub from_ms: i64,
    /// End (exclusive), Unix ms.
    pub to_ms: i64,
}

impl Lease {
    /// Whether it lists this GPU or its node (whatever the time).
    pub fn covers(&self, node: &str, uuid: &str) -> bool {
        self.gpus.iter().any(|g| g == uuid) || self.nodes.iter().any(|p| glob(p, node))
    }
}

/// All leases, indexed so that finding a GPU's leases does not scan them all
/// (a hall has ~20,000 GPUs, each looked up per minute and per scrape; a lease
/// may list thousands of UUIDs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Leases {
    leases: Vec<Lease>,
    /// Lease indices by listed GPU UUID.
    by_gpu: HashMap<String, Vec<usize>>,
    /// Lease indices by listed node name (entries without `*` or `?`).
    by_node: HashMap<String, Vec<usize>>,
    /// Leases with at least one node glob: checked against every node.
    with_globs: Vec<usize>,
}

pub(crate) fn parse_time(key: &str, text: &str) -> Result<i64, ConfigError> {
    // UTC only (`Z`): a lease names the instant as the ledger books it.
    dcwatt_wire::time::parse_rfc3339_ms(text)
        .filter(|ms| *ms >= 0 && text.ends_with('Z'))
        .ok_or_else(|| {
            invalid(
                key,
                format!("{text:?} is not an RFC 3339 UTC time (2026-07-01T00:00:00Z)"),
            )
        })
}

impl Leases {
    /// Validates the configured leases; overlapping leases of the same GPU or
    /// the same node name are refused, naming both.
    pub fn build(config: &[LeaseConfig], tenants: &HashSet<&str>) -> Result<Leases, ConfigError> {
        let mut leases: Vec<Lease> = Vec::with_capacity(config.len());
        let mut gpu_index: HashMap<String, Vec<usize>> = HashMap::new();
        let mut node_index: HashMap<String, Vec<usize>> = HashMap::new();
        let mut ids: HashMap<String, usize> = HashMap::new();
        let mut per_tenant: HashMap<&str, usize> = HashMap::new();
        for (i, l) in config.iter().enumerate() {
            if !tenants.contains(l.tenant.as_str()) {
                return Err(invalid(
                    format!("leases[{i}].tenant"),
                    format!("{:?} is not a configured tenant", l.tenant),
                ));
            }
            if l.nodes.is_empty() && l.gpus.is_empty() {
                return Err(invalid(format!("leases[{i}]"), "needs nodes or gpus"));
            }
            for (j, n) in l.nodes.iter().enumerate() {
                let plain = n.replace(['*', '?'], "x");
                check_id(&format!("leases[{i}].nodes[{j}]"), &plain)?;
            }
            for (j, g) in l.gpus.iter().enumerate() {
                check_id(&format!("leases[{i}].gpus[{j}]"), g)?;
            }
            let from_ms = parse_time(&format!("leases[{i}].from"), &l.from)?;
            let to_ms = parse_time(&format!("leases[{i}].to"), &l.to)?;
            if to_ms <= from_ms {
                return Err(invalid(format!("leases[{i}].to"), "must be after from"));
            }
            let n = per_tenant.entry(l.tenant.as_str()).or_default();
            *n += 1;
            let id = match &l.id {
                Some(id) => {
                    check_id(&format!("leases[{i}].id"), id)?;
                    id.clone()
                }
                None => format!("{}.{n}", l.tenant),
            };
            if let Some(k) = ids.insert(id.clone(), i) {
                return Err(invalid(
                    format!("leases[{i}].id"),
                    format!("{id:?} is the id of leases[{k}] too (ids are unique; a lease without `id` is `tenant.n`)"),
                ));
            }
            let lease = Lease {
                id,
                tenant: l.tenant.clone(),
                nodes: l.nodes.clone(),
                gpus: l.gpus.clone(),
                from_ms,
                to_ms,
            };
            // Another lease of one of its GPUs or node entries, overlapping in time.
            let overlapping = |k: &usize| {
                let other: &Lease = &leases[*k];
                other.from_ms < to_ms && from_ms < other.to_ms
            };
            let shared = lease
                .gpus
                .iter()
                .find_map(|g| {
                    let k = gpu_index.get(g)?.iter().find(|k| overlapping(k))?;
                    Some((*k, format!("GPU {g}")))
                })
                .or_else(|| {
                    lease.nodes.iter().find_map(|n| {
                        let k = node_index.get(n)?.iter().find(|k| overlapping(k))?;
                        Some((*k, format!("nodes {n:?}")))
                    })
                });
            if let Some((k, what)) = shared {
                return Err(invalid(
                    format!("leases[{i}]"),
                    format!(
                        "overlaps leases[{k}] (tenant {:?}) on {what} in time",
                        leases[k].tenant
                    ),
                ));
            }
            for g in &lease.gpus {
                gpu_index.entry(g.clone()).or_default().push(leases.len());
            }
            for n in &lease.nodes {
                node_index.entry(n.clone()).or_default().push(leases.len());
            }
            leases.push(lease);
        }
        Ok(Leases::from_leases(leases))
    }

    /// The leases, indexed (no validation: [`Leases::build`] validates).
    pub fn from_leases(leases: Vec<Lease>) -> Leases {
        let mut index = Leases {
            leases,
            ..Leases::default()
        };
        for (k, l) in index.leases.iter().enumerate() {
            for g in &l.gpus {
                index.by_gpu.entry(g.clone()).or_default().push(k);
            }
            for n in &l.nodes {
                if n.contains(['*', '?']) {
                    if index.with_globs.last() != Some(&k) {
                        index.with_globs.push(k);
                    }
                } else {
                    index.by_node.entry(n.clone()).or_default().push(k);
                }
            }
        }
        index
    }

    /// The leases that may cover this GPU (each checked with `covers` after).
    fn candidates(&self, node: &str, uuid: &str) -> Vec<&Lease> {
        let mut ks: Vec<usize> = self
            .by_gpu
            .get(uuid)
            .into_iter()
            .chain(self.by_node.get(node))
            .flatten()
            .chain(&self.with_globs)
            .copied()
            .collect();
        ks.sort_unstable();
        ks.dedup();
        ks.into_iter().map(|k| &self.leases[k]).collect()
    }

    /// The leases.
    pub fn all(&self) -> &[Lease] {
        &self.leases
    }

    /// The one lease of this GPU at `at_ms`, if exactly one covers it.
    pub fn lease_at(&self, node: &str, uuid: &str, at_ms: i64) -> Option<&Lease> {
        let mut it = self
            .candidates(node, uuid)
            .into_iter()
            .filter(|l| l.from_ms <= at_ms && at_ms < l.to_ms && l.covers(node, uuid));
        let one = it.next()?;
        it.next().is_none().then_some(one)
    }

    /// Splits `[from_ms, to_ms)` of one GPU by owner: (owner, ms), the owners
    /// being tenants, [`UNLEASED`] or [`UNATTRIBUTED`], in time order of first
    /// appearance. The parts add up to `to_ms - from_ms`.
    pub fn split(&self, node: &str, uuid: &str, from_ms: i64, to_ms: i64) -> Vec<(String, i64)> {
        let covering: Vec<&Lease> = self
            .candidates(node, uuid)
            .into_iter()
            .filter(|l| l.from_ms < to_ms && from_ms < l.to_ms && l.covers(node, uuid))
            .collect();
        let mut edges = vec![from_ms, to_ms];
        for l in &covering {
            edges.extend(
                [l.from_ms, l.to_ms]
                    .into_iter()
                    .filter(|t| (from_ms..to_ms).contains(t)),
            );
        }
        edges.sort_unstable();
        edges.dedup();
        let mut out: Vec<(String, i64)> = Vec::new();
        for w in edges.windows(2) {
            let (a, b) = (w[0], w[1]);
            let owners: Vec<&Lease> = covering
                .iter()
                .copied()
                .filter(|l| l.from_ms <= a && b <= l.to_ms)
                .collect();
            let owner = match owners.as_slice() {
                [] => UNLEASED,
                [one] => one.tenant.as_str(),
                _ => UNATTRIBUTED,
            };
            match out.iter_mut().find(|(o, _)| o == owner) {
                Some((_, ms)) => *ms += b - a,
                None => out.push((owner.to_owned(), b - a)),
            }
        }
        out
    }

    /// Splits a GPU-minute's energy by owner: (owner, J, ms). Exact: the
    /// parts add up to `joules` (the last part takes the remainder).
    pub fn attribute(
        &self,
        node: &str,
        uuid: &str,
        from_ms: i64,
        to_ms: i64,
        joules: f64,
    ) -> Vec<(String, f64, i64)> {
        let parts = self.split(node, uuid, from_ms, to_ms);
        let len = (to_ms - from_ms).max(1) as f64;
        let mut given = 0.0;
        let n = parts.len();
        parts
            .into_iter()
            .enumerate()
            .map(|(i, (owner, ms))| {
                let j = if i + 1 == n {
                    joules - given
                } else {
                    joules * ms as f64 / len
                };
                given += j;
                (owner, j, ms)
            })
            .collect()
    }
}

/// Sums per owner, for tests and reports.
pub fn totals(parts: impl IntoIterator<Item = (String, f64, i64)>) -> BTreeMap<String, (f64, i64)> {
    let mut out: BTreeMap<String, (f64, i64)> = BTreeMap::new();
    for (o, j, ms) in parts {
        let e = out.entry(o).or_default();
        e.0 += j;
        e.1 += ms;
    }
    out
}

/// Shell-style glob: `*` any run, `?` one character; everything else literal.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcwatt_wire::time::MINUTE_MS;

    fn lease(tenant: &str, nodes: &[&str], gpus: &[&str], from: &str, to: &str) -> LeaseConfig {
        LeaseConfig {
            id: None,
            tenant: tenant.into(),
            nodes: nodes.iter().map(|s| (*s).into()).collect(),
            gpus: gpus.iter().map(|s| (*s).into()).collect(),
            from: from.into(),
            to: to.into(),
        }
    }

    #[test]
    fn lease_ids_are_checked_unique_and_derived_by_default() {
        let tenants: HashSet<&str> = ["a", "b"].into();
        let t = ("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z");
        let with_id = |id: &str, tenant: &str, node: &str| LeaseConfig {
            id: Some(id.into()),
            ..lease(tenant, &[node], &[], t.0, t.1)
        };
        let ok = Leases::build(
            &[
                lease("a", &["n1"], &[], t.0, t.1),
                with_id("a-big", "a", "n2"),
                lease("b", &["n3"], &[], t.0, t.1),
                lease("a", &["n4"], &[], t.0, t.1),
            ],
            &tenants,
        )
        .unwrap();
        let ids: Vec<&str> = ok.all().iter().map(|l| l.id.as_str()).collect();
        assert_eq!(ids, ["a.1", "a-big", "b.1", "a.3"]);
        for (leases, key) in [
            (
                vec![with_id("x", "a", "n1"), with_id("x", "b", "n2")],
                "leases[1].id",
            ),
            // An explicit id that is another lease's default.
            (
                vec![
                    lease("a", &["n1"], &[], t.0, t.1),
                    with_id("a.1", "a", "n2"),
                ],
                "leases[1].id",
            ),
            (vec![with_id("bad id", "a", "n1")], "leases[0].id"),
            (vec![with_id("", "a", "n1")], "leases[0].id"),
        ] {
            let e = Leases::build(&leases, &tenants).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn globs() {
        assert!(glob("r12-*", "r12-n03"));
        assert!(glob("r1?-n0*", "r12-n03"));
        assert!(!glob("r12-*", "r13-n03"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
    }

    #[test]
    fn overlapping_leases_of_one_gpu_are_refused_naming_both() {
        let tenants: HashSet<&str> = ["a", "b"].into();
        let e = Leases::build(
            &[
                lease(
                    "a",
                    &[],
                    &["GPU-1"],
                    "2026-01-01T00:00:00Z",
                    "2027-01-01T00:00:00Z",
                ),
                lease(
                    "b",
                    &[],
                    &["GPU-1"],
                    "2026-06-01T00:00:00Z",
                    "2026-07-01T00:00:00Z",
                ),
            ],
            &tenants,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("leases[1]") && e.contains("leases[0]") && e.contains("GPU-1"),
            "{e}"
        );
        // Back to back is fine.
        Leases::build(
            &[
                lease(
                    "a",
                    &["r1-*"],
                    &[],
                    "2026-01-01T00:00:00Z",
                    "2026-06-01T00:00:00Z",
                ),
                lease(
                    "b",
                    &["r1-*"],
                    &[],
                    "2026-06-01T00:00:00Z",
                    "2026-07-01T00:00:00Z",
                ),
            ],
            &tenants,
        )
        .unwrap();
        let e = Leases::build(
            &[lease(
                "c",
                &["x"],
                &[],
                "2026-01-01T00:00:00Z",
                "2026-02-01T00:00:00Z",
            )],
            &tenants,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("leases[0].tenant"), "{e}");
        let e = Leases::build(
            &[lease(
                "a",
                &["x"],
                &[],
                "2026-01-01",
                "2026-02-01T00:00:00Z",
            )],
            &tenants,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("leases[0].from"), "{e}");
    }

    #[test]
    fn a_minute_is_split_by_time_exactly() {
        let tenants: HashSet<&str> = ["a", "b"].into();
        let leases = Leases::build(
            &[
                // a until 00:00:15, b from 00:00:45, and b again by a glob
                // from 00:00:30 to 00:00:40.
                lease(
                    "a",
                    &["r1-n1"],
                    &[],
                    "2025-01-01T00:00:00Z",
                    "2026-01-01T00:00:15Z",
                ),
                lease(
                    "b",
                    &["r1-n1"],
                    &[],
                    "2026-01-01T00:00:45Z",
                    "2027-01-01T00:00:00Z",
                ),
                lease(
                    "b",
                    &["r1-*"],
                    &[],
                    "2026-01-01T00:00:30Z",
                    "2026-01-01T00:00:40Z",
                ),
            ],
            &tenants,
        )
        .unwrap();
        let m = parse_time("t", "2026-01-01T00:00:00Z").unwrap();
        let parts = leases.attribute("r1-n1", "GPU-1", m, m + MINUTE_MS, 600.0);
        let t = totals(parts.clone());
        assert_eq!(t["a"], (150.0, 15_000));
        assert_eq!(t["b"], (250.0, 25_000)); // 30–40 s and 45–60 s
        assert_eq!(t[UNLEASED], (200.0, 20_000)); // 15–30 s and 40–45 s
        assert_eq!(parts.iter().map(|p| p.1).sum::<f64>(), 600.0);
        // Two leases of the same node at once: unattributed.
        let both = Leases::from_leases(vec![
            Lease {
                id: "a.1".into(),
                tenant: "a".into(),
                nodes: vec!["r1-*".into()],
                gpus: vec![],
                from_ms: m,
                to_ms: m + MINUTE_MS,
            },
            Lease {
                id: "b.1".into(),
                tenant: "b".into(),
                nodes: vec!["r1-n1".into()],
                gpus: vec![],
                from_ms: m,
                to_ms: m + 30_000,
            },
        ]);
        let t = totals(both.attribute("r1-n1", "GPU-1", m, m + MINUTE_MS, 60.0));
        assert_eq!(t[UNATTRIBUTED], (30.0, 30_000));
        assert_eq!(t["a"], (30.0, 30_000));
    }

    #[test]
    fn the_index_finds_the_same_leases_as_a_scan() {
        let m = 1_800_000_000_000;
        let lease = |t: &str, nodes: &[&str], gpus: &[&str], from_ms: i64, to_ms: i64| Lease {
            id: format!("{t}.1"),
            tenant: t.into(),
            nodes: nodes.iter().map(|n| (*n).into()).collect(),
            gpus: gpus.iter().map(|g| (*g).into()).collect(),
            from_ms,
            to_ms,
        };
        let leases = Leases::from_leases(vec![
            lease("a", &["r1-*"], &[], m, m + MINUTE_MS),
            lease("b", &["r2-n1", "r2-n2"], &[], m, m + MINUTE_MS),
            lease("c", &[], &["GPU-9", "GPU-7"], m + 10_000, m + 50_000),
            lease("d", &["r?-n3"], &["GPU-1"], m + 20_000, m + 40_000),
        ]);
        for node in ["r1-n1", "r2-n1", "r2-n2", "r3-n3", "r9-n9"] {
            for uuid in ["GPU-1", "GPU-7", "GPU-9", "GPU-0"] {
                let scan: Vec<&Lease> = leases
                    .all()
                    .iter()
                    .filter(|l| l.covers(node, uuid))
                    .collect();
                let found: Vec<&Lease> = leases
                    .candidates(node, uuid)
                    .into_iter()
                    .filter(|l| l.covers(node, uuid))
                    .collect();
                assert_eq!(found, scan, "{node} {uuid}");
            }
        }
        // r2-n1's GPU-9: b's for the minute, c's from 10 to 50 s as well.
        let t = totals(leases.attribute("r2-n1", "GPU-9", m, m + MINUTE_MS, 60.0));
        assert_eq!(t["b"], (20.0, 20_000));
        assert_eq!(t[UNATTRIBUTED], (40.0, 40_000));
    }
}
