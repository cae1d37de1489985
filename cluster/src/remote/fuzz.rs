//! Fuzzing entry points for the frame codec of actor streams (feature
//! `fuzzing`; re-exported by `crate::fuzzing`, which says what they are
//! for). A child of `remote`, so the fuzzers run the codec the read loop and
//! the writer run, through the items `frame` keeps private to `remote`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed check is the finding

use std::borrow::Cow;

use manta_actors::{ExitReason, WireError};

use super::frame::{
    self, CHUNK_VARIANT, ChunkRef, Encoded, Frame, LANE_HEAD, LANE_RECORD, LaneGrant, ReplyBody,
};
use super::{CHUNK, FRAME_VERSION, MAX_FRAME, MAX_WIRE_FRAME};
use crate::bulk::{RECORD_HEADER, RECORD_TAG};

// ---- the frame codec (remote actor streams) --------------------------------

/// A frame encoded for an actor stream on the mesh (no bulk lane).
fn encode_mesh(f: &Frame<'_>) -> Result<Encoded, WireError> {
    frame::encode(f, None)
}

/// The bytes of the frame an encoding carries, without the length prefix and
/// version: a small frame as it is, a large one reassembled from its chunks
/// (each checked the way the read loop checks it), a bulk-lane message from
/// its records' plaintext.
fn written(e: Encoded) -> Vec<u8> {
    match e {
        Encoded::Small(b) => {
            let len = u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
            assert_eq!(len, b.len() - 4, "a small frame's length prefix");
            assert!(
                len <= MAX_WIRE_FRAME,
                "a small frame longer than the reader takes"
            );
            assert_eq!(b[4], FRAME_VERSION);
            b[5..].to_vec()
        }
        Encoded::Chunks(chunks) => {
            let mut whole = Vec::new();
            for (i, c) in chunks.iter().enumerate() {
                let len = u32::from_be_bytes(c[..4].try_into().unwrap()) as usize;
                assert_eq!(len, c.len() - 4, "chunk {i}: length prefix");
                assert!(
                    len <= MAX_WIRE_FRAME,
                    "chunk {i}: longer than the reader takes"
                );
                assert_eq!((c[4], c[5]), (FRAME_VERSION, CHUNK_VARIANT));
                let r = postcard::from_bytes::<ChunkRef<'_>>(&c[6..]).unwrap();
                assert_eq!((r.index, r.count), (i as u32, chunks.len() as u32));
                whole.extend_from_slice(r.data);
            }
            whole
        }
        Encoded::Records(records) => {
            // Records of at most LANE_RECORD plaintext bytes, each with room
            // for its tag (sealed in place); in them the lane head, then the
            // frame as on a stream (length, version, frame).
            let mut plain = Vec::new();
            for (i, r) in records.iter().enumerate() {
                assert!(
                    r.len() >= RECORD_HEADER && r.len() - RECORD_HEADER <= LANE_RECORD,
                    "record {i}: {} bytes",
                    r.len()
                );
                assert!(
                    r.capacity() >= r.len() + RECORD_TAG,
                    "record {i}: no room for its tag"
                );
                plain.extend_from_slice(&r[RECORD_HEADER..]);
            }
            let len = u32::from_be_bytes(plain[LANE_HEAD..LANE_HEAD + 4].try_into().unwrap());
            assert_eq!(
                len as usize,
                plain.len() - LANE_HEAD - 4,
                "a lane message's length prefix"
            );
            assert_eq!(plain[LANE_HEAD + 4], FRAME_VERSION);
            plain[LANE_HEAD + 5..].to_vec()
        }
    }
}

/// A decoded frame encodes again, and that encoding decodes to the same
/// frame; encoded for a bulk lane (a threshold of 0 puts every frame
/// there), it carries the same bytes.
fn round_trip(f: &Frame<'_>) {
    let shown = format!("{f:?}");
    let _ = f.target();
    match frame::encode(f, None) {
        Ok(e) => {
            let bytes = written(e);
            let back = postcard::from_bytes::<Frame<'_>>(&bytes)
                .unwrap_or_else(|e| panic!("a re-encoded frame does not decode ({e}): {shown}"));
            assert_eq!(
                format!("{back:?}"),
                shown,
                "a frame changed in a round trip"
            );
            match frame::encode(f, Some(0)) {
                Ok(lane @ Encoded::Records(_)) => assert!(
                    written(lane) == bytes,
                    "a frame on the lane differs from the frame on the mesh: {shown}"
                ),
                Ok(_) => panic!("a frame for the lane was not encoded in records: {shown}"),
                Err(e) => panic!("a decoded frame does not encode for the lane: {e}: {shown}"),
            }
        }
        // Only a frame larger than MAX_FRAME cannot be sent; a decoded one
        // came from at most MAX_FRAME bytes.
        Err(e) => panic!("a decoded frame does not encode: {e}: {shown}"),
    }
}

/// One frame as the read loop of an actor stream gets it (after its `u32`
/// length prefix): the version byte, then a chunk of a large message or a
/// whole frame. Checks what the loop checks, decodes what it decodes, and
/// that every frame it accepts survives a round trip through the writer.
pub fn fuzz_frame(data: &[u8]) {
    if data.is_empty() || data.len() > MAX_WIRE_FRAME || data[0] != FRAME_VERSION {
        return; // the stream is closed before any decoding
    }
    if data.get(1) == Some(&CHUNK_VARIANT) {
        if let Ok(c) = postcard::from_bytes::<ChunkRef<'_>>(&data[2..]) {
            assert!(c.data.len() <= data.len());
            // The writer's encoding of the same chunk decodes to it.
            let mut out = vec![FRAME_VERSION, CHUNK_VARIANT];
            out = postcard::to_extend(&c, out).unwrap();
            let back = postcard::from_bytes::<ChunkRef<'_>>(&out[2..]).unwrap();
            assert_eq!(
                (back.msg, back.index, back.count, back.data),
                (c.msg, c.index, c.count, c.data)
            );
        }
        return;
    }
    if let Ok(f) = postcard::from_bytes::<Frame<'_>>(&data[1..]) {
        // A reply's bytes may be a lane grant (the answer to a `LaneOpen`),
        // which the asker decodes as `lane` does.
        if let Frame::Reply {
            result: Ok(ReplyBody(body)),
            ..
        } = &f
        {
            if let Ok(g) = postcard::from_bytes::<LaneGrant>(body) {
                let again = postcard::to_allocvec(&g).unwrap();
                assert!(body.starts_with(&again), "a lane grant changed: {g:?}");
            }
        }
        round_trip(&f);
    }
}

/// A large message as the read loop decodes it once its chunks are
/// reassembled (at most [`MAX_FRAME`] bytes): a chunk inside is refused, a
/// reply keeps its bytes where they are (the range the loop computes must lie
/// in the buffer and hold the reply), anything else goes to dispatch.
pub fn fuzz_large_message(data: &[u8]) {
    if data.len() > MAX_FRAME {
        return;
    }
    match postcard::from_bytes::<Frame<'_>>(data) {
        Err(_) | Ok(Frame::Chunk { .. }) => {}
        Ok(Frame::Reply {
            id,
            result: Ok(ReplyBody(Cow::Borrowed(body))),
        }) => {
            // What `read_frames` computes.
            let start = (body.as_ptr() as usize).wrapping_sub(data.as_ptr() as usize);
            let range = start..start + body.len();
            assert_eq!(
                data.get(range),
                Some(body),
                "reply range outside the buffer"
            );
            round_trip(&Frame::Reply {
                id,
                result: Ok(ReplyBody(Cow::Borrowed(body))),
            });
        }
        Ok(f) => round_trip(&f),
    }
}

/// Real frames of every kind, as the reader gets them (version byte first,
/// no length prefix).
pub fn frame_seeds() -> Vec<Vec<u8>> {
    let small = |f: &Frame<'_>| match frame::encode(f, None) {
        Ok(Encoded::Small(b)) => b[4..].to_vec(),
        _ => Vec::new(),
    };
    let body: Vec<u8> = (0..40u8).collect();
    let mut out = vec![
        small(&Frame::Tell {
            to: "ledger".into(),
            ty: "manta.builtin.CounterMsg".into(),
            body: Cow::Borrowed(&body),
        }),
        small(&Frame::Request {
            replies: vec![1, 7, u64::MAX],
            to: "ps-0".into(),
            ty: "manta.ml.PsMsg".into(),
            body: Cow::Borrowed(&body),
        }),
        small(&Frame::reply(3, Ok(body.clone()))),
        small(&Frame::reply(4, Err(WireError::NotFound("x".into())))),
        small(&Frame::reply(
            5,
            Err(WireError::NoReply(Some(ExitReason::Killed))),
        )),
        small(&Frame::reply(
            6,
            Err(WireError::WrongType {
                expected: "a".into(),
                actual: "b".into(),
            }),
        )),
        small(&Frame::Stop {
            to: "a".into(),
            reason: ExitReason::Shutdown(Some("bye".into())),
        }),
        small(&Frame::Kill { to: "a".into() }),
        small(&Frame::Watch { to: "a".into() }),
        small(&Frame::Exited {
            to: "a".into(),
            reason: ExitReason::Panicked("boom".into()),
        }),
        small(&Frame::Spawn {
            id: 9,
            kind: "counter".into(),
            args_json: "{\"start\":3}".into(),
            name: "acct-9".into(),
            message: "manta.builtin.CounterMsg".into(),
        }),
        small(&Frame::LaneOpen { id: 10, session: 3 }),
        small(&Frame::Barrier { session: 3, seq: 1 }),
        small(&Frame::reply(
            10,
            Ok(postcard::to_allocvec(&LaneGrant {
                material: [7; 32],
                ticket: [9; 16],
            })
            .unwrap()),
        )),
    ];
    let chunk = ChunkRef {
        msg: 77,
        index: 0,
        count: 2,
        data: &body,
    };
    out.push(postcard::to_extend(&chunk, vec![FRAME_VERSION, CHUNK_VARIANT]).unwrap());
    out.retain(|s| !s.is_empty());
    out
}

/// Whole large messages (what chunks reassemble to): a reply and a tell.
pub fn large_message_seeds() -> Vec<Vec<u8>> {
    let body: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    vec![
        postcard::to_allocvec(&Frame::reply(12, Ok(body.clone()))).unwrap(),
        postcard::to_allocvec(&Frame::Tell {
            to: "sink".into(),
            ty: "t::Sample".into(),
            body: Cow::Borrowed(&body),
        })
        .unwrap(),
    ]
}

// ---- whole actor streams (cluster/tests/it/fuzz_stream.rs) -----------------

/// A stream input as pieces: each a `u32` little-endian length and that
/// many bytes of one frame (version byte first), at most 64 of them.
pub fn stream_pieces(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while rest.len() >= 4 && out.len() < 64 {
        let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        rest = &rest[4..];
        let (a, b) = rest.split_at(n.min(rest.len()));
        out.push(a);
        rest = b;
    }
    out
}

fn stream_input(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// The frames of `e` as the reader gets them (without length prefixes).
fn bodies(e: Encoded) -> Vec<Vec<u8>> {
    match e {
        Encoded::Small(b) => vec![b[4..].to_vec()],
        Encoded::Chunks(c) => c.into_iter().map(|c| c[4..].to_vec()).collect(),
        Encoded::Records(_) => panic!("a frame encoded for the mesh came out as lane records"),
    }
}

/// A tell of `body` to the actor `to` of message type `ty`, with its length
/// prefix: what a peer's writer puts on an actor stream.
pub fn tell_on_the_wire(to: &str, ty: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in bodies(
        encode_mesh(&Frame::Tell {
            to: to.into(),
            ty: ty.into(),
            body: Cow::Borrowed(body),
        })
        .expect("a tell encodes"),
    ) {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(&b);
    }
    out
}

/// Whether a frame would stop or kill the actor `name` (the stream fuzzer
/// keeps its probe alive).
pub fn stops(frame: &[u8], name: &str) -> bool {
    let Some(body) = frame.get(1..) else {
        return false;
    };
    matches!(
        postcard::from_bytes::<Frame<'_>>(body),
        Ok(Frame::Stop { to, .. } | Frame::Kill { to }) if to == name
    )
}

/// Stream inputs: the frames of every kind, a large tell in chunks to
/// `to` (an actor of type `ty` taking `body`), and both together.
pub fn stream_seeds(to: &str, ty: &str, body: &[u8]) -> Vec<Vec<u8>> {
    let small = frame_seeds();
    let large = bodies(
        encode_mesh(&Frame::Tell {
            to: to.into(),
            ty: ty.into(),
            body: Cow::Borrowed(body),
        })
        .expect("a tell encodes"),
    );
    let reply = bodies(encode_mesh(&Frame::reply(99, Ok(vec![5u8; 2 * CHUNK]))).expect("a reply"));
    let mut all = small.clone();
    all.extend(large.iter().cloned());
    let mut out: Vec<Vec<u8>> = small
        .iter()
        .map(|f| stream_input(std::slice::from_ref(f)))
        .collect();
    out.push(stream_input(&large));
    out.push(stream_input(&reply));
    out.push(stream_input(&all));
    out
}
