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
        Encoded::Lazy(_) => panic!("a frame encoded whole came out lazy"),
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
            // Produced lazily, in windows of 1, 2 and 3 records: the same.
            let src = Lazily(f, bytes.len());
            let count = frame::lazy_total(&src).div_ceil(LANE_RECORD);
            let (mut records, mut at, mut n) = (Vec::new(), 0, 1);
            while at < count {
                records.extend(
                    frame::lazy_records(&src, 0, 0, at, n)
                        .unwrap_or_else(|e| panic!("lazy records of a frame ({e}): {shown}")),
                );
                at += n;
                n = n % 3 + 1;
            }
            assert!(
                written(Encoded::Records(records)) == bytes,
                "a frame produced lazily differs from the frame on the mesh: {shown}"
            );
        }
        // Only a frame larger than MAX_FRAME cannot be sent; a decoded one
        // came from at most MAX_FRAME bytes.
        Err(e) => panic!("a decoded frame does not encode: {e}: {shown}"),
    }
}

/// A frame as a lazy lane message (`frame_len` bytes).
struct Lazily<'a, 'b>(&'a Frame<'b>, usize);

impl frame::LazyFrame for Lazily<'_, '_> {
    fn frame_len(&self) -> usize {
        self.1
    }

    fn write_frame(
        &self,
        out: &mut dyn FnMut(&[u8]) -> Result<(), WireError>,
    ) -> Result<(), WireError> {
        frame::pieces(self.0, out)
    }

    fn replies(&self) -> Vec<u64> {
        Vec::new()
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
        Encoded::Records(_) | Encoded::Lazy(_) => {
            panic!("a frame encoded for the mesh came out as lane records")
        }
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

// ---- the bulk lane's records ------------------------------------------------

/// The lane secrets the record fuzzer's sender and receiver share (the key
/// known, so inputs get past authentication).
fn lane_secrets() -> crate::bulk::LaneSecrets {
    crate::bulk::LaneSecrets {
        material: [7; 32],
        ticket: [9; 16],
    }
}

/// A program of records on one lane direction, as the receiving end reads
/// them: each step (first byte) is a record sealed in order by the real
/// sealer with a plaintext taken from the input, raw bytes (a header and a
/// body), a replay of an earlier sealed record, a sealed record with one
/// byte flipped, or two sealed records swapped. The receiver is the real
/// `RecordOpener` and the lane-head check of the receive loop; a lane
/// closes at the first record that does not open or announces too much.
/// Checks: a record announcing more than `MAX_RECORD` is refused before its
/// body is read; raw, replayed, tampered and out-of-order records never
/// open; every in-order sealed record opens to what was sealed; a
/// message's first record yields its head or a clear error.
pub fn fuzz_lane_records(data: &[u8]) {
    use crate::bulk::{MAX_RECORD, Side, lane_keys};
    let secrets = lane_secrets();
    let (mut sealer, _) = lane_keys(&secrets, Side::Dialer).unwrap();
    let (_, mut opener) = lane_keys(&secrets, Side::Listener).unwrap();
    let mut input = data;
    let mut take = |n: usize| -> Vec<u8> {
        let k = n.min(input.len());
        let (a, b) = input.split_at(k);
        input = b;
        a.to_vec()
    };
    // (wire bytes, plaintext if it must open next, whether it is the next)
    let mut sealed_log: Vec<Vec<u8>> = Vec::new();
    let mut expect_next: u64 = 0;
    let mut sealed_count: u64 = 0;
    let mut want_head = true;
    let mut left_in_msg = 0usize;
    for _ in 0..64 {
        let op = match take(1).first() {
            Some(b) => *b % 5,
            None => break,
        };
        let size = {
            let b = take(2);
            (usize::from(*b.first().unwrap_or(&0)) << 8 | usize::from(*b.get(1).unwrap_or(&0)))
                .min(LANE_RECORD + 64)
        };
        let plain = take(size);
        let seal = |sealer: &mut crate::bulk::RecordSealer, p: &[u8]| {
            let mut r = vec![0u8; RECORD_HEADER];
            r.extend_from_slice(p);
            sealer.seal(&mut r).map(|()| r)
        };
        // (the record, its plaintext if it must open)
        let (record, opens): (Vec<u8>, Option<Vec<u8>>) = match op {
            0 => match seal(&mut sealer, &plain) {
                Ok(r) => {
                    sealed_count += 1;
                    sealed_log.push(r.clone());
                    let in_order = sealed_count - 1 == expect_next;
                    (r, in_order.then(|| plain.clone()))
                }
                Err(_) => continue,
            },
            1 => (plain, None),
            2 => match sealed_log.first() {
                Some(r) if sealed_count > 0 => (r.clone(), None),
                _ => continue,
            },
            3 => match seal(&mut sealer, &plain) {
                Ok(mut r) => {
                    sealed_count += 1;
                    let at = size % r.len();
                    r[at] ^= 0x20;
                    (r, None)
                }
                Err(_) => continue,
            },
            _ => {
                // Two sealed in order, delivered swapped: the first to
                // arrive is the later one.
                let (Ok(a), Ok(b)) = (seal(&mut sealer, &plain), seal(&mut sealer, &plain)) else {
                    continue;
                };
                sealed_count += 2;
                let _ = a;
                (b, None)
            }
        };
        // The receiving end, as `read_record` and `receive` run it.
        let Some(h) = record.get(..RECORD_HEADER) else {
            assert!(opens.is_none());
            return;
        };
        let header: [u8; RECORD_HEADER] = h.try_into().unwrap();
        let announced = match opener.announced(header) {
            Ok(n) => n,
            Err(_) => {
                assert!(u32::from_be_bytes(header) as usize > MAX_RECORD);
                assert!(opens.is_none(), "a sealed record announced too much");
                return;
            }
        };
        let mut body = record[RECORD_HEADER..].to_vec();
        if body.len() != announced + RECORD_TAG {
            // The reader would wait for more bytes (or take the next
            // record's as this one's): it cannot open either way.
            assert!(opener.open(header, &mut body).is_err());
            assert!(opens.is_none(), "a sealed record's length disagreed");
            return;
        }
        match (opener.open(header, &mut body), opens) {
            (Ok(p), Some(want)) => {
                assert_eq!(p, &want[..], "opened to something else");
                expect_next += 1;
                if want_head {
                    if let Ok((_, _, len)) = super::lane::lane_head(p) {
                        let got = p.len() - (LANE_HEAD + 4);
                        left_in_msg = len.saturating_sub(got);
                        want_head = left_in_msg == 0;
                    } else {
                        // The receive loop closes the lane.
                        return;
                    }
                } else {
                    left_in_msg = left_in_msg.saturating_sub(p.len());
                    want_head = left_in_msg == 0;
                }
            }
            (Ok(_), None) => panic!("a raw, replayed, tampered or reordered record opened"),
            (Err(_), Some(_)) => panic!("an in-order sealed record did not open"),
            (Err(_), None) => return,
        }
    }
}

/// Seeds for [`fuzz_lane_records`]: a lane message's head and body in
/// order, then a replay; a tampered record; raw bytes announcing 2 MiB.
pub fn lane_records_seeds() -> Vec<Vec<u8>> {
    let mut head = Vec::new();
    head.extend_from_slice(&1u64.to_be_bytes());
    head.extend_from_slice(&0u64.to_be_bytes());
    head.extend_from_slice(&70u32.to_be_bytes());
    head.push(FRAME_VERSION);
    head.extend_from_slice(&[0; 20]);
    let op = |code: u8, p: &[u8]| {
        let mut v = vec![code, (p.len() >> 8) as u8, p.len() as u8];
        v.extend_from_slice(p);
        v
    };
    let mut ordered = op(0, &head);
    ordered.extend(op(0, &[5; 49]));
    ordered.extend(op(2, &[]));
    let mut tampered = op(0, &head);
    tampered.extend(op(3, &[1; 10]));
    let mut raw = Vec::new();
    raw.extend(op(1, &[0, 0x20, 0, 0, 1, 2, 3]));
    let mut swapped = op(4, &[8; 30]);
    swapped.extend(op(0, &[1; 3]));
    vec![ordered, tampered, raw, swapped]
}
