//! An untyped YAML value that keeps key order, so manifests come back as they were written,
//! and reading and writing whole documents of it.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// A YAML node. Mappings keep their keys in order, so manifests come back as they were written.
#[derive(Debug, Clone, PartialEq)]
pub enum Yaml {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Yaml>),
    Map(Mapping),
}

/// An ordered mapping with string keys (Kubernetes manifests have no other kind).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Mapping(pub Vec<(String, Yaml)>);

impl Mapping {
    pub fn get(&self, key: &str) -> Option<&Yaml> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Yaml> {
        self.0.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets `key`, in place when it exists, else at the end.
    pub fn insert(&mut self, key: &str, value: Yaml) {
        match self.get_mut(key) {
            Some(v) => *v = value,
            None => self.0.push((key.to_owned(), value)),
        }
    }

    /// The mapping under `key`, made (or replaced, when it is not a mapping) if need be.
    pub fn map_entry(&mut self, key: &str) -> Option<&mut Mapping> {
        if !matches!(self.get(key), Some(Yaml::Map(_))) {
            self.insert(key, Yaml::Map(Mapping::default()));
        }
        self.get_mut(key).and_then(Yaml::as_map_mut)
    }

    /// The sequence under `key`, made if missing or null.
    pub(super) fn seq_entry(&mut self, key: &str) -> Option<&mut Vec<Yaml>> {
        if matches!(self.get(key), None | Some(Yaml::Null)) {
            self.insert(key, Yaml::Seq(Vec::new()));
        }
        match self.get_mut(key) {
            Some(Yaml::Seq(s)) => Some(s),
            _ => None,
        }
    }
}

impl Yaml {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Yaml::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&Mapping> {
        match self {
            Yaml::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_map_mut(&mut self) -> Option<&mut Mapping> {
        match self {
            Yaml::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The node at a path of mapping keys.
    pub fn at(&self, path: &[&str]) -> Option<&Yaml> {
        path.iter().try_fold(self, |node, key| node.as_map()?.get(key))
    }

    pub fn at_mut(&mut self, path: &[&str]) -> Option<&mut Yaml> {
        path.iter()
            .try_fold(self, |node, key| node.as_map_mut()?.get_mut(key))
    }

    pub(super) fn str(s: impl Into<String>) -> Yaml {
        Yaml::Str(s.into())
    }

    pub(super) fn map<const N: usize>(entries: [(&str, Yaml); N]) -> Yaml {
        Yaml::Map(Mapping(
            entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        ))
    }

    pub(super) fn strs(items: &[&str]) -> Yaml {
        Yaml::Seq(items.iter().map(|s| Yaml::str(*s)).collect())
    }
}

impl<'de> Deserialize<'de> for Yaml {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Yaml, D::Error> {
        d.deserialize_any(YamlVisitor)
    }
}

struct YamlVisitor;

impl<'de> Visitor<'de> for YamlVisitor {
    type Value = Yaml;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Yaml, E> {
        Ok(Yaml::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Yaml, E> {
        Ok(Yaml::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Yaml, E> {
        Ok(match i64::try_from(v) {
            Ok(i) => Yaml::Int(i),
            Err(_) => Yaml::UInt(v),
        })
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Yaml, E> {
        i64::try_from(v)
            .map(Yaml::Int)
            .map_err(|_| E::custom(format!("the integer {v} is too large")))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Yaml, E> {
        u64::try_from(v)
            .map(|v| self.visit_u64::<E>(v).unwrap_or(Yaml::UInt(v)))
            .map_err(|_| E::custom(format!("the integer {v} is too large")))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Yaml, E> {
        Ok(Yaml::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Yaml, E> {
        Ok(Yaml::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Yaml, E> {
        Ok(Yaml::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Yaml, E> {
        String::from_utf8(v.to_vec())
            .map(Yaml::Str)
            .map_err(|_| E::custom("binary data is not supported in manifests ward injects"))
    }
    fn visit_none<E>(self) -> Result<Yaml, E> {
        Ok(Yaml::Null)
    }
    fn visit_unit<E>(self) -> Result<Yaml, E> {
        Ok(Yaml::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Yaml, D::Error> {
        Yaml::deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Yaml, D::Error> {
        Yaml::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Yaml, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element::<Yaml>()? {
            out.push(v);
        }
        Ok(Yaml::Seq(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Yaml, A::Error> {
        let mut out = Mapping::default();
        // Keys as their text: `n:` or `on:` stay what they were written as, never `false:`.
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value::<Yaml>()?;
            out.insert(&key, value);
        }
        Ok(Yaml::Map(out))
    }
}

impl Serialize for Yaml {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Yaml::Null => s.serialize_unit(),
            Yaml::Bool(b) => s.serialize_bool(*b),
            Yaml::Int(i) => s.serialize_i64(*i),
            Yaml::UInt(u) => s.serialize_u64(*u),
            Yaml::Float(f) => s.serialize_f64(*f),
            Yaml::Str(v) => s.serialize_str(v),
            Yaml::Seq(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Yaml::Map(m) => {
                let mut map = s.serialize_map(Some(m.0.len()))?;
                for (k, v) in &m.0 {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// Parses every document of a multi-document YAML text (empty documents are skipped).
pub fn parse_documents(text: &str) -> Result<Vec<Yaml>, String> {
    serde_saphyr::from_multiple::<Yaml>(text).map_err(|e| e.to_string())
}

/// Writes one document.
pub fn to_yaml(doc: &Yaml) -> Result<String, String> {
    serde_saphyr::to_string(doc).map_err(|e| e.to_string())
}
