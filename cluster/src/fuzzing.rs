//! Fuzzing entry points: not API (hidden from the docs, may change at any
//! time). Each `fuzz_*` function hands arbitrary bytes to one of this
//! crate's decoders of untrusted input the way a node does, and panics only
//! when an invariant breaks; each `*_seeds` function returns valid
//! encodings to start from. `fuzz/` (cargo-fuzz, libFuzzer) and the stable
//! runner (`tests/fuzz.rs` at the repository root) both call them through
//! the table in `manta::fuzzing`; FUZZING.md says how to run them and what
//! they found.
//!
//! The frame codec is compiled here a second time from its own source
//! (`remote/frame.rs`, through `#[path]`): its types are private to the
//! remoting module, and this way the fuzzer runs exactly the decoder the
//! read loop runs without the remoting module exposing anything.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed check is the finding

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use chitchat::transport::{Socket, UdpSocket as ChitchatUdp};
use chitchat::{ChitchatEnvelope, ChitchatMessage, ProtocolVersion};
use manta_actors::{ExitReason, WireError};

use crate::remote::{CHUNK, FRAME_VERSION, MAX_FRAME};
use crate::seal::{
    HEADER_LEN, Kind, MAX_DATAGRAM, MAX_FRAGMENT_PAYLOAD, MAX_FRAGMENTS, MAX_PENDING_MESSAGES,
    MAX_REASSEMBLY_BYTES, Opener, Sealer, VERSION,
};
use crate::secret::ClusterSecret;
use crate::status::{ClusterStatus, NodeStatus};

/// The frame codec of `remote`, from its own source file.
#[allow(dead_code, unreachable_pub, clippy::duplicate_mod)]
#[path = "remote/frame.rs"]
mod frame;

use frame::{CHUNK_VARIANT, ChunkRef, Encoded, Frame, ReplyBody};

/// `remote::MAX_WIRE_FRAME` (private there): the read loop closes a
/// stream on a longer frame before decoding anything.
const MAX_WIRE_FRAME: usize = CHUNK + 256;

/// The secret every fuzzed cluster shares: inputs are sealed with it, so
/// they get past authentication.
pub fn fuzz_secret() -> ClusterSecret {
    ClusterSecret::parse(&format!("manta-secret-v1:{}", "5a".repeat(32)))
        .expect("a well-formed secret")
}

/// A little-endian byte reader that yields zeros once the input runs out
/// (so every input, however short, is a complete program of operations).
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
}

// ---- mutations for the stable runners -------------------------------------

/// splitmix64: a small, seeded, reproducible generator (the stable
/// runners' source of inputs).
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// A number below `n` (0 for 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
    /// A random byte.
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

/// Values that sit on the edges decoders check.
const INTERESTING: [u64; 14] = [
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0xffff_ffff,
    u64::MAX >> 1,
    u64::MAX,
];

/// One to four mutations of `input` (`other`, another corpus entry, for
/// splices), at most `max_len` bytes long after them: bit flips, random and
/// edge-value bytes, integers at their edges (little- and big-endian, and as
/// postcard varints), insertions, deletions, repeats, splices, truncations.
pub fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8], max_len: usize) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(11) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.byte();
            }
            2 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
                input.splice(at..at, bytes);
            }
            3 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                input.drain(at..at + n);
            }
            4 if len > 0 => {
                // Duplicate a range (repeats, nesting).
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(256));
                let piece = input[at..at + n].to_vec();
                let to = rng.below(len + 1);
                input.splice(to..to, piece);
            }
            5 if len > 0 => {
                // An interesting integer, little- or big-endian, or as a
                // postcard varint.
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let width = [1, 2, 4, 8][rng.below(4)];
                let mut bytes = match rng.below(3) {
                    0 => v.to_le_bytes()[..width].to_vec(),
                    1 => v.to_be_bytes()[8 - width..].to_vec(),
                    _ => varint(v),
                };
                let at = rng.below(len);
                let end = (at + bytes.len()).min(len);
                bytes.truncate(end - at);
                input[at..end].copy_from_slice(&bytes);
            }
            6 if !other.is_empty() => {
                // Splice: a prefix of this, a suffix of another.
                let at = rng.below(len + 1);
                let from = rng.below(other.len());
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
            7 if len > 0 => input.truncate(rng.below(len)),
            8 if len > 0 => {
                let i = rng.below(len);
                input[i] = input[i].wrapping_add(1 + rng.below(8) as u8);
            }
            9 if len > 0 => {
                let i = rng.below(len);
                input[i] = input[i].wrapping_sub(1 + rng.below(8) as u8);
            }
            _ => {
                let n = rng.below(32);
                input.extend((0..n).map(|_| rng.byte()));
            }
        }
    }
    input.truncate(max_len);
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

// ---- the frame codec (remote actor streams) --------------------------------

/// The bytes of the frame an encoding carries, without the length prefix and
/// version: a small frame as it is, a large one reassembled from its chunks
/// (each checked the way the read loop checks it).
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
    }
}

/// A decoded frame encodes again, and that encoding decodes to the same
/// frame.
fn round_trip(f: &Frame<'_>) {
    let shown = format!("{f:?}");
    let _ = f.target();
    match frame::encode(f) {
        Ok(e) => {
            let bytes = written(e);
            let back = postcard::from_bytes::<Frame<'_>>(&bytes)
                .unwrap_or_else(|e| panic!("a re-encoded frame does not decode ({e}): {shown}"));
            assert_eq!(
                format!("{back:?}"),
                shown,
                "a frame changed in a round trip"
            );
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
    let small = |f: &Frame<'_>| match frame::encode(f) {
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
    }
}

/// A tell of `body` to the actor `to` of message type `ty`, with its length
/// prefix: what a peer's writer puts on an actor stream.
pub fn tell_on_the_wire(to: &str, ty: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in bodies(
        frame::encode(&Frame::Tell {
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
        frame::encode(&Frame::Tell {
            to: to.into(),
            ty: ty.into(),
            body: Cow::Borrowed(body),
        })
        .expect("a tell encodes"),
    );
    let reply =
        bodies(frame::encode(&Frame::reply(99, Ok(vec![5u8; 2 * CHUNK]))).expect("a reply"));
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

// ---- sealed datagrams (gossip and status) ----------------------------------

/// The gossip cipher of [`fuzz_secret`], derived as `seal` derives it
/// (HKDF-SHA256, salt `manta-cluster-v1`, info `gossip-seal\0`), so that
/// datagrams with any header (count 0, index past count, unknown kinds) can
/// be sealed. `fuzz_opener` checks that its datagrams open with the real
/// opener, so a change of derivation there fails here, not silently.
fn fuzz_cipher() -> ChaCha20Poly1305 {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"manta-cluster-v1"), fuzz_secret().as_bytes());
    let mut key = [0u8; 32];
    let _ = hk.expand(b"gossip-seal\0", &mut key);
    ChaCha20Poly1305::new(Key::from_slice(&key))
}

struct Header {
    version: u8,
    kind: u8,
    timestamp_ms: u64,
    nonce: [u8; 12],
    msg_id: u64,
    index: u16,
    count: u16,
}

fn craft(cipher: &ChaCha20Poly1305, h: &Header, payload: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(HEADER_LEN + payload.len() + 16);
    d.push(h.version);
    d.push(h.kind);
    d.extend_from_slice(&h.timestamp_ms.to_be_bytes());
    d.extend_from_slice(&h.nonce);
    d.extend_from_slice(&h.msg_id.to_be_bytes());
    d.extend_from_slice(&h.index.to_be_bytes());
    d.extend_from_slice(&h.count.to_be_bytes());
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&h.nonce),
            Payload {
                msg: payload,
                aad: &d[..HEADER_LEN],
            },
        )
        .unwrap();
    d.extend_from_slice(&ct);
    d
}

fn from_addr(n: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7000 + u16::from(n % 3)))
}

/// The most [`fuzz_opener`] may hold at once: the opener's reassembly
/// budget ([`MAX_REASSEMBLY_BYTES`]), a whole message (8 fragments) built
/// while its parts are still held, the datagrams in flight and the four the
/// harness keeps for replays, and the nonces seen.
pub const OPENER_MAX_ALLOC: usize = MAX_REASSEMBLY_BYTES + 2 * 1024 * 1024;

/// Operations per input of [`fuzz_opener`].
const MAX_OPS: usize = 96;
/// The opener's replay window in the fuzzer.
const WINDOW_MS: u64 = 30_000;

/// The gossip opener with the cluster key known: every input is a program of
/// up to [`MAX_OPS`] datagrams handed to one [`Opener`] as the clock moves
/// on. Most are sealed with the cluster's key with fuzzed headers (version,
/// kind, timestamp, nonce, message id, fragment index and count, size up to
/// past a UDP datagram) so that they get past authentication; others are
/// unauthenticated bytes, replays and tampered copies of earlier ones.
///
/// Checks: what a stranger sends (raw or tampered bytes) never opens; a
/// fresh, well-formed, single-fragment datagram of this key within the
/// window always opens to exactly what was sealed; whole messages are never
/// longer than [`MAX_FRAGMENTS`] fragments; at most
/// [`MAX_PENDING_MESSAGES`] partial messages are held. Its memory bound
/// ([`MAX_REASSEMBLY_BYTES`] and a margin) is checked by the runners'
/// counting allocators.
pub fn fuzz_opener(data: &[u8]) {
    let mut input = Input(data);
    let cipher = fuzz_cipher();
    let mut opener = Opener::new(Sealer::new(Some(&fuzz_secret())), WINDOW_MS);
    let mut now: u64 = 1_700_000_000_000;
    // The last few datagrams, for replays and tampering (not all: the
    // harness's own memory counts against the bound).
    let mut recent: VecDeque<Vec<u8>> = VecDeque::new();
    let mut counter: u64 = 0;
    let mut accepted = std::collections::HashSet::new();
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let op = input.u8();
        now += u64::from(op >> 5) * 2_500;
        let from = from_addr(op);
        let (dgram, expect) = match (op >> 2) & 7 {
            0 => {
                let n = usize::from(input.u8()) * 4;
                (input.take(n).to_vec(), Expect::Refused)
            }
            1 => match recent.len() {
                0 => continue,
                n => (
                    recent[usize::from(input.u8()) % n].clone(),
                    Expect::Anything,
                ),
            },
            2 => match recent.len() {
                0 => continue,
                n => {
                    let mut d = recent[usize::from(input.u8()) % n].clone();
                    if d.is_empty() {
                        continue;
                    }
                    let at = usize::from(input.u16()) % d.len();
                    d[at] ^= input.u8() | 1;
                    (d, Expect::Refused)
                }
            },
            _ => {
                let flags = input.u8();
                let version = if flags & 1 != 0 { input.u8() } else { VERSION };
                let kind = input.u8() % 4;
                let skew = i64::from(input.u16() as i16) * 8;
                let timestamp_ms = now.saturating_add_signed(skew);
                counter += 1;
                let nonce = if flags & 2 != 0 {
                    [input.u8(); 12]
                } else {
                    let mut n = [0xee; 12];
                    n[..8].copy_from_slice(&counter.to_be_bytes());
                    n
                };
                let msg_id = u64::from(input.u8() % 8);
                let count = u16::from(input.u8() % 11);
                let index = u16::from(input.u8() % 11);
                let len = match flags >> 5 {
                    0 => MAX_FRAGMENT_PAYLOAD - usize::from(input.u8()),
                    1 => MAX_FRAGMENT_PAYLOAD + 1 + usize::from(input.u8()),
                    2 | 3 => usize::from(input.u16()) % (MAX_FRAGMENT_PAYLOAD + 1),
                    _ => usize::from(input.u8()),
                };
                let payload = vec![input.u8(); len];
                let h = Header {
                    version,
                    kind,
                    timestamp_ms,
                    nonce,
                    msg_id,
                    index,
                    count,
                };
                let d = craft(&cipher, &h, &payload);
                let fresh = flags & 2 == 0;
                let valid = version == VERSION
                    && kind < 3
                    && skew.unsigned_abs() <= WINDOW_MS
                    && d.len() <= MAX_DATAGRAM;
                let expect = if fresh && valid && count == 1 && index == 0 {
                    Expect::Whole(kind, payload)
                } else {
                    Expect::Anything
                };
                (d, expect)
            }
        };
        let got = opener.accept(&dgram, from, now);
        match (&expect, &got) {
            (Expect::Refused, Ok(_)) => {
                panic!("bytes not sealed with the key were accepted: {got:?}")
            }
            (Expect::Whole(kind, payload), _) => match &got {
                Ok(Some((k, body))) => {
                    assert_eq!(*k as u8, *kind);
                    assert!(body == payload, "a single fragment opened to other bytes");
                }
                other => panic!(
                    "a fresh single-fragment datagram of the key was refused: {other:?} \
                     (a changed key derivation in seal.rs?)"
                ),
            },
            _ => {}
        }
        if let Ok(Some((_, body))) = &got {
            assert!(body.len() <= usize::from(MAX_FRAGMENTS) * MAX_FRAGMENT_PAYLOAD);
        }
        // A nonce opens once: a datagram is taken at most once while its
        // timestamp is within the window (and it is never taken outside).
        if got.is_ok() {
            let nonce: [u8; 12] = dgram[10..22].try_into().unwrap();
            assert!(
                accepted.insert(nonce),
                "a replayed datagram was accepted twice (nonce {nonce:02x?}, now {now})"
            );
        }
        let shown = format!("{opener:?}");
        let partial = shown
            .split("partial: ")
            .nth(1)
            .and_then(|s| s.trim_end_matches(['}', ' ']).parse::<usize>().ok())
            .expect("the opener's Debug shows its partial messages");
        assert!(
            partial <= MAX_PENDING_MESSAGES,
            "{partial} partial messages held"
        );
        // Replays and tampering start from authentic datagrams only (a
        // tampered copy tampered again can be the original).
        if (op >> 2) & 7 >= 3 {
            if recent.len() == 4 {
                recent.pop_front();
            }
            recent.push_back(dgram);
        }
    }
}

enum Expect {
    Refused,
    Whole(u8, Vec<u8>),
    Anything,
}

/// Op programs for [`fuzz_opener`]: single datagrams, a message in three
/// fragments (in and out of order), a replay, a tampered copy, garbage.
pub fn opener_seeds() -> Vec<Vec<u8>> {
    // op: bits 2..5 choose (0 raw, 1 replay, 2 tamper, 3.. sealed), 5..8
    // advance the clock; sealed: flags, kind, skew (2), msg id, count,
    // index, length, fill.
    let sealed = |flags: u8, kind: u8, msg: u8, count: u8, index: u8, len: u8| {
        vec![3 << 2, flags, kind, 0, 0, msg, count, index, len, 0x61]
    };
    let mut out = vec![
        sealed(0xe0, 0, 1, 1, 0, 40),
        sealed(0xe0, 1, 1, 1, 0, 0),
        sealed(0x00, 0, 1, 1, 0, 3),
    ];
    let mut three = Vec::new();
    for i in [2, 0, 1] {
        three.extend(sealed(0x40, 2, 5, 3, i, 0));
        three.extend([0x10, 0x00]);
    }
    out.push(three);
    let mut replay = sealed(0xe0, 0, 1, 1, 0, 9);
    replay.extend([1 << 2, 0]);
    replay.extend([2 << 2, 0, 5, 0, 1]);
    replay.extend([0, 8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
    out.push(replay);
    out
}

/// Opens `payload` sealed as `kind` with the real sealer and opener, as a
/// node does; `None` when it is too large to seal.
fn through_the_opener(kind: Kind, payload: &[u8]) -> Option<Vec<u8>> {
    let sealer = Sealer::new(Some(&fuzz_secret()));
    let mut opener = Opener::new(sealer.clone(), WINDOW_MS);
    let now = crate::seal::now_ms();
    let dgrams = sealer.seal(kind, payload, now).ok()?;
    let mut whole = None;
    for d in &dgrams {
        match opener.accept(d, from_addr(0), now) {
            Ok(Some((k, body))) => {
                assert_eq!(k, kind);
                whole = Some(body);
            }
            Ok(None) => {}
            Err(e) => panic!("a datagram sealed with the cluster's key was dropped: {e:?}"),
        }
    }
    let whole = whole.expect("every fragment delivered: the whole message");
    assert!(
        whole == payload,
        "the opened message differs from the sealed one"
    );
    Some(whole)
}

/// chitchat's decoder, driven through public API only as the transport
/// drives it: plaintext replayed over loopback into a chitchat UDP socket,
/// then a sentinel (a `BadCluster` message) marking its end.
struct Codec {
    rt: tokio::runtime::Runtime,
    dec: ChitchatUdp,
    dec_addr: SocketAddr,
    source: tokio::net::UdpSocket,
    sentinel: tokio::net::UdpSocket,
    sentinel_addr: SocketAddr,
    enc: ChitchatUdp,
    sink: tokio::net::UdpSocket,
    sink_addr: SocketAddr,
}

/// chitchat's `BadCluster` message on the wire (as `transport` has it).
const SENTINEL: [u8; 4] = [0x53, 0xb0, 0x00, 0x03];

impl Codec {
    fn new() -> Codec {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let lo = SocketAddr::from(([127, 0, 0, 1], 0));
        let (dec, source, sentinel, enc, sink) = rt.block_on(async {
            (
                ChitchatUdp::open(lo).await.expect("a loopback socket"),
                tokio::net::UdpSocket::bind(lo).await.expect("a socket"),
                tokio::net::UdpSocket::bind(lo).await.expect("a socket"),
                ChitchatUdp::open(lo).await.expect("a loopback socket"),
                tokio::net::UdpSocket::bind(lo).await.expect("a socket"),
            )
        });
        Codec {
            dec_addr: dec.local_addr().expect("an address"),
            sentinel_addr: sentinel.local_addr().expect("an address"),
            sink_addr: sink.local_addr().expect("an address"),
            rt,
            dec,
            source,
            sentinel,
            enc,
            sink,
        }
    }

    /// What chitchat decodes from `bytes` (at most one UDP datagram).
    fn decode(&mut self, bytes: &[u8]) -> Option<ChitchatEnvelope> {
        let Codec {
            rt,
            dec,
            dec_addr,
            source,
            sentinel,
            sentinel_addr,
            ..
        } = self;
        rt.block_on(async {
            source
                .send_to(bytes, *dec_addr)
                .await
                .expect("loopback send");
            sentinel
                .send_to(&SENTINEL, *dec_addr)
                .await
                .expect("loopback send");
            let mut got = None;
            loop {
                let out = tokio::time::timeout(Duration::from_secs(10), dec.recv())
                    .await
                    .expect("the sentinel arrives")
                    .expect("chitchat's socket works");
                if out.from_addr == *sentinel_addr {
                    return got;
                }
                got = Some(out.envelope);
            }
        })
    }

    /// chitchat's encoding of `envelope`.
    fn encode(&mut self, envelope: ChitchatEnvelope) -> Vec<u8> {
        let Codec {
            rt,
            enc,
            sink,
            sink_addr,
            ..
        } = self;
        rt.block_on(async {
            enc.send(*sink_addr, envelope).await.expect("loopback send");
            let mut buf = vec![0u8; MAX_DATAGRAM + 1];
            let (n, _) = sink.recv_from(&mut buf).await.expect("loopback receive");
            buf.truncate(n);
            buf
        })
    }
}

thread_local! {
    static CODEC: RefCell<Option<Codec>> = const { RefCell::new(None) };
}

/// chitchat's plaintext after opening: the input is sealed with the
/// cluster's key by the real sealer, opened by the real opener, and what
/// opens goes to chitchat's decoder the way the sealed transport hands it
/// over. A message chitchat decodes must encode again to bytes that decode
/// to the same message.
pub fn fuzz_gossip(data: &[u8]) {
    // The transport replays one UDP datagram into chitchat.
    if data.len() > MAX_DATAGRAM {
        return;
    }
    let Some(plain) = through_the_opener(Kind::Gossip, data) else {
        return;
    };
    CODEC.with(|c| {
        let mut c = c.borrow_mut();
        let codec = c.get_or_insert_with(Codec::new);
        if let Some(env) = codec.decode(&plain) {
            // The message type is not `Clone`: decode the plaintext again
            // for a copy to re-encode.
            let copy = codec.decode(&plain);
            assert!(
                copy.as_ref() == Some(&env),
                "chitchat decoded the same bytes twice differently"
            );
            // A decoded delta keeps the length of the bytes it came from and
            // chitchat's encoder asserts that it writes exactly that many
            // again, which another (valid) compression of the same
            // operations does not: chitchat never re-encodes a delta it
            // received, so only messages without one go round.
            if !matches!(
                env.message,
                ChitchatMessage::Syn { .. } | ChitchatMessage::BadCluster
            ) {
                return;
            }
            let again = codec.encode(copy.expect("decoded above"));
            let back = codec.decode(&again);
            assert!(
                back.as_ref() == Some(&env),
                "chitchat decoded {env:?}, which encodes to bytes that decode to {back:?}"
            );
        }
    });
}

/// A status reply after opening (`manta status`): JSON of the answering
/// node's view. One that decodes encodes back to the same view.
pub fn fuzz_status_reply(data: &[u8]) {
    let Some(plain) = through_the_opener(Kind::StatusReply, data) else {
        return;
    };
    if let Ok(s) = serde_json::from_slice::<ClusterStatus>(&plain) {
        let again = serde_json::to_vec(&s).unwrap();
        let back: ClusterStatus = serde_json::from_slice(&again).unwrap();
        assert_eq!(back, s);
    }
}

/// A real status reply.
pub fn status_reply_seeds() -> Vec<Vec<u8>> {
    let s = ClusterStatus {
        nodes: vec![NodeStatus {
            id: "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN".into(),
            name: "n1".into(),
            state: "alive".into(),
            roles: vec!["worker".into()],
            gossip: "127.0.0.1:7000".into(),
            actors: vec!["ledger".into()],
        }],
        dropped: BTreeMap::from([("stale".to_owned(), 3)]),
    };
    vec![serde_json::to_vec(&s).unwrap(), b"{\"nodes\":[]}".to_vec()]
}

/// Real gossip: the messages a running node (sealed, signing its keys, with
/// roles, labels and actors) sends a peer that asks it for everything, as
/// plaintext after opening; and the question itself.
pub fn gossip_seeds() -> Vec<Vec<u8>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    // Without a node to ask (no loopback sockets), chitchat's smallest
    // message still seeds the target.
    rt.block_on(capture_gossip())
        .unwrap_or_else(|| vec![SENTINEL.to_vec()])
}

async fn capture_gossip() -> Option<Vec<Vec<u8>>> {
    use crate::membership::{Membership, MembershipConfig};
    let secret = fuzz_secret();
    let id = crate::identity::NodeIdentity::generate();
    let lo = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut config = MembershipConfig::new(id.peer_id().to_string(), "seed-node", lo);
    config.secret = Some(secret.clone());
    config.signer = Some(id.keypair().clone());
    config.gossip_interval = Duration::from_millis(50);
    config.keys.insert("roles".into(), "worker,gpu".into());
    config
        .keys
        .insert("labels".into(), "{\"zone\":\"eu-1\"}".into());
    let node = Membership::start(config).await.ok()?;
    node.set_actors(&BTreeMap::from([(
        "ledger".to_owned(),
        "manta.builtin.CounterMsg".to_owned(),
    )]))
    .await;
    // Ask with an empty digest: the node answers with everything it knows.
    let mut codec_enc = ChitchatUdp::open(lo).await.ok()?;
    let sink = tokio::net::UdpSocket::bind(lo).await.ok()?;
    codec_enc
        .send(
            sink.local_addr().ok()?,
            ChitchatEnvelope {
                version: ProtocolVersion::V0,
                message: ChitchatMessage::Syn {
                    cluster_id: crate::seal::cluster_id(Some(&secret), "manta"),
                    digest: Default::default(),
                },
            },
        )
        .await
        .ok()?;
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let (n, _) = sink.recv_from(&mut buf).await.ok()?;
    let syn = buf[..n].to_vec();
    let me = tokio::net::UdpSocket::bind(lo).await.ok()?;
    let sealer = Sealer::new(Some(&secret));
    let mut opener = Opener::new(sealer.clone(), WINDOW_MS);
    let mut out = vec![syn.clone(), SENTINEL.to_vec()];
    for _ in 0..3 {
        for d in sealer
            .seal(Kind::Gossip, &syn, crate::seal::now_ms())
            .ok()?
        {
            me.send_to(&d, node.gossip_addr()).await.ok()?;
        }
        let got = tokio::time::timeout(Duration::from_secs(2), me.recv_from(&mut buf)).await;
        if let Ok(Ok((n, from))) = got {
            if let Ok(Some((Kind::Gossip, plain))) =
                opener.accept(&buf[..n], from, crate::seal::now_ms())
            {
                out.push(plain);
            }
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    node.leave().await;
    Some(out)
}

// ---- small decoders: hex, secrets, durations, configs, gossip keys ---------

/// Hex as secret files and gossiped signatures hold it: what decodes
/// encodes back to the same text (in lower case); an error names the first
/// bad pair, at an even offset within the text.
pub fn fuzz_hex(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match crate::hex::decode(text) {
        Ok(bytes) => {
            assert_eq!(bytes.len() * 2, text.len());
            assert_eq!(crate::hex::encode(&bytes), text.to_ascii_lowercase());
        }
        Err(at) => assert!(at % 2 == 0 && at < text.len(), "error at {at} of {text:?}"),
    }
}

/// A secret file's text: one that parses is written back as the same
/// secret.
pub fn fuzz_secret_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(s) = ClusterSecret::parse(text) {
        assert_eq!(ClusterSecret::parse(&s.to_file_text()), Ok(s));
    }
}

/// Node-config durations (`"250ms"`): what parses is finite and not
/// negative (a `Duration`), and formatting it the way the config would
/// needs no more than a second pass.
pub fn fuzz_config_duration(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = crate::config::parse_duration(text) {
        let again = crate::config::parse_duration(&format!("{}ms", d.as_millis()));
        assert!(again.is_ok(), "{d:?} from {text:?} does not parse back");
    }
}

/// A node config file (TOML): parse, then derive the remoting limits and
/// key path a node would.
pub fn fuzz_node_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match crate::config::NodeConfig::parse(text, "fuzz.toml") {
        Ok(c) => {
            let _ = c.limits.remote();
            let _ = c.key_path();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// Node configs: the README's example and small ones.
pub fn node_config_seeds() -> Vec<Vec<u8>> {
    [
        "name = \"worker-1\"\ncluster = \"manta\"\ngossip = \"127.0.0.1:7000\"\n\
         seeds = [\"127.0.0.1:7001\", \"127.0.0.1:7002\"]\nroles = [\"gpu\", \"loader\"]\n\
         labels = { zone = \"eu-1\" }\nresources = { cpus = 16.0, gpus = 1, memory_mb = 65536 }\n\
         secret_file = \"cluster.secret\"\nkey_file = \"worker-1.key\"\ntree = \"examples/tree.toml\"\n\
         listen = \"/ip4/127.0.0.1/tcp/0\"\nclient = false\n\n[failure_detection]\n\
         gossip_interval = \"200ms\"\nphi_threshold = 8.0\nmax_interval = \"2s\"\n\
         dead_node_grace_period = \"5m\"\n\n[limits]\npartial_per_peer_mib = 136\n\
         partial_per_node_mib = 512\npartial_expiry = \"30s\"\n",
        "",
        "name = \"a\"\nrolez = []\n",
        "[failure_detection]\ngossip_interval = \"soon\"\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// The `actors` key another node gossips (JSON: name -> message type).
pub fn fuzz_actor_types(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let keys = BTreeMap::from([(crate::membership::keys::ACTORS.to_owned(), text.to_owned())]);
    let types = crate::membership::actor_types(&keys);
    assert!(types.len() <= text.len());
}

/// A node key file (libp2p's protobuf encoding of a keypair), as
/// `NodeIdentity::load_or_create` reads it.
pub fn fuzz_key_file(data: &[u8]) {
    if let Ok(k) = libp2p_identity::Keypair::from_protobuf_encoding(data) {
        if let Ok(ed) = k.clone().try_into_ed25519() {
            let again = libp2p_identity::Keypair::from(ed)
                .to_protobuf_encoding()
                .unwrap();
            let back = libp2p_identity::Keypair::from_protobuf_encoding(&again).unwrap();
            assert_eq!(back.public(), k.public());
        }
    }
}

/// A real key file.
pub fn key_file_seeds() -> Vec<Vec<u8>> {
    vec![
        crate::identity::NodeIdentity::generate()
            .keypair()
            .to_protobuf_encoding()
            .unwrap(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_run_clean() {
        for s in frame_seeds() {
            fuzz_frame(&s);
        }
        for s in large_message_seeds() {
            fuzz_large_message(&s);
        }
        for s in opener_seeds() {
            fuzz_opener(&s);
        }
        for s in status_reply_seeds() {
            fuzz_status_reply(&s);
        }
        assert!(frame_seeds().len() >= 12);
    }
}
