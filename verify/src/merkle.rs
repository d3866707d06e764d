//! RFC 9162 (RFC 6962) Merkle tree hashing and proofs: leaf and node hashes,
//! inclusion and consistency proofs built from any source of complete subtree
//! hashes ([`Nodes`]), their verification, and the incremental [`Frontier`]
//! the collector keeps while it books rows.
//!
//! Hashing: a leaf is `SHA-256(0x00 ‖ leaf bytes)`, an inner node
//! `SHA-256(0x01 ‖ left ‖ right)`, the empty tree `SHA-256("")`. A tree of `n`
//! leaves splits at `k`, the largest power of two below `n` (RFC 9162 §2.1.1).
//! Verification follows RFC 9162 §2.1.3.2 and §2.1.4.2; a consistency proof
//! from or to an empty tree is refused, and every hash is exactly 32 bytes.

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// Why a proof was refused, or could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// A hash is not 32 bytes.
    #[error("a hash is {0} bytes, not 32")]
    HashLength(usize),
    /// A leaf index at or beyond the tree size.
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange {
        /// The index.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// Sizes that no consistency proof can join.
    #[error("no consistency proof from tree size {from} to {to}: {why}")]
    Sizes {
        /// The older size.
        from: u64,
        /// The newer size.
        to: u64,
        /// Why.
        why: &'static str,
    },
    /// The proof has too many or too few hashes.
    #[error("the proof has the wrong number of hashes")]
    Length,
    /// The proof leads to another root.
    #[error("the proof does not lead to the expected root hash")]
    RootMismatch,
}

/// `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// A 32-byte hash from bytes of any length (an error unless exactly 32).
pub fn to_hash(bytes: &[u8]) -> Result<Hash, ProofError> {
    Hash::try_from(bytes).map_err(|_| ProofError::HashLength(bytes.len()))
}

/// A hash from 64 hex digits.
pub fn hash_from_hex(text: &str) -> Option<Hash> {
    hex::decode(text).ok().and_then(|b| to_hash(&b).ok())
}

/// The largest power of two strictly below `n` (`n` ≥ 2).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// Verifies that `leaf` is at `index` in the tree of `size` leaves whose root
/// is `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut fnode, mut snode, mut r) = (index, size - 1, *leaf);
    for p in proof {
        if snode == 0 {
            return Err(ProofError::Length);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::Length);
    }
    if r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Verifies that the tree of `size1` leaves with root `root1` is a prefix of
/// the tree of `size2` leaves with root `root2` (RFC 9162 §2.1.4.2). Equal
/// sizes need an empty proof and equal roots; an empty tree is refused.
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    root1: &Hash,
    root2: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    let sizes = |why| ProofError::Sizes {
        from: size1,
        to: size2,
        why,
    };
    if size1 == 0 {
        return Err(sizes("the older tree is empty"));
    }
    if size2 < size1 {
        return Err(sizes("the newer tree is smaller"));
    }
    if size1 == size2 {
        if !proof.is_empty() {
            return Err(ProofError::Length);
        }
        return if root1 == root2 {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    let Some((first, rest)) = proof.split_first() else {
        return Err(ProofError::Length);
    };
    // With size1 a power of two, the old root is the first node of the path.
    let (seed, path): (Hash, &[Hash]) = if size1.is_power_of_two() {
        (*root1, proof)
    } else {
        (*first, rest)
    };
    let (mut fnode, mut snode) = (size1 - 1, size2 - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (seed, seed);
    for c in path {
        if snode == 0 {
            return Err(ProofError::Length);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::Length);
    }
    if fr != *root1 || sr != *root2 {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// A source of complete subtree hashes: `node(level, index)` is the root of
/// the perfect subtree over leaves `[index << level, (index + 1) << level)`
/// (level 0: the leaf hashes).
pub trait Nodes {
    /// The source's failure (a missing node, a database error).
    type Error: From<ProofError>;
    /// The hash of one complete subtree.
    fn node(&mut self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// The hash of leaves `[start, end)` (MTH of RFC 9162), from complete subtrees.
fn range_hash<N: Nodes>(nodes: &mut N, start: u64, end: u64) -> Result<Hash, N::Error> {
    let n = end - start;
    if n.is_power_of_two() && start & (n - 1) == 0 {
        return nodes.node(n.trailing_zeros(), start >> n.trailing_zeros());
    }
    let k = split(n);
    let left = range_hash(nodes, start, start + k)?;
    let right = range_hash(nodes, start + k, end)?;
    Ok(node_hash(&left, &right))
}

/// The root of the first `size` leaves.
pub fn root<N: Nodes>(nodes: &mut N, size: u64) -> Result<Hash, N::Error> {
    if size == 0 {
        Ok(empty_root())
    } else {
        range_hash(nodes, 0, size)
    }
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves (RFC 9162
/// §2.1.3.1), leaf-side first.
pub fn inclusion_proof<N: Nodes>(
    nodes: &mut N,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, N::Error> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size }.into());
    }
    let mut proof = Vec::new();
    let (mut start, mut end, mut m) = (0u64, size, index);
    // Walk down from the root, collecting siblings; reversed at the end.
    while end - start > 1 {
        let k = split(end - start);
        if m < k {
            proof.push(range_hash(nodes, start + k, end)?);
            end = start + k;
        } else {
            proof.push(range_hash(nodes, start, start + k)?);
            start += k;
            m -= k;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// The consistency proof from the tree of `size1` leaves to the tree of
/// `size2` leaves (RFC 9162 §2.1.4.1); `1 ≤ size1 ≤ size2`.
pub fn consistency_proof<N: Nodes>(
    nodes: &mut N,
    size1: u64,
    size2: u64,
) -> Result<Vec<Hash>, N::Error> {
    if size1 == 0 || size1 > size2 {
        return Err(ProofError::Sizes {
            from: size1,
            to: size2,
            why: "sizes must satisfy 1 ≤ from ≤ to",
        }
        .into());
    }
    let mut proof = Vec::new();
    let (mut start, mut end, mut m, mut whole) = (0u64, size2, size1, true);
    loop {
        let n = end - start;
        if m == n {
            if !whole {
                proof.push(range_hash(nodes, start, end)?);
            }
            break;
        }
        let k = split(n);
        if m <= k {
            proof.push(range_hash(nodes, start + k, end)?);
            end = start + k;
        } else {
            proof.push(range_hash(nodes, start, start + k)?);
            start += k;
            m -= k;
            whole = false;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// The right edge of a growing tree: the roots of its perfect subtrees, largest
/// first (one per set bit of its size). Appending a leaf merges equal
/// subtrees, so each leaf costs one leaf hash and on average one node hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// (level, hash), levels strictly decreasing.
    stack: Vec<(u32, Hash)>,
}

impl Frontier {
    /// The empty tree's frontier.
    pub fn new() -> Frontier {
        Frontier::default()
    }

    /// The frontier of the first `size` leaves, from a node source.
    pub fn load<N: Nodes>(nodes: &mut N, size: u64) -> Result<Frontier, N::Error> {
        let mut stack = Vec::new();
        for level in (0..64u32).rev() {
            if size >> level & 1 == 1 {
                // Leaves before this subtree: the bits of size above `level`.
                let start = size & !((1u64 << level) | ((1u64 << level) - 1));
                stack.push((level, nodes.node(level, start >> level)?));
            }
        }
        Ok(Frontier { size, stack })
    }

    /// Leaves so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; `made(level, index, hash)` sees every complete
    /// node this completes, the leaf itself (level 0) first.
    pub fn push(
        &mut self,
        leaf: Hash,
        mut made: impl FnMut(u32, u64, &Hash),
    ) -> Result<(), ProofError> {
        let index = self.size;
        let next = index.checked_add(1).ok_or(ProofError::IndexOutOfRange {
            index,
            size: u64::MAX,
        })?;
        made(0, index, &leaf);
        self.stack.push((0, leaf));
        while let [.., (l1, left), (l2, right)] = self.stack[..] {
            if l1 != l2 {
                break;
            }
            self.stack.truncate(self.stack.len() - 2);
            let level = l1 + 1;
            let hash = node_hash(&left, &right);
            made(level, index >> level, &hash);
            self.stack.push((level, hash));
        }
        self.size = next;
        Ok(())
    }

    /// The tree's root hash.
    pub fn root(&self) -> Hash {
        let mut iter = self.stack.iter().rev();
        let Some((_, last)) = iter.next() else {
            return empty_root();
        };
        iter.fold(*last, |acc, (_, h)| node_hash(h, &acc))
    }
}

/// A tree held in memory as its leaf hashes (tests, small tools).
#[derive(Debug, Clone, Default)]
pub struct MemTree {
    /// The leaf hashes, in order.
    pub leaves: Vec<Hash>,
}

impl Nodes for MemTree {
    type Error = ProofError;

    fn node(&mut self, level: u32, index: u64) -> Result<Hash, ProofError> {
        let size = self.leaves.len() as u64;
        let missing = ProofError::IndexOutOfRange { index, size };
        if level == 0 {
            let i = usize::try_from(index).map_err(|_| missing.clone())?;
            return self.leaves.get(i).copied().ok_or(missing);
        }
        if level >= 64 {
            return Err(missing);
        }
        let left = self.node(level - 1, index.checked_mul(2).ok_or(missing.clone())?)?;
        let right = self.node(level - 1, index * 2 + 1)?;
        Ok(node_hash(&left, &right))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frontier_agrees_with_the_recursive_root() {
        let mut tree = MemTree::default();
        let mut f = Frontier::new();
        for i in 0..70u64 {
            let leaf = leaf_hash(&i.to_be_bytes());
            tree.leaves.push(leaf);
            f.push(leaf, |_, _, _| {}).unwrap();
            let n = i + 1;
            assert_eq!(f.root(), root(&mut tree, n).unwrap(), "size {n}");
            assert_eq!(Frontier::load(&mut tree, n).unwrap(), f, "size {n}");
        }
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
