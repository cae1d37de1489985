//! Fuzzing entry points: not API (hidden from the docs, may change at any
//! time; feature `fuzzing` only). Each `fuzz_*` function hands arbitrary
//! bytes to one of this crate's decoders of untrusted input the way a node
//! does, and panics only when an invariant breaks; each `*_seeds` function
//! returns valid encodings to start from. `fuzz/` (cargo-fuzz, libFuzzer)
//! and the stable runner (`tests/fuzz.rs` at the repository root) both call
//! them through the table in `manta::fuzzing`; FUZZING.md says how to run
//! them and what they found.
//!
//! The frame codec's entry points live in `remote::fuzz` (a child of the
//! remoting module, so they run its private codec itself) and are
//! re-exported here.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed check is the finding

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use chitchat::transport::{Socket, UdpSocket as ChitchatUdp};
use chitchat::{ChitchatEnvelope, ChitchatMessage, ProtocolVersion};

pub use crate::remote::fuzz::{
    frame_seeds, fuzz_frame, fuzz_large_message, large_message_seeds, stops, stream_pieces,
    stream_seeds, tell_on_the_wire,
};
use crate::seal::{
    DEFAULT_CLUSTER, HEADER_LEN, Kind, MAX_DATAGRAM, MAX_FRAGMENT_PAYLOAD, MAX_FRAGMENTS,
    MAX_PENDING_MESSAGES, MAX_REASSEMBLY_BYTES, NONCE_LEN, Opener, ReplayGuard, Sealer, VERSION,
};
use crate::secret::ClusterSecret;
use crate::status::{ClusterStatus, NodeStatus};
use crate::transport::{STATUS_REQUEST_LEN, StatusRequest};

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

// ---- sealed datagrams (gossip and status) ----------------------------------

/// The cluster every fuzzed node belongs to: not the default name, so that
/// the key derivation that takes the cluster name is the one exercised.
pub const FUZZ_CLUSTER: &str = "fuzz";

/// The real sealer of the fuzzed cluster ([`fuzz_secret`], [`FUZZ_CLUSTER`]).
pub fn fuzz_sealer() -> Sealer {
    Sealer::for_cluster(Some(&fuzz_secret()), FUZZ_CLUSTER)
}

/// The gossip cipher of [`fuzz_secret`] for `cluster`, derived as `seal`
/// derives it (HKDF-SHA256, salt `manta-cluster-v1`, info
/// `gossip-seal\0CLUSTER`; XChaCha20-Poly1305), so that datagrams with any
/// header (count 0, index past count, unknown kinds and versions) can be
/// sealed. `fuzz_opener` checks that its well-formed datagrams open with the
/// real opener, and this module's tests that the real sealer's datagrams
/// open with this cipher, so a change of derivation or layout in `seal`
/// fails here, not silently.
fn fuzz_cipher(cluster: &str) -> XChaCha20Poly1305 {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"manta-cluster-v1"), fuzz_secret().as_bytes());
    let mut key = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's output limit.
    let _ = hk.expand(format!("gossip-seal\0{cluster}").as_bytes(), &mut key);
    XChaCha20Poly1305::new(Key::from_slice(&key))
}

/// A datagram header as `seal` lays it out (v2).
struct Header {
    version: u8,
    kind: u8,
    timestamp_ms: u64,
    nonce: [u8; NONCE_LEN],
    msg_id: u64,
    index: u16,
    count: u16,
}

fn craft(cipher: &XChaCha20Poly1305, h: &Header, payload: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(HEADER_LEN + payload.len() + 16);
    d.push(h.version);
    d.push(h.kind);
    d.extend_from_slice(&h.timestamp_ms.to_be_bytes());
    d.extend_from_slice(&h.nonce);
    d.extend_from_slice(&h.msg_id.to_be_bytes());
    d.extend_from_slice(&h.index.to_be_bytes());
    d.extend_from_slice(&h.count.to_be_bytes());
    assert_eq!(d.len(), HEADER_LEN, "the header layout of seal v2");
    let ct = cipher
        .encrypt(
            XNonce::from_slice(&h.nonce),
            Payload {
                msg: payload,
                aad: &d[..HEADER_LEN],
            },
        )
        .unwrap();
    d.extend_from_slice(&ct);
    d
}

/// The nonce of a sealed datagram (at least a header long).
fn nonce_of(dgram: &[u8]) -> [u8; NONCE_LEN] {
    dgram[10..10 + NONCE_LEN].try_into().unwrap()
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
/// up to [`MAX_OPS`] datagrams handed to an [`Opener`] as the clock moves
/// on. Most are sealed with the cluster's key with fuzzed headers (version,
/// kind, timestamp, nonce, message id, fragment index and count, size up to
/// past a UDP datagram) so that they get past authentication; others are
/// unauthenticated bytes, datagrams sealed with the same secret for another
/// cluster name, replays and tampered copies of earlier ones. Gossip may
/// restart between two datagrams: a new opener takes over the replay memory
/// (as the sealed transport's sockets share one).
///
/// Checks: what a stranger or another cluster sends (raw, tampered, or
/// sealed under the other cluster's key) never opens; a fresh, well-formed,
/// single-fragment datagram of this key within the window always opens to
/// exactly what was sealed; a nonce opens at most once, restarts included;
/// whole messages are never longer than [`MAX_FRAGMENTS`] fragments; at
/// most [`MAX_PENDING_MESSAGES`] partial messages are held. Its memory bound
/// ([`MAX_REASSEMBLY_BYTES`] and a margin) is checked by the runners'
/// counting allocators.
pub fn fuzz_opener(data: &[u8]) {
    let mut input = Input(data);
    let ours = fuzz_cipher(FUZZ_CLUSTER);
    // The same secret, another cluster's name: another key.
    let theirs = fuzz_cipher(DEFAULT_CLUSTER);
    let replay = ReplayGuard::shared();
    let mut opener = Opener::with_replay(fuzz_sealer(), WINDOW_MS, Arc::clone(&replay));
    let mut now: u64 = 1_700_000_000_000;
    // The last few datagrams, for replays and tampering (not all: the
    // harness's own memory counts against the bound).
    let mut recent: VecDeque<Vec<u8>> = VecDeque::new();
    let mut counter: u64 = 0;
    let mut accepted = HashSet::new();
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
                // flags: bit 0 a version of the input's, bit 1 a repeated
                // nonce, bit 2 sealed for the other cluster, bit 3 gossip
                // restarts first, bits 5..8 the payload's size.
                let flags = input.u8();
                if flags & 8 != 0 {
                    opener = Opener::with_replay(fuzz_sealer(), WINDOW_MS, Arc::clone(&replay));
                }
                let version = if flags & 1 != 0 { input.u8() } else { VERSION };
                // Kinds 0..=3 exist; 4 does not.
                let kind = input.u8() % 5;
                let skew = i64::from(input.u16() as i16) * 8;
                let timestamp_ms = now.saturating_add_signed(skew);
                counter += 1;
                let nonce = if flags & 2 != 0 {
                    [input.u8(); NONCE_LEN]
                } else {
                    let mut n = [0xee; NONCE_LEN];
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
                let foreign = flags & 4 != 0;
                let d = craft(if foreign { &theirs } else { &ours }, &h, &payload);
                let fresh = flags & 2 == 0;
                let valid = version == VERSION
                    && kind < 4
                    && skew.unsigned_abs() <= WINDOW_MS
                    && d.len() <= MAX_DATAGRAM;
                let expect = if foreign {
                    Expect::Refused
                } else if fresh && valid && count == 1 && index == 0 {
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
                     (a changed key derivation or header layout in seal.rs?)"
                ),
            },
            _ => {}
        }
        if let Ok(Some((_, body))) = &got {
            assert!(body.len() <= usize::from(MAX_FRAGMENTS) * MAX_FRAGMENT_PAYLOAD);
        }
        // A datagram opens once: it is taken at most once while its
        // timestamp is within the window (and never outside), across
        // restarts of gossip too. Identified by nonce and tag, not by nonce
        // alone: a key holder may seal another datagram under a nonce once
        // the first has left the window, and that is no replay.
        if got.is_ok() {
            let nonce = nonce_of(&dgram);
            let tag: [u8; 16] = dgram[dgram.len() - 16..].try_into().unwrap();
            assert!(
                accepted.insert((nonce, tag)),
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
        // Replays and tampering start from sealed datagrams only (a
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
/// fragments (in and out of order), a replay, a tampered copy, garbage, a
/// datagram of another cluster, a replay across a restart of gossip.
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
    // A status cookie (kind 3) of another cluster sharing the secret.
    out.push(sealed(0xe4, 3, 1, 1, 0, 32));
    // Gossip restarts between a datagram and its replay.
    let mut restart = sealed(0xe0, 0, 1, 1, 0, 9);
    restart.extend(sealed(0xe8, 0, 2, 1, 0, 9));
    restart.extend([1 << 2, 0, 1 << 2, 1]);
    out.push(restart);
    out
}

/// Opens `payload` sealed as `kind` with the real sealer and opener, as a
/// node does; `None` when it is too large to seal.
fn through_the_opener(kind: Kind, payload: &[u8]) -> Option<Vec<u8>> {
    let sealer = fuzz_sealer();
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

/// How long a loopback datagram may take through chitchat's sockets.
const LOOPBACK_DEADLINE: Duration = Duration::from_secs(10);

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
                let out = tokio::time::timeout(LOOPBACK_DEADLINE, dec.recv())
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
            let (n, _) = tokio::time::timeout(LOOPBACK_DEADLINE, sink.recv_from(&mut buf))
                .await
                .expect("chitchat's encoding arrives")
                .expect("loopback receive");
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

/// The id of the fuzzed `manta status` query (a client draws a random one).
const STATUS_ID: [u8; 16] = [0x51; 16];

/// What a `manta status` client opens (`query_status_in`), sealed and
/// opened for real: a status reply (the query's id, then the answering
/// node's view as JSON) or a cookie answer (the query's id and a cookie:
/// the layout of a status request, which is also what a node parses from
/// one). Checks: bytes that parse as a request or cookie answer are exactly
/// its encoding; a reply to this query (its id first) whose view decodes
/// encodes back to the same view; a reply to another query is not read.
pub fn fuzz_status_reply(data: &[u8]) {
    let Some(plain) = through_the_opener(Kind::StatusReply, data) else {
        return;
    };
    match StatusRequest::parse(&plain) {
        Some(r) => assert!(r.encode()[..] == plain[..], "a status request changed"),
        None => assert_ne!(plain.len(), STATUS_REQUEST_LEN),
    }
    // As `query_status_in` takes a reply.
    if plain.get(..16) != Some(&STATUS_ID[..]) {
        return;
    }
    if let Ok(s) = serde_json::from_slice::<ClusterStatus>(&plain[16..]) {
        let again = serde_json::to_vec(&s).unwrap();
        let back: ClusterStatus = serde_json::from_slice(&again).unwrap();
        assert_eq!(back, s);
    }
}

/// A real status reply (the view as a node's status board has it), an
/// empty one, a reply to another query and a cookie answer.
pub fn status_reply_seeds() -> Vec<Vec<u8>> {
    let s = ClusterStatus {
        nodes: vec![NodeStatus {
            id: "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN".into(),
            name: "n1".into(),
            state: "alive".into(),
            roles: vec!["worker".into()],
            gossip: "127.0.0.1:7000".into(),
            actors: vec!["ledger".into()],
            lane: Some("bulk".into()),
        }],
        dropped: BTreeMap::from([("stale".to_owned(), 3)]),
    };
    let reply = |id: [u8; 16], view: &[u8]| {
        let mut r = id.to_vec();
        r.extend_from_slice(view);
        r
    };
    let view = serde_json::to_vec(&s).unwrap();
    vec![
        reply(STATUS_ID, &view),
        reply(STATUS_ID, b"{\"nodes\":[]}"),
        reply([0x52; 16], &view),
        StatusRequest {
            id: STATUS_ID,
            cookie: [0xc0; 16],
        }
        .encode()
        .to_vec(),
    ]
}

/// Real gossip: the messages a running node (sealed, signing its keys, with
/// roles, labels, actors and its mesh and bulk-lane addresses) sends a peer that asks it for everything, as
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
    config.cluster = FUZZ_CLUSTER.to_owned();
    config.secret = Some(secret.clone());
    config.signer = Some(id.keypair().clone());
    config.gossip_interval = Duration::from_millis(50);
    config.keys.insert("roles".into(), "worker,gpu".into());
    config
        .keys
        .insert("labels".into(), "{\"zone\":\"eu-1\"}".into());
    // The mesh's and the bulk lane's addresses, as a node adds them.
    config.keys.insert(
        crate::membership::keys::P2P.into(),
        "/ip4/127.0.0.1/tcp/7001".into(),
    );
    config.keys.insert(
        crate::membership::keys::BULK.into(),
        "127.0.0.1:7002".into(),
    );
    let node = Membership::start(config).await.ok()?;
    node.set_actors(&BTreeMap::from([(
        "ledger".to_owned(),
        "manta.builtin.CounterMsg".to_owned(),
    )]))
    .await;
    let captured = ask_for_everything(&node, &secret).await;
    node.leave().await;
    captured
}

/// Asks `node` for everything it knows (a `Syn` with an empty digest) three
/// times; the question and the answers (`SynAck`s) as plaintext. Each answer
/// is awaited, and asked for again if a datagram was lost, within a
/// deadline.
async fn ask_for_everything(
    node: &crate::membership::Membership,
    secret: &ClusterSecret,
) -> Option<Vec<Vec<u8>>> {
    let lo = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut codec_enc = ChitchatUdp::open(lo).await.ok()?;
    let sink = tokio::net::UdpSocket::bind(lo).await.ok()?;
    codec_enc
        .send(
            sink.local_addr().ok()?,
            ChitchatEnvelope {
                version: ProtocolVersion::V0,
                message: ChitchatMessage::Syn {
                    cluster_id: crate::seal::cluster_id(Some(secret), FUZZ_CLUSTER),
                    digest: Default::default(),
                },
            },
        )
        .await
        .ok()?;
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let (n, _) = tokio::time::timeout(LOOPBACK_DEADLINE, sink.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    let syn = buf[..n].to_vec();
    let me = tokio::net::UdpSocket::bind(lo).await.ok()?;
    let sealer = fuzz_sealer();
    let mut opener = Opener::new(sealer.clone(), WINDOW_MS);
    let mut out = vec![syn.clone(), SENTINEL.to_vec()];
    let deadline = tokio::time::Instant::now() + LOOPBACK_DEADLINE;
    let mut answers = 0;
    'ask: while answers < 3 {
        for d in sealer
            .seal(Kind::Gossip, &syn, crate::seal::now_ms())
            .ok()?
        {
            me.send_to(&d, node.gossip_addr()).await.ok()?;
        }
        // The answer, or (after a second without one) the question again.
        let resend = (tokio::time::Instant::now() + Duration::from_secs(1)).min(deadline);
        loop {
            match tokio::time::timeout_at(resend, me.recv_from(&mut buf)).await {
                Ok(Ok((n, from))) => {
                    if let Ok(Some((Kind::Gossip, plain))) =
                        opener.accept(&buf[..n], from, crate::seal::now_ms())
                    {
                        out.push(plain);
                        answers += 1;
                        continue 'ask;
                    }
                }
                Ok(Err(_)) => return None,
                Err(_) if tokio::time::Instant::now() >= deadline => break 'ask,
                Err(_) => continue 'ask,
            }
        }
    }
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

/// Node-config durations (`"250ms"`): what parses is at most 8760h, and
/// formatting it the way the config would needs no more than a second
/// pass.
pub fn fuzz_config_duration(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = crate::config::parse_duration(text) {
        assert!(
            d <= crate::config::MAX_DURATION,
            "{text:?} parses to {d:?}, past the limit"
        );
        let again = crate::config::parse_duration(&format!("{}ms", d.as_millis()));
        assert!(again.is_ok(), "{d:?} from {text:?} does not parse back");
    }
}

/// A node config file (TOML): parse, then the checks `Node::start` runs
/// first (`validate`), and the remoting limits and key path a node derives.
/// A config that validates has durations in (0, 8760h].
pub fn fuzz_node_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match crate::config::NodeConfig::parse(text, "fuzz.toml") {
        Ok(c) => {
            // Without a secret file (and not `insecure`), `validate`
            // resolves the gossip address: only where that is an address
            // already, so that the fuzzer never asks a name resolver.
            if (c.secret_file.is_some() || c.insecure || c.gossip.parse::<SocketAddr>().is_ok())
                && c.validate().is_ok()
            {
                let fd = &c.failure_detection;
                for d in [
                    fd.gossip_interval,
                    fd.max_interval,
                    fd.dead_node_grace_period,
                ] {
                    assert!(!d.is_zero() && d <= crate::config::MAX_DURATION, "{d:?}");
                }
            }
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

    /// The gossip seeds are what a node answers (when loopback sockets can
    /// be had: without, the capture falls back to one message).
    #[test]
    fn gossip_seeds_are_a_nodes_answers() {
        let seeds = gossip_seeds();
        if seeds.len() == 1 {
            return;
        }
        assert_eq!(seeds.len(), 5, "the question, the sentinel, three answers");
        let mut codec = Codec::new();
        let question = codec.decode(&seeds[0]).expect("the question decodes");
        assert!(matches!(question.message, ChitchatMessage::Syn { .. }));
        for s in &seeds[2..] {
            let answer = codec.decode(s).expect("an answer decodes");
            let ChitchatMessage::SynAck { delta, .. } = answer.message else {
                panic!("not a SynAck: {answer:?}");
            };
            let shown = format!("{delta:?}");
            assert!(shown.contains("manta.builtin.CounterMsg"), "{shown}");
        }
    }

    /// The opener target crafts datagrams itself: they must be what `seal`
    /// writes (layout, key derivation), or the target fuzzes something
    /// else.
    #[test]
    fn crafted_datagrams_are_the_sealers() {
        let now = 1_700_000_000_000;
        let real = fuzz_sealer()
            .seal(Kind::StatusCookie, b"cookie", now)
            .unwrap()
            .remove(0);
        assert_eq!((real[0], real[1]), (VERSION, Kind::StatusCookie as u8));
        assert_eq!(real[2..10], now.to_be_bytes());
        assert_eq!(real[HEADER_LEN - 4..HEADER_LEN], [0, 0, 0, 1]);
        let nonce = nonce_of(&real);
        let (header, ct) = real.split_at(HEADER_LEN);
        let plain = fuzz_cipher(FUZZ_CLUSTER)
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: ct,
                    aad: header,
                },
            )
            .expect("the real sealer's datagram opens with the fuzzer's key");
        assert_eq!(plain, b"cookie");
        let h = Header {
            version: VERSION,
            kind: Kind::Gossip as u8,
            timestamp_ms: now,
            nonce: [7; NONCE_LEN],
            msg_id: 3,
            index: 0,
            count: 1,
        };
        let ours = craft(&fuzz_cipher(FUZZ_CLUSTER), &h, b"hi");
        let f = fuzz_sealer().open(&ours).expect("a crafted datagram opens");
        assert_eq!(
            (f.kind, f.nonce, f.msg_id, f.payload),
            (Kind::Gossip, [7; NONCE_LEN], 3, b"hi".to_vec())
        );
        let theirs = craft(&fuzz_cipher(DEFAULT_CLUSTER), &h, b"hi");
        assert!(fuzz_sealer().open(&theirs).is_err());
        assert!(
            Sealer::for_cluster(Some(&fuzz_secret()), DEFAULT_CLUSTER)
                .open(&theirs)
                .is_ok()
        );
    }
}
