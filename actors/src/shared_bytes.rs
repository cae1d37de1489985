//! Byte payloads that arrive without a copy: `#[serde(with =
//! "manta::shared_bytes")]` on a [`bytes::Bytes`] field.
//!
//! A `Vec<u8>` (even with `serde_bytes`) is decoded into a fresh
//! allocation: for a 16 MiB payload that is a 16 MiB copy, and the page
//! faults of new memory, on the receiving node. A `Bytes` field marked
//! with this module is instead a slice of the buffer the message arrived
//! in, when the transport decodes it from a buffer of its own (large
//! messages: those on the bulk lane and those reassembled from chunks);
//! elsewhere (small frames, another serde format) it is copied as usual.
//! The slice keeps that buffer alive as long as the payload is held, so a
//! payload shares it only when it is at least a quarter of it
//! ([`MIN_SHARE`]): a small field kept from a large message is copied and
//! never pins more than four times its own size.
//!
//! ```
//! use manta_actors::bytes::Bytes;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Put {
//!     key: String,
//!     #[serde(with = "manta_actors::shared_bytes")]
//!     value: Bytes,
//! }
//! ```

use std::cell::RefCell;

use bytes::Bytes;
use serde::de::Visitor;
use serde::{Deserializer, Serializer};

thread_local! {
    static FRAME: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Runs `decode` (which deserialises from `frame`, or from a slice of it)
/// so that [`shared_bytes`](self) fields become slices of `frame` instead
/// of copies.
pub fn decode_sharing<T>(frame: &Bytes, decode: impl FnOnce() -> T) -> T {
    let prev = FRAME.with(|f| f.borrow_mut().replace(frame.clone()));
    let out = decode();
    FRAME.with(|f| *f.borrow_mut() = prev);
    out
}

/// A payload is a slice of its frame only if it is at least this share
/// of it (one quarter); smaller ones are copied.
pub const MIN_SHARE: usize = 4;

/// `bytes` as a slice of the frame being decoded, if it lies within it
/// and is at least a [`MIN_SHARE`]th of it.
fn share(bytes: &[u8]) -> Option<Bytes> {
    FRAME.with(|f| {
        let f = f.borrow();
        let frame = f.as_ref()?;
        let (start, end) = (
            frame.as_ptr() as usize,
            frame.as_ptr() as usize + frame.len(),
        );
        let at = bytes.as_ptr() as usize;
        // `slice_ref` requires the slice to lie within the frame (it
        // panics otherwise): checked here first.
        let inside = at >= start && at + bytes.len() <= end && !bytes.is_empty();
        let large = bytes.len().saturating_mul(MIN_SHARE) >= frame.len();
        (inside && large).then(|| frame.slice_ref(bytes))
    })
}

/// Serialises the bytes as one byte string (as `serde_bytes` does).
pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(b)
}

/// Deserialises a byte string: a slice of the frame when it is being
/// decoded under [`decode_sharing`], a copy otherwise.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    d.deserialize_bytes(SharedVisitor)
}

struct SharedVisitor;

impl<'de> Visitor<'de> for SharedVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
        Ok(share(v).unwrap_or_else(|| Bytes::copy_from_slice(v)))
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        // Human-readable formats write a byte string as a list of numbers.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bytes::Bytes;
    use serde::{Deserialize, Serialize};

    use super::decode_sharing;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Put {
        key: String,
        #[serde(with = "super")]
        value: Bytes,
    }

    fn within(part: &[u8], whole: &[u8]) -> bool {
        let (s, e) = (
            whole.as_ptr() as usize,
            whole.as_ptr() as usize + whole.len(),
        );
        let p = part.as_ptr() as usize;
        p >= s && p + part.len() <= e
    }

    #[test]
    fn decoded_under_its_frame_the_payload_is_a_slice_of_it_and_a_copy_otherwise() {
        let put = Put {
            key: "k".into(),
            value: Bytes::from(vec![7u8; 100_000]),
        };
        let frame = Bytes::from(postcard::to_allocvec(&put).unwrap());
        // A message that is a slice of the frame, as a body in a frame is.
        let body = &frame[..];
        let shared: Put = decode_sharing(&frame, || postcard::from_bytes(body)).unwrap();
        assert_eq!(shared, put);
        assert!(within(&shared.value, &frame), "not a slice of the frame");
        // Without the frame: a copy.
        let copied: Put = postcard::from_bytes(&frame).unwrap();
        assert_eq!(copied, put);
        assert!(!within(&copied.value, &frame));
        // Under another frame (the bytes are not in it): a copy too.
        let other = Bytes::from(vec![0u8; 10]);
        let copied: Put = decode_sharing(&other, || postcard::from_bytes(&frame)).unwrap();
        assert!(!within(&copied.value, &frame));
        // The frame is released by the slice only: once the payload goes,
        // the frame's buffer is unique again.
        drop(shared);
        assert!(frame.is_unique());
    }

    #[test]
    fn a_payload_under_a_quarter_of_its_frame_is_copied_not_shared() {
        #[derive(Debug, Serialize, Deserialize)]
        struct Two {
            #[serde(with = "super")]
            small: Bytes,
            big: Vec<u8>,
        }
        let two = Two {
            small: Bytes::from(vec![1u8; 1000]),
            big: vec![2u8; 100_000],
        };
        let frame = Bytes::from(postcard::to_allocvec(&two).unwrap());
        let got: Two = decode_sharing(&frame, || postcard::from_bytes(&frame)).unwrap();
        assert_eq!(got.small, two.small);
        assert!(
            !within(&got.small, &frame),
            "a small payload pinned its frame"
        );
        // A quarter exactly is shared.
        let two = Two {
            small: Bytes::from(vec![1u8; 40_000]),
            big: vec![2u8; 119_990],
        };
        let frame = Bytes::from(postcard::to_allocvec(&two).unwrap());
        assert!(frame.len() <= 160_000);
        let got: Two = decode_sharing(&frame, || postcard::from_bytes(&frame)).unwrap();
        assert!(within(&got.small, &frame));
    }

    #[test]
    fn json_round_trips_and_the_frame_is_restored_after_nested_decodes() {
        let put = Put {
            key: "k".into(),
            value: Bytes::from_static(b"abc"),
        };
        let text = serde_json::to_string(&put).unwrap();
        assert_eq!(text, r#"{"key":"k","value":[97,98,99]}"#);
        assert_eq!(serde_json::from_str::<Put>(&text).unwrap(), put);
        let outer = Bytes::from(postcard::to_allocvec(&put).unwrap());
        let inner = Bytes::from(postcard::to_allocvec(&put).unwrap());
        let (a, b): (Put, Put) = decode_sharing(&outer, || {
            let b: Put = decode_sharing(&inner, || postcard::from_bytes(&inner)).unwrap();
            (postcard::from_bytes(&outer).unwrap(), b)
        });
        assert!(within(&a.value, &outer), "the outer frame was not restored");
        assert!(within(&b.value, &inner));
    }
}
