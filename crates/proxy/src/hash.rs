//! Hash maps with a fast hasher: the planner hashes hundreds of thousands of keys per
//! whole-cluster pass, where the standard SipHash is the largest single cost.

/// A `HashMap` with foldhash's randomly seeded fast hasher.
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// A `HashSet` with foldhash's randomly seeded fast hasher.
pub type HashSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;
