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
        let mut out = pool::POOL.take(b.len() / 4);
        out.extend(
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        Ok(out)
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

/// Buffers for decoded `f32` vectors, handed back once their values are
/// used ([`recycle_f32s`]) and taken again by the next decode of a vector
/// of about their size.
///
/// A large vector decoded into a fresh allocation costs more than the
/// copy of its bytes: above glibc's mmap threshold (at most 32 MiB) every
/// such `Vec` is a new mapping whose pages fault in, zeroed, as the decode
/// writes them, and are unmapped when it is dropped (the 10M-parameter
/// push + pull decodes 40 MB each way per step). The pool is bounded:
/// at most [`POOL_BYTES`] bytes in at most [`POOL_BUFFERS`] buffers, each
/// at least [`POOL_MIN_BYTES`] (smaller ones are cheap to allocate);
/// beyond that a handed-back buffer is freed as usual.
pub(crate) mod pool {
    use std::sync::{Mutex, MutexGuard, PoisonError};

    /// The most bytes of idle buffers kept per process.
    pub(crate) const POOL_BYTES: usize = 128 << 20;
    /// The most idle buffers kept.
    pub(crate) const POOL_BUFFERS: usize = 64;
    /// Buffers smaller than this are not kept.
    pub(crate) const POOL_MIN_BYTES: usize = 256 << 10;

    /// Idle buffers, within bounds.
    pub(crate) struct Pool {
        idle: Mutex<Vec<Vec<f32>>>,
        max_bytes: usize,
        max_buffers: usize,
        min_bytes: usize,
    }

    /// The process's pool.
    pub(crate) static POOL: Pool = Pool::new(POOL_BYTES, POOL_BUFFERS, POOL_MIN_BYTES);

    impl Pool {
        pub(crate) const fn new(max_bytes: usize, max_buffers: usize, min_bytes: usize) -> Self {
            Pool {
                idle: Mutex::new(Vec::new()),
                max_bytes,
                max_buffers,
                min_bytes,
            }
        }

        fn idle(&self) -> MutexGuard<'_, Vec<Vec<f32>>> {
            // The list is valid whatever a panicking holder did to it.
            self.idle.lock().unwrap_or_else(PoisonError::into_inner)
        }

        /// An empty vector with room for `n` values: the smallest idle
        /// buffer that holds them without being more than twice their
        /// size, or a new one.
        pub(crate) fn take(&self, n: usize) -> Vec<f32> {
            if n.saturating_mul(4) >= self.min_bytes {
                let mut idle = self.idle();
                let best = idle
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.capacity() >= n && v.capacity() / 2 <= n)
                    .min_by_key(|(_, v)| v.capacity())
                    .map(|(i, _)| i);
                if let Some(i) = best {
                    let mut v = idle.swap_remove(i);
                    v.clear();
                    return v;
                }
            }
            Vec::with_capacity(n)
        }

        /// Keeps `v`'s buffer for a later decode if there is room.
        pub(crate) fn give(&self, v: Vec<f32>) {
            let bytes = v.capacity() * 4;
            if bytes < self.min_bytes {
                return;
            }
            let mut idle = self.idle();
            let held: usize = idle.iter().map(|v| v.capacity() * 4).sum();
            if idle.len() < self.max_buffers && held + bytes <= self.max_bytes {
                idle.push(v);
            }
        }

        /// Bytes held idle now.
        pub(crate) fn idle_bytes(&self) -> usize {
            self.idle().iter().map(|v| v.capacity() * 4).sum()
        }
    }
}

/// Hands `f32` vectors whose values are no longer needed back to the
/// decode pool: the next message decoded in this process that carries a
/// vector of about the same size is written into one of them instead of
/// fresh memory. Bounded (128 MiB, 64 buffers, only buffers of at least
/// 256 KiB); what does not fit is freed. [`crate::Gradients`] hands its
/// vectors back when it is dropped.
pub fn recycle_f32s(vs: impl IntoIterator<Item = Vec<f32>>) {
    for v in vs {
        pool::POOL.give(v);
    }
}

/// Bytes of `f32` buffers the decode pool holds idle in this process.
pub fn idle_f32_bytes() -> usize {
    pool::POOL.idle_bytes()
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
    fn a_recycled_vector_holds_the_next_decode_of_about_its_size() {
        #[derive(Debug, Serialize, Deserialize)]
        struct One(#[serde(with = "super::f32s")] Vec<f32>);
        // A size no other test of this binary decodes (1.5-3M values).
        let n = 2_345_679;
        let bytes = postcard::to_allocvec(&One(vec![0.5; n])).unwrap();
        let first = postcard::from_bytes::<One>(&bytes).unwrap().0;
        assert_eq!(first.len(), n);
        let at = first.as_ptr();
        let before = super::idle_f32_bytes();
        super::recycle_f32s([first]);
        assert!(super::idle_f32_bytes() >= before + n * 4);
        // A little smaller: the same buffer, with the new values.
        let smaller = postcard::to_allocvec(&One(vec![2.0; n - 1000])).unwrap();
        let second = postcard::from_bytes::<One>(&smaller).unwrap().0;
        assert_eq!(second.as_ptr(), at, "the recycled buffer was not reused");
        assert_eq!(second.len(), n - 1000);
        assert!(second.iter().all(|&x| x == 2.0));
        // Dropped gradients hand their vectors back.
        let at = second.as_ptr();
        drop(crate::ps::Gradients {
            worker: 0,
            version: 0,
            grads: vec![second],
            loss: 0.0,
            samples: 1,
        });
        let third = postcard::from_bytes::<One>(&bytes).unwrap().0;
        assert_eq!(third.as_ptr(), at, "dropped gradients were not recycled");
    }

    #[test]
    fn the_pool_keeps_within_its_bounds_and_fits_sizes() {
        use super::pool::Pool;
        // 1 MiB, 3 buffers, nothing under 4 KiB (1,024 values).
        let pool = Pool::new(1 << 20, 3, 4096);
        pool.give(Vec::with_capacity(1000));
        assert_eq!(pool.idle_bytes(), 0, "small buffers are not kept");
        for _ in 0..4 {
            pool.give(Vec::with_capacity(16_384));
        }
        assert_eq!(pool.idle_bytes(), 3 * 65_536, "at most 3 buffers");
        let pool = Pool::new(1 << 20, 64, 4096);
        for _ in 0..5 {
            pool.give(Vec::with_capacity(65_536));
        }
        assert_eq!(pool.idle_bytes(), 1 << 20, "at most 1 MiB");
        // A vector under half a buffer's size gets a new one; one that
        // fits gets an idle buffer; more than a buffer holds, a new one.
        assert_eq!(pool.take(30_000).capacity(), 30_000);
        assert_eq!(pool.take(40_000).capacity(), 65_536);
        assert_eq!(pool.idle_bytes(), 3 * 262_144);
        assert_eq!(pool.take(70_000).capacity(), 70_000);
        // Best fit: the smaller of two that hold it.
        let pool = Pool::new(1 << 20, 64, 4096);
        pool.give(Vec::with_capacity(20_000));
        pool.give(Vec::with_capacity(12_000));
        assert_eq!(pool.take(10_000).capacity(), 12_000);
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
