//! Property tests of the Merkle code: for random trees, every leaf's
//! inclusion proof and every pair of sizes' consistency proof verify, the
//! incremental frontier gives the same roots, and a changed leaf, a wrong
//! index or a changed proof hash is refused.

use dcwatt_verify::merkle::{
    consistency_proof, inclusion_proof, leaf_hash, root, verify_consistency, verify_inclusion,
    Frontier, MemTree,
};
use proptest::prelude::*;

fn tree(seeds: &[u64]) -> MemTree {
    MemTree {
        leaves: seeds.iter().map(|s| leaf_hash(&s.to_le_bytes())).collect(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn inclusion_proofs_verify_and_a_changed_leaf_does_not(
        seeds in prop::collection::vec(any::<u64>(), 1..80),
        flip in any::<u8>(),
    ) {
        let mut t = tree(&seeds);
        let n = seeds.len() as u64;
        let r = root(&mut t, n).unwrap();
        let mut f = Frontier::new();
        for leaf in &t.leaves {
            f.push(*leaf, |_, _, _| {}).unwrap();
        }
        prop_assert_eq!(f.root(), r);
        for i in 0..n {
            let proof = inclusion_proof(&mut t, i, n).unwrap();
            let leaf = t.leaves[i as usize];
            prop_assert!(verify_inclusion(i, n, &leaf, &proof, &r).is_ok());
            let mut changed = leaf;
            changed[usize::from(flip) % 32] ^= 1 << (flip % 8);
            prop_assert!(verify_inclusion(i, n, &changed, &proof, &r).is_err());
            if n > 1 {
                prop_assert!(verify_inclusion((i + 1) % n, n, &leaf, &proof, &r).is_err());
            }
            if let Some(first) = proof.first() {
                let mut bad = proof.clone();
                bad[0] = leaf_hash(first);
                prop_assert!(verify_inclusion(i, n, &leaf, &bad, &r).is_err());
            }
        }
    }

    #[test]
    fn consistency_proofs_verify_and_a_changed_leaf_does_not(
        seeds in prop::collection::vec(any::<u64>(), 1..60),
        which in any::<prop::sample::Index>(),
    ) {
        let mut t = tree(&seeds);
        let n = seeds.len() as u64;
        for m in 1..=n {
            let (r1, r2) = (root(&mut t, m).unwrap(), root(&mut t, n).unwrap());
            let proof = consistency_proof(&mut t, m, n).unwrap();
            prop_assert!(verify_consistency(m, n, &r1, &r2, &proof).is_ok(), "{} -> {}", m, n);
            // The old tree with one leaf changed is not a prefix of the new one.
            let mut old = t.clone();
            let k = which.index(m as usize);
            old.leaves[k] = leaf_hash(&old.leaves[k]);
            let forged = root(&mut old, m).unwrap();
            prop_assert!(verify_consistency(m, n, &forged, &r2, &proof).is_err());
            if m < n {
                prop_assert!(verify_consistency(m + 1, n, &r1, &r2, &proof).is_err());
            }
        }
    }
}
