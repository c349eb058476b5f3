//! Strict deserialization of an OpenDAL service config from string options.
//!
//! OpenDAL's service configs (`S3Config`, `FsConfig`, ...) derive
//! `Deserialize` with `#[serde(default)]` and without `deny_unknown_fields`,
//! so a misspelt key (`bukket`) is silently ignored by `Configurator::from_iter`.
//! This module wraps OpenDAL's own `ConfigDeserializer` (so values are parsed
//! exactly as OpenDAL parses them) and records every map key whose value the
//! derived `Deserialize` impl skips with `deserialize_ignored_any`, which is
//! what serde-derive does for unknown fields. Aliases (`aws_bucket`, ...) are
//! therefore accepted exactly when OpenDAL accepts them. Works for any
//! compiled-in service whose config is a plain derived struct.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

use opendal::raw::ConfigDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// Deserialize `T` from string options; returns the value (or the serde error
/// message) and the list of keys `T` ignored, in input order.
pub(super) fn deserialize_strict<T>(options: &[(String, String)]) -> (std::result::Result<T, String>, Vec<String>)
where
    T: for<'de> Deserialize<'de>,
{
    let map: HashMap<String, String> = options.iter().cloned().collect();
    let ignored = RefCell::new(Vec::new());
    let res =
        T::deserialize(Track { inner: ConfigDeserializer::new(map), ignored: &ignored }).map_err(|e| e.to_string());
    let mut ignored = ignored.into_inner();
    // Report in the caller's order (the deserializer iterates a HashMap).
    ignored.sort_by_key(|k| options.iter().position(|(o, _)| o.eq_ignore_ascii_case(k)).unwrap_or(usize::MAX));
    (res, ignored)
}

/// Top-level deserializer: hands the struct visitor a tracking `MapAccess`.
struct Track<'a, D> {
    inner: D,
    ignored: &'a RefCell<Vec<String>>,
}

impl<'de, 'a, D: Deserializer<'de>> Deserializer<'de> for Track<'a, D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_any(TrackVisitor { inner: visitor, ignored: self.ignored })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct TrackVisitor<'a, V> {
    inner: V,
    ignored: &'a RefCell<Vec<String>>,
}

impl<'de, 'a, V: Visitor<'de>> Visitor<'de> for TrackVisitor<'a, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(TrackMap { inner: map, ignored: self.ignored, key: None })
    }
}

struct TrackMap<'a, A> {
    inner: A,
    ignored: &'a RefCell<Vec<String>>,
    key: Option<String>,
}

impl<'de, 'a, A: MapAccess<'de>> MapAccess<'de> for TrackMap<'a, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        let mut captured = None;
        let out = self.inner.next_key_seed(KeySeed { inner: seed, out: &mut captured })?;
        self.key = captured;
        Ok(out)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        self.inner.next_value_seed(ValueSeed { inner: seed, key: self.key.take(), ignored: self.ignored })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

/// Captures the key string on its way to the derived field visitor.
struct KeySeed<'o, S> {
    inner: S,
    out: &'o mut Option<String>,
}

impl<'de, 'o, S: DeserializeSeed<'de>> DeserializeSeed<'de> for KeySeed<'o, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(KeyDe { inner: d, out: self.out })
    }
}

struct KeyDe<'o, D> {
    inner: D,
    out: &'o mut Option<String>,
}

impl<'de, 'o, D: Deserializer<'de>> Deserializer<'de> for KeyDe<'o, D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_any(KeyVisitor { inner: visitor, out: self.out })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct KeyVisitor<'o, V> {
    inner: V,
    out: &'o mut Option<String>,
}

impl<'de, 'o, V: Visitor<'de>> Visitor<'de> for KeyVisitor<'o, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<V::Value, E> {
        *self.out = Some(v.to_string());
        self.inner.visit_str(v)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<V::Value, E> {
        *self.out = Some(v.to_string());
        self.inner.visit_borrowed_str(v)
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<V::Value, E> {
        *self.out = Some(v.clone());
        self.inner.visit_string(v)
    }
}

/// Wraps a value deserializer; records the key when the value is skipped.
struct ValueSeed<'a, S> {
    inner: S,
    key: Option<String>,
    ignored: &'a RefCell<Vec<String>>,
}

impl<'de, 'a, S: DeserializeSeed<'de>> DeserializeSeed<'de> for ValueSeed<'a, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(ValueDe { inner: d, key: self.key, ignored: self.ignored })
    }
}

struct ValueDe<'a, D> {
    inner: D,
    key: Option<String>,
    ignored: &'a RefCell<Vec<String>>,
}

macro_rules! forward_value {
    ($($method:ident),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
                self.inner.$method(visitor)
            }
        )*
    };
}

impl<'de, 'a, D: Deserializer<'de>> Deserializer<'de> for ValueDe<'a, D> {
    type Error = D::Error;

    forward_value!(
        deserialize_any,
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_option,
        deserialize_unit,
        deserialize_seq,
        deserialize_map,
        deserialize_identifier,
    );

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        if let Some(key) = self.key {
            self.ignored.borrow_mut().push(key);
        }
        self.inner.deserialize_ignored_any(visitor)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_unit_struct(name, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_newtype_struct(name, visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_tuple(len, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_tuple_struct(name, len, visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_struct(name, fields, visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_enum(name, variants, visitor)
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}
