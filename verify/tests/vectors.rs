//! The RFC 6962 / RFC 9162 proof vectors of transparency-dev/merkle (copied
//! into `tests/vectors/` with their licence and README): every happy path
//! verifies, every bad one is refused.

use std::path::{Path, PathBuf};

use dcwatt_verify::merkle::{to_hash, verify_consistency, verify_inclusion, Hash, ProofError};
use serde_json::Value;

/// Standard base64 (with padding), as the vectors write hashes.
fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {text:?}"),
    };
    let bytes: Vec<u8> = text.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= u32::from(value(c)) << (18 - 6 * i);
        }
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    out
}

fn hash(v: &Value) -> Result<Hash, ProofError> {
    to_hash(&base64(v.as_str().unwrap_or_default()))
}

fn proof(v: &Value) -> Result<Vec<Hash>, ProofError> {
    v.as_array()
        .map(|a| a.iter().map(hash).collect())
        .unwrap_or(Ok(Vec::new()))
}

fn files(dir: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "json") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/vectors")
            .join(dir),
        &mut out,
    );
    out.sort();
    out
}

/// The one happy path whose hashes are not 32 bytes: equal sizes (1) with an
/// empty proof and equal roots of 12 bytes ("don't care 2"). The README's
/// convention, that every hash is exactly 32 bytes and a short one is an
/// error, contradicts its `wantErr: false`; this verifier keeps the 32-byte
/// rule (a collector never signs anything else), so this case is refused for
/// the length and counted apart.
const PLACEHOLDER_ROOTS: &str = "sizes-are-equal-one-and-proof-is-empty.json";

/// Runs every case of one kind; returns (happy paths verified, bad ones
/// refused, the placeholder case refused for its 12-byte roots).
fn run(dir: &str, check: impl Fn(&Value) -> Result<(), ProofError>) -> (usize, usize, usize) {
    let (mut good, mut bad, mut placeholders) = (0, 0, 0);
    for path in files(dir) {
        let case: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let want_err = case["wantErr"].as_bool().unwrap();
        let got = check(&case);
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name == PLACEHOLDER_ROOTS {
            // Its roots are 12-byte placeholders: the 32-byte rule refuses it
            // before any comparison (see the constant).
            assert_eq!(got, Err(ProofError::HashLength(12)), "{name}");
            placeholders += 1;
            continue;
        }
        assert_eq!(
            got.is_err(),
            want_err,
            "{}: {} gave {got:?}",
            path.display(),
            case["desc"]
        );
        if want_err {
            bad += 1;
        } else {
            good += 1;
        }
    }
    (good, bad, placeholders)
}

#[test]
fn inclusion_vectors() {
    let counts = run("inclusion", |c| {
        verify_inclusion(
            c["leafIdx"].as_u64().unwrap(),
            c["treeSize"].as_u64().unwrap(),
            &hash(&c["leafHash"])?,
            &proof(&c["proof"])?,
            &hash(&c["root"])?,
        )
    });
    assert_eq!(counts, (6, 92, 0));
}

#[test]
fn consistency_vectors() {
    let counts = run("consistency", |c| {
        verify_consistency(
            c["size1"].as_u64().unwrap(),
            c["size2"].as_u64().unwrap(),
            &hash(&c["root1"])?,
            &hash(&c["root2"])?,
            &proof(&c["proof"])?,
        )
    });
    assert_eq!(counts, (5, 92, 1));
}
