//! Sealed datagrams: every gossip datagram is authenticated and encrypted
//! with XChaCha20-Poly1305 under a key derived (HKDF-SHA256) from the
//! cluster secret. Nothing that fails to open reaches chitchat. The 192-bit
//! random nonces never collide under one long-lived key (96-bit ones would
//! after some 2^32 datagrams).
//!
//! Wire format of one datagram (all integers big-endian):
//!
//! ```text
//! version u8 | kind u8 | timestamp_ms u64 | nonce [24] | msg_id u64 | index u16 | count u16 | ciphertext+tag
//! `------------------------ authenticated (AEAD associated data) -------------------------'
//! ```
//!
//! A message larger than one datagram is split into up to
//! [`MAX_FRAGMENTS`] fragments sharing a `msg_id`, each sealed on its own,
//! and reassembled within bounded buffers. Datagrams whose timestamp is
//! outside the replay window, or whose nonce was already seen within it,
//! are dropped. A nonce is remembered until the window has passed its
//! datagram's timestamp (not its arrival: a datagram stamped ahead of this
//! clock stays remembered as long as it could be replayed);
//! when the bounded set of nonces is full, the oldest is forgotten and
//! every datagram stamped at or before it is refused from then on, so a
//! forgotten nonce can never be replayed. The set outlives gossip restarts
//! ([`ReplayGuard`] is shared by every socket a transport opens).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::Sha256;

use crate::secret::ClusterSecret;

/// Wire-format version.
pub const VERSION: u8 = 2;
/// Nonce bytes (XChaCha20-Poly1305).
pub const NONCE_LEN: usize = 24;
/// Header bytes before the ciphertext.
pub const HEADER_LEN: usize = 1 + 1 + 8 + NONCE_LEN + 8 + 2 + 2;
const TAG_LEN: usize = 16;
/// The largest UDP payload.
pub const MAX_DATAGRAM: usize = 65_507;
/// Plaintext bytes one datagram carries.
pub const MAX_FRAGMENT_PAYLOAD: usize = MAX_DATAGRAM - HEADER_LEN - TAG_LEN;
/// Most fragments of one message.
pub const MAX_FRAGMENTS: u16 = 8;
/// Most bytes buffered for partly received messages.
pub const MAX_REASSEMBLY_BYTES: usize = 4 * 1024 * 1024;
/// Most partly received messages buffered.
pub const MAX_PENDING_MESSAGES: usize = 64;
/// Most nonces remembered for the replay check.
pub const MAX_SEEN_NONCES: usize = 200_000;

/// The open development key used when a cluster has no secret: it keeps
/// random bytes and scanners out, not attackers.
const DEV_KEY_MATERIAL: &[u8] = b"manta open development cluster: no secret configured";

/// What a sealed message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// A chitchat envelope.
    Gossip = 0,
    /// A membership query from `manta status`.
    StatusRequest = 1,
    /// The answer: the request's id, then the node's view as JSON.
    StatusReply = 2,
    /// The answer to a status request without a valid cookie: the
    /// request's id and a cookie bound to the requester's address, no
    /// larger than the request (so a spoofed request reflects nothing).
    StatusCookie = 3,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        match b {
            0 => Some(Kind::Gossip),
            1 => Some(Kind::StatusRequest),
            2 => Some(Kind::StatusReply),
            3 => Some(Kind::StatusCookie),
            _ => None,
        }
    }
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Shorter than a header and a tag.
    Truncated,
    /// Longer than a UDP datagram can be.
    Oversized,
    /// Unknown version or kind, or inconsistent fragment numbers.
    Malformed,
    /// Timestamp outside the replay window.
    Stale,
    /// Failed authentication (wrong key, or tampered).
    Unauthenticated,
    /// Nonce seen before within the window.
    Replayed,
    /// Reassembly buffers are full.
    Overloaded,
    /// Opened but chitchat could not decode it.
    Undecodable,
    /// A status request over the rate of full answers.
    RateLimited,
}

impl DropReason {
    /// Every reason, for counters.
    pub const ALL: [DropReason; 9] = [
        DropReason::Truncated,
        DropReason::Oversized,
        DropReason::Malformed,
        DropReason::Stale,
        DropReason::Unauthenticated,
        DropReason::Replayed,
        DropReason::Overloaded,
        DropReason::Undecodable,
        DropReason::RateLimited,
    ];

    /// A short name for logs and counters.
    pub fn name(&self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::Oversized => "oversized",
            DropReason::Malformed => "malformed",
            DropReason::Stale => "stale",
            DropReason::Unauthenticated => "unauthenticated",
            DropReason::Replayed => "replayed",
            DropReason::Overloaded => "overloaded",
            DropReason::Undecodable => "undecodable",
            DropReason::RateLimited => "rate_limited",
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Derives a 32-byte key for `purpose` from the secret (or the development
/// key material) and the cluster name.
fn derive(secret: Option<&ClusterSecret>, cluster: &str, purpose: &str) -> [u8; 32] {
    let ikm: &[u8] = match secret {
        Some(s) => s.as_bytes(),
        None => DEV_KEY_MATERIAL,
    };
    let hk = Hkdf::<Sha256>::new(Some(b"manta-cluster-v1"), ikm);
    let mut out = [0u8; 32];
    let info = format!("{purpose}\0{cluster}");
    // 32 bytes is far below HKDF-SHA256's 8160-byte output limit.
    let _ = hk.expand(info.as_bytes(), &mut out);
    out
}

/// The chitchat cluster id for a cluster name and secret: a cheap first
/// filter (the seal is the real one).
pub fn cluster_id(secret: Option<&ClusterSecret>, cluster: &str) -> String {
    let k = derive(secret, cluster, "cluster-id");
    let tag: String = k[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("{cluster}-{tag}")
}

/// The cluster name a node has unless its config names another.
pub const DEFAULT_CLUSTER: &str = "manta";

/// The libp2p private-network key for a secret and cluster name (a
/// different derivation than the gossip key): two clusters sharing a
/// secret file still cannot connect.
pub fn mesh_psk(secret: &ClusterSecret, cluster: &str) -> [u8; 32] {
    derive(Some(secret), cluster, "mesh-psk")
}

/// Seals and opens datagrams for one cluster.
#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

/// One opened fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    /// What it carries.
    pub kind: Kind,
    /// Sender's clock, ms since the epoch.
    pub timestamp_ms: u64,
    /// The datagram's nonce.
    pub nonce: [u8; NONCE_LEN],
    /// Groups the fragments of one message.
    pub msg_id: u64,
    /// 0-based index.
    pub index: u16,
    /// Fragments in the message.
    pub count: u16,
    /// Plaintext.
    pub payload: Vec<u8>,
}

impl Sealer {
    /// A sealer keyed by `secret` (or the development key) for the
    /// default cluster name ([`DEFAULT_CLUSTER`]).
    pub fn new(secret: Option<&ClusterSecret>) -> Self {
        Self::for_cluster(secret, DEFAULT_CLUSTER)
    }

    /// A sealer keyed by `secret` (or the development key) and the cluster
    /// name: clusters that share a secret file cannot open each other's
    /// datagrams.
    pub fn for_cluster(secret: Option<&ClusterSecret>, cluster: &str) -> Self {
        let key = derive(secret, cluster, "gossip-seal");
        Self {
            cipher: XChaCha20Poly1305::new(Key::from_slice(&key)),
        }
    }

    /// Seals `payload` into one or more datagrams.
    pub fn seal(&self, kind: Kind, payload: &[u8], now_ms: u64) -> Result<Vec<Vec<u8>>, String> {
        let chunks: Vec<&[u8]> = if payload.is_empty() {
            vec![&[][..]]
        } else {
            payload.chunks(MAX_FRAGMENT_PAYLOAD).collect()
        };
        if chunks.len() > MAX_FRAGMENTS as usize {
            return Err(format!(
                "message of {} bytes needs {} fragments, more than {MAX_FRAGMENTS}",
                payload.len(),
                chunks.len()
            ));
        }
        let msg_id: u64 = rand::random();
        let count = chunks.len() as u16;
        let mut out = Vec::with_capacity(chunks.len());
        for (i, chunk) in chunks.into_iter().enumerate() {
            let nonce: [u8; NONCE_LEN] = rand::random();
            let mut dgram = Vec::with_capacity(HEADER_LEN + chunk.len() + TAG_LEN);
            dgram.push(VERSION);
            dgram.push(kind as u8);
            dgram.extend_from_slice(&now_ms.to_be_bytes());
            dgram.extend_from_slice(&nonce);
            dgram.extend_from_slice(&msg_id.to_be_bytes());
            dgram.extend_from_slice(&(i as u16).to_be_bytes());
            dgram.extend_from_slice(&count.to_be_bytes());
            let ct = self
                .cipher
                .encrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: chunk,
                        aad: &dgram[..HEADER_LEN],
                    },
                )
                .map_err(|_| "encryption failed".to_owned())?;
            dgram.extend_from_slice(&ct);
            out.push(dgram);
        }
        Ok(out)
    }

    /// Authenticates and decrypts one datagram (no replay or time checks).
    pub fn open(&self, dgram: &[u8]) -> Result<Fragment, DropReason> {
        if dgram.len() > MAX_DATAGRAM {
            return Err(DropReason::Oversized);
        }
        if dgram.len() < HEADER_LEN + TAG_LEN {
            return Err(DropReason::Truncated);
        }
        let (header, ct) = dgram.split_at(HEADER_LEN);
        if header[0] != VERSION {
            return Err(DropReason::Malformed);
        }
        let kind = Kind::from_u8(header[1]).ok_or(DropReason::Malformed)?;
        let be64 = |b: &[u8]| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_be_bytes(a)
        };
        let timestamp_ms = be64(&header[2..10]);
        let mut nonce = [0u8; NONCE_LEN];
        let at = 10 + NONCE_LEN;
        nonce.copy_from_slice(&header[10..at]);
        let msg_id = be64(&header[at..at + 8]);
        let index = u16::from_be_bytes([header[at + 8], header[at + 9]]);
        let count = u16::from_be_bytes([header[at + 10], header[at + 11]]);
        let payload = self
            .cipher
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: ct,
                    aad: header,
                },
            )
            .map_err(|_| DropReason::Unauthenticated)?;
        // Checked after authentication: only key holders get this far.
        if count == 0 || count > MAX_FRAGMENTS || index >= count {
            return Err(DropReason::Malformed);
        }
        Ok(Fragment {
            kind,
            timestamp_ms,
            nonce,
            msg_id,
            index,
            count,
            payload,
        })
    }
}

struct Partial {
    kind: Kind,
    parts: Vec<Option<Vec<u8>>>,
    bytes: usize,
    first_ms: u64,
}

/// The replay check's memory: nonces seen within the window, each kept
/// until the window has passed its datagram's timestamp (when a replay
/// would be stale anyway), at most
/// [`MAX_SEEN_NONCES`]; when full, the oldest goes and `floor` rises to its
/// time (datagrams stamped at or before the floor are refused). Shared
/// across gossip restarts.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: HashSet<[u8; NONCE_LEN]>,
    by_time: BTreeSet<(u64, [u8; NONCE_LEN])>,
    floor_ms: u64,
}

impl ReplayGuard {
    /// A guard to share between the openers of one node.
    pub fn shared() -> Arc<Mutex<ReplayGuard>> {
        Arc::new(Mutex::new(ReplayGuard::default()))
    }

    /// Nonces remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Checks a datagram stamped `ts` (already within the window of `now`)
    /// and remembers its nonce.
    fn check(
        &mut self,
        nonce: [u8; NONCE_LEN],
        ts: u64,
        now: u64,
        window: u64,
    ) -> Result<(), DropReason> {
        let horizon = now.saturating_sub(window);
        while let Some(&(t, n)) = self.by_time.first() {
            if t >= horizon {
                break;
            }
            self.by_time.pop_first();
            self.seen.remove(&n);
        }
        if ts <= self.floor_ms {
            return Err(DropReason::Stale);
        }
        if self.seen.contains(&nonce) {
            return Err(DropReason::Replayed);
        }
        while self.seen.len() >= MAX_SEEN_NONCES {
            let Some((t, n)) = self.by_time.pop_first() else {
                break;
            };
            self.seen.remove(&n);
            // Every datagram whose nonce could have been the one forgotten
            // is stamped at or before `t`.
            self.floor_ms = self.floor_ms.max(t);
        }
        if ts <= self.floor_ms {
            return Err(DropReason::Stale);
        }
        self.seen.insert(nonce);
        self.by_time.insert((ts, nonce));
        Ok(())
    }
}

/// Opens datagrams from the network: authentication, replay window,
/// reassembly, all with bounded memory.
pub struct Opener {
    sealer: Sealer,
    window_ms: u64,
    replay: Arc<Mutex<ReplayGuard>>,
    partial: HashMap<(SocketAddr, u64), Partial>,
    partial_bytes: usize,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("window_ms", &self.window_ms)
            .field("partial", &self.partial.len())
            .finish()
    }
}

impl Opener {
    /// An opener accepting timestamps within `window_ms` of its clock, with
    /// a replay memory of its own.
    pub fn new(sealer: Sealer, window_ms: u64) -> Self {
        Self::with_replay(sealer, window_ms, ReplayGuard::shared())
    }

    /// An opener whose replay memory is `replay` (shared with the openers
    /// before and after it, so a restart of gossip forgets no nonce).
    pub fn with_replay(sealer: Sealer, window_ms: u64, replay: Arc<Mutex<ReplayGuard>>) -> Self {
        Self {
            sealer,
            window_ms,
            replay,
            partial: HashMap::new(),
            partial_bytes: 0,
        }
    }

    fn expire(&mut self, now_ms: u64) {
        let horizon = now_ms.saturating_sub(self.window_ms);
        let mut freed = 0;
        self.partial.retain(|_, p| {
            let keep = p.first_ms >= horizon;
            if !keep {
                freed += p.bytes;
            }
            keep
        });
        self.partial_bytes -= freed;
    }

    /// Accepts one datagram from `from`: `Ok(Some)` with a whole message,
    /// `Ok(None)` while fragments are missing, `Err` when it is dropped.
    pub fn accept(
        &mut self,
        dgram: &[u8],
        from: SocketAddr,
        now_ms: u64,
    ) -> Result<Option<(Kind, Vec<u8>)>, DropReason> {
        self.expire(now_ms);
        let frag = self.sealer.open(dgram)?;
        if frag.timestamp_ms.abs_diff(now_ms) > self.window_ms {
            return Err(DropReason::Stale);
        }
        self.replay
            .lock()
            // Each critical section is one check-and-insert: a poisoned
            // lock still holds a consistent set.
            .unwrap_or_else(|e| e.into_inner())
            .check(frag.nonce, frag.timestamp_ms, now_ms, self.window_ms)?;
        if frag.count == 1 {
            return Ok(Some((frag.kind, frag.payload)));
        }
        let key = (from, frag.msg_id);
        if !self.partial.contains_key(&key) {
            if self.partial.len() >= MAX_PENDING_MESSAGES {
                return Err(DropReason::Overloaded);
            }
            self.partial.insert(
                key,
                Partial {
                    kind: frag.kind,
                    parts: vec![None; frag.count as usize],
                    bytes: 0,
                    first_ms: now_ms,
                },
            );
        }
        let len = frag.payload.len();
        if self.partial_bytes + len > MAX_REASSEMBLY_BYTES {
            return Err(DropReason::Overloaded);
        }
        let Some(p) = self.partial.get_mut(&key) else {
            return Err(DropReason::Overloaded);
        };
        if p.parts.len() != frag.count as usize || p.kind != frag.kind {
            return Err(DropReason::Malformed);
        }
        let slot = &mut p.parts[frag.index as usize];
        if slot.is_some() {
            return Err(DropReason::Replayed);
        }
        *slot = Some(frag.payload);
        p.bytes += len;
        self.partial_bytes += len;
        if p.parts.iter().all(Option::is_some) {
            let Some(p) = self.partial.remove(&key) else {
                return Err(DropReason::Overloaded);
            };
            self.partial_bytes -= p.bytes;
            let mut whole = Vec::with_capacity(p.bytes);
            for part in p.parts.into_iter().flatten() {
                whole.extend_from_slice(&part);
            }
            return Ok(Some((p.kind, whole)));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 7000))
    }

    fn pair() -> (Sealer, Opener) {
        let secret = ClusterSecret::generate();
        let s = Sealer::new(Some(&secret));
        (s.clone(), Opener::new(s, 30_000))
    }

    #[test]
    fn seals_and_opens() {
        let (s, mut o) = pair();
        let now = now_ms();
        let d = s.seal(Kind::Gossip, b"hello", now).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(
            o.accept(&d[0], addr(), now),
            Ok(Some((Kind::Gossip, b"hello".to_vec())))
        );
    }

    #[test]
    fn wrong_key_tampering_and_garbage_are_dropped() {
        let (s, mut o) = pair();
        let other = Sealer::new(Some(&ClusterSecret::generate()));
        let now = now_ms();
        let d = other.seal(Kind::Gossip, b"x", now).unwrap();
        assert_eq!(
            o.accept(&d[0], addr(), now),
            Err(DropReason::Unauthenticated)
        );
        // The open development key is not the cluster's key either.
        let d = Sealer::new(None).seal(Kind::Gossip, b"x", now).unwrap();
        assert_eq!(
            o.accept(&d[0], addr(), now),
            Err(DropReason::Unauthenticated)
        );
        let mut d = s.seal(Kind::Gossip, b"payload", now).unwrap().remove(0);
        let last = d.len() - 1;
        d[last] ^= 1;
        assert_eq!(o.accept(&d, addr(), now), Err(DropReason::Unauthenticated));
        assert_eq!(
            o.accept(&[1, 2, 3], addr(), now),
            Err(DropReason::Truncated)
        );
        assert_eq!(
            o.accept(&vec![0u8; 70_000], addr(), now),
            Err(DropReason::Oversized)
        );
        let mut d = s.seal(Kind::Gossip, b"p", now).unwrap().remove(0);
        d[0] = 9;
        assert_eq!(o.accept(&d, addr(), now), Err(DropReason::Malformed));
        for len in 0..200 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
            assert!(o.accept(&junk, addr(), now).is_err());
        }
    }

    #[test]
    fn replays_and_stale_datagrams_are_dropped() {
        let (s, mut o) = pair();
        let now = now_ms();
        let d = s.seal(Kind::Gossip, b"once", now).unwrap().remove(0);
        assert!(o.accept(&d, addr(), now).unwrap().is_some());
        assert_eq!(o.accept(&d, addr(), now + 10), Err(DropReason::Replayed));
        let old = s
            .seal(Kind::Gossip, b"old", now - 60_000)
            .unwrap()
            .remove(0);
        assert_eq!(o.accept(&old, addr(), now), Err(DropReason::Stale));
        let future = s
            .seal(Kind::Gossip, b"future", now + 60_000)
            .unwrap()
            .remove(0);
        assert_eq!(o.accept(&future, addr(), now), Err(DropReason::Stale));
    }

    #[test]
    fn large_messages_are_fragmented_and_reassembled_in_any_order() {
        let (s, mut o) = pair();
        let now = now_ms();
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut d = s.seal(Kind::StatusReply, &big, now).unwrap();
        assert_eq!(d.len(), 4);
        assert!(d.iter().all(|x| x.len() <= MAX_DATAGRAM));
        d.reverse();
        let last = d.pop().unwrap();
        for frag in &d {
            assert_eq!(o.accept(frag, addr(), now), Ok(None));
        }
        assert_eq!(
            o.accept(&last, addr(), now),
            Ok(Some((Kind::StatusReply, big)))
        );
        let huge = vec![0u8; MAX_FRAGMENT_PAYLOAD * (MAX_FRAGMENTS as usize + 1)];
        assert!(s.seal(Kind::Gossip, &huge, now).is_err());
    }

    #[test]
    fn reassembly_memory_is_bounded() {
        let (s, mut o) = pair();
        let now = now_ms();
        let big = vec![7u8; MAX_FRAGMENT_PAYLOAD * 2];
        let mut dropped = 0;
        for _ in 0..(MAX_PENDING_MESSAGES + 10) {
            let d = s.seal(Kind::Gossip, &big, now).unwrap();
            if o.accept(&d[0], addr(), now).is_err() {
                dropped += 1;
            }
        }
        assert!(dropped >= 10);
        assert!(o.partial.len() <= MAX_PENDING_MESSAGES);
        assert!(o.partial_bytes <= MAX_REASSEMBLY_BYTES);
        // Partial messages expire with the window.
        let later = now + 31_000;
        let d = s.seal(Kind::Gossip, b"fresh", later).unwrap();
        assert!(o.accept(&d[0], addr(), later).unwrap().is_some());
        assert_eq!(o.partial.len(), 0);
        assert_eq!(o.partial_bytes, 0);
    }

    #[test]
    fn a_datagram_stamped_ahead_cannot_be_replayed_once_its_arrival_leaves_the_window() {
        let (s, mut o) = pair();
        let now = now_ms();
        let d = s.seal(Kind::Gossip, b"x", now + 25_000).unwrap();
        assert!(o.accept(&d[0], addr(), now).unwrap().is_some());
        // 40 s later its stamp is still within the window of the clock.
        assert_eq!(
            o.accept(&d[0], addr(), now + 40_000),
            Err(DropReason::Replayed)
        );
    }

    #[test]
    fn a_full_nonce_set_refuses_what_it_forgets_instead_of_accepting_replays() {
        let mut g = ReplayGuard::default();
        let now = 1_000_000;
        let nonce = |i: usize| {
            let mut n = [0u8; NONCE_LEN];
            n[..8].copy_from_slice(&(i as u64).to_be_bytes());
            n
        };
        // The oldest first, then the set filled within the window.
        g.check(nonce(0), now - 100, now, 30_000).unwrap();
        for i in 1..MAX_SEEN_NONCES {
            g.check(nonce(i), now, now, 30_000).unwrap();
        }
        assert_eq!(g.len(), MAX_SEEN_NONCES);
        // One more: the oldest is forgotten...
        let mut fresh = nonce(0);
        fresh[23] = 1;
        g.check(fresh, now + 1, now + 1, 30_000).unwrap();
        assert_eq!(g.len(), MAX_SEEN_NONCES);
        // ...and its replay is refused all the same.
        assert_eq!(
            g.check(nonce(0), now - 100, now + 1, 30_000),
            Err(DropReason::Stale)
        );
        assert_eq!(
            g.check(nonce(5), now, now + 1, 30_000),
            Err(DropReason::Replayed)
        );
    }

    #[test]
    fn the_replay_memory_outlives_the_opener() {
        let secret = ClusterSecret::generate();
        let s = Sealer::new(Some(&secret));
        let shared = ReplayGuard::shared();
        let now = now_ms();
        let d = s.seal(Kind::Gossip, b"x", now).unwrap();
        let mut before = Opener::with_replay(s.clone(), 30_000, Arc::clone(&shared));
        assert!(before.accept(&d[0], addr(), now).unwrap().is_some());
        drop(before);
        // Gossip restarted: a new socket, a new opener, the same memory.
        let mut after = Opener::with_replay(s, 30_000, shared);
        assert_eq!(after.accept(&d[0], addr(), now), Err(DropReason::Replayed));
    }

    #[test]
    fn clusters_sharing_a_secret_cannot_open_each_others_datagrams() {
        let secret = ClusterSecret::generate();
        let a = Sealer::for_cluster(Some(&secret), "a");
        let mut b = Opener::new(Sealer::for_cluster(Some(&secret), "b"), 30_000);
        let now = now_ms();
        let d = a.seal(Kind::Gossip, b"x", now).unwrap();
        assert_eq!(
            b.accept(&d[0], addr(), now),
            Err(DropReason::Unauthenticated)
        );
        assert_ne!(mesh_psk(&secret, "a"), mesh_psk(&secret, "b"));
    }

    #[test]
    fn cluster_ids_depend_on_name_and_secret() {
        let s1 = ClusterSecret::generate();
        assert_ne!(cluster_id(Some(&s1), "a"), cluster_id(Some(&s1), "b"));
        assert_ne!(cluster_id(Some(&s1), "a"), cluster_id(None, "a"));
        assert_eq!(cluster_id(Some(&s1), "a"), cluster_id(Some(&s1), "a"));
        assert!(cluster_id(None, "prod").starts_with("prod-"));
    }
}
