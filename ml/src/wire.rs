//! Compact encodings of `f32` vectors for messages and checkpoints.
//!
//! A derived `Vec<f32>` goes through serde one element at a time, which
//! dominated the encode and decode of a 10M-parameter pull or push. Binary
//! formats (postcard) get the vector as one byte string here, little-endian,
//! borrowed as it is on little-endian hosts; human-readable formats (JSON)
//! still get a list of numbers.

use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserializer, Serializer};

/// The values as little-endian bytes, without a copy where the host is
/// little-endian.
fn le_bytes(v: &[f32]) -> std::borrow::Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        std::borrow::Cow::Borrowed(bytemuck::cast_slice(v))
    } else {
        std::borrow::Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
}

fn put<S: Serializer>(v: &[f32], s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        s.collect_seq(v)
    } else {
        s.serialize_bytes(&le_bytes(v))
    }
}

struct F32Visitor;

impl<'de> Visitor<'de> for F32Visitor {
    type Value = Vec<f32>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("f32 values as little-endian bytes (a multiple of 4) or a list")
    }

    fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> Result<Vec<f32>, E> {
        if b.len() % 4 != 0 {
            return Err(E::invalid_length(b.len(), &self));
        }
        Ok(b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    fn visit_byte_buf<E: serde::de::Error>(self, b: Vec<u8>) -> Result<Vec<f32>, E> {
        self.visit_bytes(&b)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<f32>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        while let Some(x) = seq.next_element()? {
            out.push(x);
        }
        Ok(out)
    }
}

fn get<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
    if d.is_human_readable() {
        d.deserialize_seq(F32Visitor)
    } else {
        d.deserialize_bytes(F32Visitor)
    }
}

/// `#[serde(with = "crate::wire::f32s")]` for a `Vec<f32>`.
pub(crate) mod f32s {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &[f32], s: S) -> Result<S::Ok, S::Error> {
        put(v, s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
        get(d)
    }
}

/// `#[serde(with = "crate::wire::f32_vecs")]` for a `Vec<Vec<f32>>`.
pub(crate) mod f32_vecs {
    use super::*;

    struct One<'a>(&'a [f32]);

    impl serde::Serialize for One<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            put(self.0, s)
        }
    }

    struct Owned(Vec<f32>);

    impl<'de> serde::Deserialize<'de> for Owned {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            get(d).map(Owned)
        }
    }

    pub(crate) fn serialize<S: Serializer>(v: &[Vec<f32>], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for x in v {
            seq.serialize_element(&One(x))?;
        }
        seq.end()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<f32>>, D::Error> {
        struct Outer;
        impl<'de> Visitor<'de> for Outer {
            type Value = Vec<Vec<f32>>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of f32 vectors")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(Owned(x)) = seq.next_element()? {
                    out.push(x);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Outer)
    }
}

/// A shared vector encoded as the vector itself (the same bytes as a
/// `Vec<T>` field), so that a sender can hand out what it keeps without
/// copying it.
pub(crate) mod shared {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(crate) fn serialize<T: Serialize, S: Serializer>(
        v: &Arc<Vec<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        v.as_slice().serialize(s)
    }

    pub(crate) fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Arc<Vec<T>>, D::Error> {
        Vec::deserialize(d).map(Arc::new)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Both {
        #[serde(with = "super::f32s")]
        one: Vec<f32>,
        #[serde(with = "super::f32_vecs")]
        many: Vec<Vec<f32>>,
    }

    fn sample() -> Both {
        Both {
            one: vec![1.5, -0.0, f32::MIN_POSITIVE, f32::MAX, 3.25e-7],
            many: vec![vec![], vec![2.0; 3], vec![-1.0, 0.5]],
        }
    }

    #[test]
    fn postcard_carries_the_values_as_one_byte_string_and_back() {
        let b = sample();
        let bytes = postcard::to_allocvec(&b).unwrap();
        // varint length 20, then the 20 little-endian bytes of `one`.
        assert_eq!(bytes[0], 20);
        assert_eq!(&bytes[1..5], &1.5f32.to_le_bytes());
        assert_eq!(postcard::from_bytes::<Both>(&bytes).unwrap(), b);
    }

    #[test]
    fn json_keeps_readable_numbers() {
        let b = sample();
        let text = serde_json::to_string(&b).unwrap();
        assert!(text.starts_with("{\"one\":[1.5,"), "{text}");
        assert_eq!(serde_json::from_str::<Both>(&text).unwrap(), b);
    }

    #[test]
    fn a_byte_string_not_a_multiple_of_four_is_an_error() {
        #[derive(Debug, Deserialize)]
        struct One(#[serde(with = "super::f32s")] Vec<f32>);
        // Three bytes claimed and present: not whole f32s.
        let e = postcard::from_bytes::<One>(&[3, 1, 2, 3]).unwrap_err();
        assert!(matches!(e, postcard::Error::SerdeDeCustom), "{e:?}");
        let ok = postcard::from_bytes::<One>(&[4, 0, 0, 0x80, 0x3f]).unwrap();
        assert_eq!(ok.0, [1.0]);
    }

    #[test]
    fn a_shared_vector_is_encoded_as_the_vector_itself() {
        use std::sync::Arc;
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Shared(#[serde(with = "super::shared")] Arc<Vec<Both>>);
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Plain(Vec<Both>);
        let shared = Shared(Arc::new(vec![sample(), sample()]));
        let plain = Plain(vec![sample(), sample()]);
        let bytes = postcard::to_allocvec(&shared).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&plain).unwrap());
        assert_eq!(postcard::from_bytes::<Shared>(&bytes).unwrap(), shared);
        let text = serde_json::to_string(&shared).unwrap();
        assert_eq!(text, serde_json::to_string(&plain).unwrap());
    }
}
