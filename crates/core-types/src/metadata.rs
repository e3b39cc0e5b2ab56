//! [`Metadata`]: an instance's key/value pairs, kept compact and sorted by key.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Index;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The free-form key/value pairs of an instance ([`ServiceInfo::metadata`](crate::ServiceInfo)),
/// sorted by key, each key at most once.
///
/// It offers the `BTreeMap<String, String>` API people use (`insert`, `get`, `remove`, `iter`
/// in key order, `extend`, collecting from pairs, indexing by key, conversions both ways), but
/// stores the pairs in one vector: a registry holds thousands of instances with a handful of
/// pairs each, and a `BTreeMap` spends a node of about 550 bytes on even one pair. Lookups are
/// binary searches; [`insert`](Self::insert) and [`remove`](Self::remove) shift the pairs after
/// the key, O(n) for n pairs, which is what a handful of pairs wants (the registries refuse more
/// than [`MAX_METADATA_ENTRIES`](crate::validate::MAX_METADATA_ENTRIES) pairs anyway).
///
/// In JSON it is an object whose keys are in sorted order, as the Go module's `encoding/json`
/// writes a `map[string]string`. When reading, a key that appears more than once keeps its last
/// value (as Go and `serde_json`'s maps do), in O(n log n) for n pairs.
///
/// ```
/// use waypost_core_types::Metadata;
///
/// let mut m = Metadata::new();
/// m.insert("zone".into(), "eu-west-1a".into());
/// assert_eq!(m.insert("env".into(), "dev".into()), None);
/// assert_eq!(m.insert("env".into(), "prod".into()), Some("dev".to_owned()));
/// assert_eq!(m.get("env").map(String::as_str), Some("prod"));
/// assert_eq!(m.keys().collect::<Vec<_>>(), ["env", "zone"]);
/// assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"env":"prod","zone":"eu-west-1a"}"#);
/// let back: Metadata = serde_json::from_str(r#"{"b":"1","a":"2","b":"3"}"#).unwrap();
/// assert_eq!(back, [("a", "2"), ("b", "3")].into_iter().collect());
/// ```
#[derive(Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Metadata {
    /// Sorted by key, keys unique.
    entries: Vec<(String, String)>,
}

impl Metadata {
    /// No pairs (allocates nothing).
    pub const fn new() -> Self {
        Metadata {
            entries: Vec::new(),
        }
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    /// Sets `key` to `value`; returns the value it had. O(n) for n pairs.
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.entries.insert(i, (key, value));
                None
            }
        }
    }

    /// The value of `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&String>
    where
        String: Borrow<Q>,
        Q: AsRef<str> + ?Sized,
    {
        self.find(key.as_ref()).ok().map(|i| &self.entries[i].1)
    }

    /// The value of `key`, to change it in place.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut String>
    where
        String: Borrow<Q>,
        Q: AsRef<str> + ?Sized,
    {
        match self.find(key.as_ref()) {
            Ok(i) => Some(&mut self.entries[i].1),
            Err(_) => None,
        }
    }

    /// Removes `key`; returns its value. O(n) for n pairs.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<String>
    where
        String: Borrow<Q>,
        Q: AsRef<str> + ?Sized,
    {
        let i = self.find(key.as_ref()).ok()?;
        Some(self.entries.remove(i).1)
    }

    /// Whether `key` has a value.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        String: Borrow<Q>,
        Q: AsRef<str> + ?Sized,
    {
        self.find(key.as_ref()).is_ok()
    }

    /// The pairs, by key.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            inner: self.entries.iter(),
        }
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &String> + ExactSizeIterator + '_ {
        self.entries.iter().map(|(k, _)| k)
    }

    /// The values, by key.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &String> + ExactSizeIterator + '_ {
        self.entries.iter().map(|(_, v)| v)
    }

    /// How many pairs there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no pair.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keeps the pairs for which `keep` returns true.
    pub fn retain(&mut self, mut keep: impl FnMut(&String, &mut String) -> bool) {
        self.entries.retain_mut(|(k, v)| keep(k, v));
    }

    /// Removes every pair (keeps the allocation).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Builds from pairs in any order; a key given twice keeps its last value. O(n log n).
    fn from_pairs(mut entries: Vec<(String, String)>) -> Self {
        // A stable sort keeps equal keys in input order, so the last of each run is the last
        // one given.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(String, String)> = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = v,
                _ => out.push((k, v)),
            }
        }
        out.shrink_to_fit();
        Metadata { entries: out }
    }
}

impl Clone for Metadata {
    fn clone(&self) -> Self {
        Metadata {
            entries: self.entries.clone(),
        }
    }

    /// Reuses `self`'s allocations where they fit.
    fn clone_from(&mut self, source: &Self) {
        self.entries.clone_from(&source.entries);
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Into<String>, V: Into<String>> Extend<(K, V)> for Metadata {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        let iter = iter.into_iter();
        if self.entries.is_empty() {
            *self = Metadata::from_pairs(iter.map(|(k, v)| (k.into(), v.into())).collect());
            return;
        }
        let mut pairs = std::mem::take(&mut self.entries);
        pairs.extend(iter.map(|(k, v)| (k.into(), v.into())));
        *self = Metadata::from_pairs(pairs);
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Metadata::from_pairs(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl<K: Into<String>, V: Into<String>, const N: usize> From<[(K, V); N]> for Metadata {
    fn from(pairs: [(K, V); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl From<BTreeMap<String, String>> for Metadata {
    fn from(map: BTreeMap<String, String>) -> Self {
        // Already sorted and unique.
        Metadata {
            entries: map.into_iter().collect(),
        }
    }
}

impl From<Metadata> for BTreeMap<String, String> {
    fn from(m: Metadata) -> Self {
        m.entries.into_iter().collect()
    }
}

impl Index<&str> for Metadata {
    type Output = String;

    /// # Panics
    /// When `key` has no value, as `BTreeMap`'s index does.
    fn index(&self, key: &str) -> &String {
        match self.get(key) {
            Some(v) => v,
            None => panic!("no metadata key `{key}`"),
        }
    }
}

/// The pairs of a [`Metadata`], by key.
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    inner: std::slice::Iter<'a, (String, String)>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a String, &'a String);

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next().map(|(k, v)| (k, v))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.inner.next_back().map(|(k, v)| (k, v))
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Metadata {
    type Item = (&'a String, &'a String);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl IntoIterator for Metadata {
    type Item = (String, String);
    type IntoIter = std::vec::IntoIter<(String, String)>;

    /// The pairs, by key.
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl Serialize for Metadata {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (k, v) in &self.entries {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PairsVisitor;

        impl<'de> Visitor<'de> for PairsVisitor {
            type Value = Metadata;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings to strings")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Metadata, A::Error> {
                // The size hint comes from the input: bounded so it cannot reserve much.
                let mut pairs = Vec::with_capacity(access.size_hint().unwrap_or(0).min(64));
                while let Some((k, v)) = access.next_entry::<String, String>()? {
                    pairs.push((k, v));
                }
                Ok(Metadata::from_pairs(pairs))
            }
        }

        deserializer.deserialize_map(PairsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_a_btreemap() {
        let mut m = Metadata::new();
        let mut b = BTreeMap::new();
        for (k, v) in [("b", "1"), ("a", "2"), ("c", "3"), ("a", "4"), ("", "5")] {
            assert_eq!(
                m.insert(k.to_owned(), v.to_owned()),
                b.insert(k.to_owned(), v.to_owned())
            );
        }
        assert_eq!(m.len(), b.len());
        assert!(m.iter().eq(b.iter()));
        assert!(m.iter().rev().eq(b.iter().rev()));
        assert!(m.keys().eq(b.keys()));
        assert!(m.values().eq(b.values()));
        assert_eq!(m.remove("c"), b.remove("c"));
        assert_eq!(m.remove("zz"), None);
        assert!(m.contains_key("a") && !m.contains_key("c"));
        assert_eq!(&m["a"], "4");
        *m.get_mut("b").unwrap() = "9".into();
        b.insert("b".into(), "9".into());
        m.retain(|k, _| !k.is_empty());
        b.retain(|k, _| !k.is_empty());
        assert_eq!(BTreeMap::from(m.clone()), b);
        assert_eq!(Metadata::from(b.clone()), m);
        m.extend([("0", "x"), ("b", "y")]);
        b.extend([("0".to_owned(), "x".to_owned()), ("b".into(), "y".into())]);
        assert!(m.clone().into_iter().eq(b.clone()));
        assert_eq!(format!("{m:?}"), format!("{b:?}"));
        m.clear();
        assert!(m.is_empty());
    }

    #[test]
    #[should_panic(expected = "no metadata key `x`")]
    fn indexing_a_missing_key_panics_like_a_map() {
        let _ = &Metadata::new()["x"];
    }

    #[test]
    fn json_is_a_sorted_object_and_duplicates_keep_the_last_value() {
        let m: Metadata = [("zone", "z"), ("env", "e"), ("a\"q", "\u{e9}")].into();
        let b: BTreeMap<String, String> = m.clone().into();
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        let back: Metadata = serde_json::from_str(r#"{"k":"1","j":"x","k":"2","k":"3"}"#).unwrap();
        assert_eq!(back, [("j", "x"), ("k", "3")].into());
        assert!(serde_json::from_str::<Metadata>(r#"{"k":1}"#).is_err());
        assert!(serde_json::from_str::<Metadata>(r#"["k"]"#).is_err());
        assert_eq!(
            serde_json::from_str::<Metadata>("{}").unwrap(),
            Metadata::new()
        );
    }

    #[test]
    fn many_pairs_in_json_decode_in_n_log_n() {
        // 200,000 distinct keys in reverse order: quadratic insertion would take minutes.
        let n = 200_000;
        let mut json = String::from("{");
        for i in (0..n).rev() {
            if i != n - 1 {
                json.push(',');
            }
            json.push_str(&format!("\"k{i:06}\":\"v\""));
        }
        json.push('}');
        let started = std::time::Instant::now();
        let m: Metadata = serde_json::from_str(&json).unwrap();
        assert_eq!(m.len(), n);
        assert_eq!(m.keys().next().map(String::as_str), Some("k000000"));
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }
}
