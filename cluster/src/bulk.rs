//! The bulk lane's record layer (issue 17): what a lane connection carries
//! once it is open. A lane is keyed from fresh random material and a
//! one-time ticket that the listening node hands the dialer over the
//! authenticated mesh; each direction gets its own AES-256-GCM key
//! (HKDF-SHA256 over the material, the ticket as salt, the direction as
//! info), and each record's nonce is its position in that direction (a
//! record replayed, dropped or reordered does not open). Nothing that has
//! not opened reaches a decoder.
//!
//! A record on the wire: `length u32 (big-endian) | ciphertext | tag [16]`,
//! the length (of the ciphertext) authenticated as associated data.
//!
//! The lane itself (listener, dialer, ticket exchange over the mesh,
//! ordering against the mesh stream, fallback) is `remote::lane`.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;

/// Bytes before a record's ciphertext: its length.
pub const RECORD_HEADER: usize = 4;
/// Bytes after it: the GCM tag.
pub const RECORD_TAG: usize = 16;
/// The largest record payload accepted (a record announcing more closes
/// the lane before anything is read into memory).
pub const MAX_RECORD: usize = 1 << 20;

/// Why a record could not be sealed or opened. Any of these closes the
/// lane; the peer opens a new one through the mesh.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The record announces more than [`MAX_RECORD`] bytes.
    #[error("record of {0} bytes, more than the {MAX_RECORD} a lane takes")]
    TooLarge(usize),
    /// Authentication failed: tampered, replayed, reordered, or another key.
    #[error("record {0} did not open (tampered, replayed, out of order, or another key)")]
    Unauthentic(u64),
    /// A direction ran out of nonces (2^64 records: never in practice).
    #[error("a lane direction ran out of record numbers")]
    Exhausted,
    /// The key could not be derived or set up.
    #[error("lane key setup failed")]
    Key,
}

/// What the listening node sends the dialer over the mesh to open one lane:
/// used for one connection only.
#[derive(Clone, PartialEq, Eq)]
pub struct LaneSecrets {
    /// Fresh random key material.
    pub material: [u8; 32],
    /// The one-time ticket the connection starts with.
    pub ticket: [u8; 16],
}

impl std::fmt::Debug for LaneSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LaneSecrets(..)")
    }
}

impl LaneSecrets {
    /// Fresh material and ticket.
    pub fn fresh() -> Self {
        Self {
            material: rand::random(),
            ticket: rand::random(),
        }
    }
}

/// Which end of a lane this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Opened the connection (asked for the lane).
    Dialer,
    /// Accepted it (handed out the ticket).
    Listener,
}

struct KeyLen;

impl hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        32
    }
}

fn direction_key(s: &LaneSecrets, info: &'static [u8]) -> Result<LessSafeKey, RecordError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &s.ticket).extract(&s.material);
    let mut key = [0u8; 32];
    prk.expand(&[info], KeyLen)
        .and_then(|okm| okm.fill(&mut key))
        .map_err(|_| RecordError::Key)?;
    let unbound = UnboundKey::new(&AES_256_GCM, &key).map_err(|_| RecordError::Key)?;
    Ok(LessSafeKey::new(unbound))
}

/// The sealing and opening halves of one lane end.
pub fn lane_keys(
    secrets: &LaneSecrets,
    side: Side,
) -> Result<(RecordSealer, RecordOpener), RecordError> {
    let to_listener = direction_key(secrets, b"manta-bulk-v1 dialer to listener")?;
    let to_dialer = direction_key(secrets, b"manta-bulk-v1 listener to dialer")?;
    let (send, recv) = match side {
        Side::Dialer => (to_listener, to_dialer),
        Side::Listener => (to_dialer, to_listener),
    };
    Ok((
        RecordSealer { key: send, next: 0 },
        RecordOpener { key: recv, next: 0 },
    ))
}

fn nonce(n: u64) -> Nonce {
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&n.to_be_bytes());
    Nonce::assume_unique_for_key(b)
}

/// Seals the records one direction of a lane sends.
pub struct RecordSealer {
    key: LessSafeKey,
    next: u64,
}

impl RecordSealer {
    /// Seals `record` in place: its first [`RECORD_HEADER`] bytes are
    /// reserved for the length (overwritten), the payload follows; the tag
    /// is appended. The result goes on the wire as it is.
    pub fn seal(&mut self, record: &mut Vec<u8>) -> Result<(), RecordError> {
        let len = record.len().saturating_sub(RECORD_HEADER);
        if len > MAX_RECORD || record.len() < RECORD_HEADER {
            return Err(RecordError::TooLarge(len));
        }
        let n = self.next;
        self.next = n.checked_add(1).ok_or(RecordError::Exhausted)?;
        let header = (len as u32).to_be_bytes();
        record[..RECORD_HEADER].copy_from_slice(&header);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(n), Aad::from(header), &mut record[RECORD_HEADER..])
            .map_err(|_| RecordError::Key)?;
        record.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// The number the next sealed record gets (its nonce).
    pub fn next_record(&self) -> u64 {
        self.next
    }

    /// Undoes [`seal`](Self::seal) of record number `n` (sealed by this
    /// sealer): the record is back to its unsealed layout, to be sealed
    /// again on another lane (a message resent after its lane died).
    pub fn unseal(&self, n: u64, record: &mut Vec<u8>) -> Result<(), RecordError> {
        if record.len() < RECORD_HEADER + RECORD_TAG {
            return Err(RecordError::Unauthentic(n));
        }
        let mut header = [0u8; RECORD_HEADER];
        header.copy_from_slice(&record[..RECORD_HEADER]);
        let len = self
            .key
            .open_in_place(nonce(n), Aad::from(header), &mut record[RECORD_HEADER..])
            .map_err(|_| RecordError::Unauthentic(n))?
            .len();
        record.truncate(RECORD_HEADER + len);
        Ok(())
    }
}

/// Opens the records one direction of a lane receives, in order.
pub struct RecordOpener {
    key: LessSafeKey,
    next: u64,
}

impl RecordOpener {
    /// The payload length a record header announces, checked against
    /// [`MAX_RECORD`] before anything is read: the body to read next is
    /// that many bytes plus [`RECORD_TAG`].
    pub fn announced(&self, header: [u8; RECORD_HEADER]) -> Result<usize, RecordError> {
        let len = u32::from_be_bytes(header) as usize;
        if len > MAX_RECORD {
            return Err(RecordError::TooLarge(len));
        }
        Ok(len)
    }

    /// Opens the next record: `body` is its ciphertext and tag; the payload
    /// is returned in place.
    pub fn open<'a>(
        &mut self,
        header: [u8; RECORD_HEADER],
        body: &'a mut [u8],
    ) -> Result<&'a [u8], RecordError> {
        let len = self.announced(header)?;
        if body.len() != len + RECORD_TAG {
            return Err(RecordError::Unauthentic(self.next));
        }
        let n = self.next;
        let plain = self
            .key
            .open_in_place(nonce(n), Aad::from(header), body)
            .map_err(|_| RecordError::Unauthentic(n))?;
        self.next = n.checked_add(1).ok_or(RecordError::Exhausted)?;
        Ok(plain)
    }

    /// Opens the next record whose ciphertext and tag are `buf[src..]`,
    /// writing its payload to the start of `buf` (one pass: AES-GCM
    /// decrypts behind itself, so records read back to back into one
    /// buffer become one contiguous plaintext without a separate move).
    /// Returns the payload's length. On failure `buf` holds garbage.
    pub fn open_within(
        &mut self,
        header: [u8; RECORD_HEADER],
        buf: &mut [u8],
        src: usize,
    ) -> Result<usize, RecordError> {
        let len = self.announced(header)?;
        if buf.len().checked_sub(src) != Some(len + RECORD_TAG) {
            return Err(RecordError::Unauthentic(self.next));
        }
        let n = self.next;
        let plain = self
            .key
            .open_within(nonce(n), Aad::from(header), buf, src..)
            .map_err(|_| RecordError::Unauthentic(n))?
            .len();
        self.next = n.checked_add(1).ok_or(RecordError::Exhausted)?;
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(payload: &[u8]) -> Vec<u8> {
        let mut r = vec![0u8; RECORD_HEADER];
        r.extend_from_slice(payload);
        r
    }

    fn split(r: &mut [u8]) -> ([u8; RECORD_HEADER], &mut [u8]) {
        let (h, b) = r.split_at_mut(RECORD_HEADER);
        let mut header = [0u8; RECORD_HEADER];
        header.copy_from_slice(h);
        (header, b)
    }

    #[test]
    fn records_read_back_to_back_open_within_one_buffer() {
        let s = LaneSecrets::fresh();
        let (mut send, _) = lane_keys(&s, Side::Dialer).unwrap();
        let (_, mut recv) = lane_keys(&s, Side::Listener).unwrap();
        let mut wire = Vec::new();
        let payloads: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 100 + i as usize]).collect();
        for p in &payloads {
            let mut r = record(p);
            send.seal(&mut r).unwrap();
            wire.extend_from_slice(&r);
        }
        // Open each record in place, the payloads packed at the front.
        let (mut plain_end, mut raw) = (0usize, 0usize);
        for p in &payloads {
            let mut h = [0u8; RECORD_HEADER];
            h.copy_from_slice(&wire[raw..raw + RECORD_HEADER]);
            let end = raw + RECORD_HEADER + p.len() + RECORD_TAG;
            let n = recv
                .open_within(
                    h,
                    &mut wire[plain_end..end],
                    raw + RECORD_HEADER - plain_end,
                )
                .unwrap();
            assert_eq!(n, p.len());
            plain_end += n;
            raw = end;
        }
        assert_eq!(wire[..plain_end], payloads.concat()[..]);
        // A tampered record does not open within either.
        let mut r = record(b"next");
        send.seal(&mut r).unwrap();
        let last = r.len() - 1;
        r[last] ^= 1;
        let (h, _) = split(&mut r);
        assert!(recv.open_within(h, &mut r, RECORD_HEADER).is_err());
    }

    #[test]
    fn records_open_in_order_on_the_other_side_only() {
        let s = LaneSecrets::fresh();
        let (mut d_send, mut d_recv) = lane_keys(&s, Side::Dialer).unwrap();
        let (mut l_send, mut l_recv) = lane_keys(&s, Side::Listener).unwrap();
        for i in 0..3u8 {
            let mut r = record(&[i; 1000]);
            d_send.seal(&mut r).unwrap();
            assert_eq!(r.len(), RECORD_HEADER + 1000 + RECORD_TAG);
            let (h, b) = split(&mut r);
            assert_eq!(l_recv.open(h, b).unwrap(), &[i; 1000][..]);
        }
        let mut back = record(b"reply");
        l_send.seal(&mut back).unwrap();
        let (h, b) = split(&mut back);
        assert_eq!(d_recv.open(h, b).unwrap(), b"reply");
        // A record does not open in the direction it was sent from.
        let mut echo = record(b"x");
        d_send.seal(&mut echo).unwrap();
        let (h, b) = split(&mut echo);
        assert!(d_recv.open(h, b).is_err());
    }

    #[test]
    fn tampered_replayed_reordered_or_foreign_records_do_not_open() {
        let s = LaneSecrets::fresh();
        let (mut send, _) = lane_keys(&s, Side::Dialer).unwrap();
        let (_, mut recv) = lane_keys(&s, Side::Listener).unwrap();
        let mut first = record(b"first");
        let mut second = record(b"second");
        send.seal(&mut first).unwrap();
        send.seal(&mut second).unwrap();
        // Reordered: the second first.
        let mut copy = second.clone();
        let (h, b) = split(&mut copy);
        assert_eq!(recv.open(h, b), Err(RecordError::Unauthentic(0)));
        // Tampered payload, then a tampered length.
        let mut bad = first.clone();
        bad[RECORD_HEADER] ^= 1;
        let (h, b) = split(&mut bad);
        assert!(recv.open(h, b).is_err());
        let mut bad = first.clone();
        bad[3] ^= 1;
        let (h, b) = split(&mut bad);
        assert!(recv.open(h, b).is_err());
        // In order it opens; replayed it does not.
        let mut copy = first.clone();
        let (h, b) = split(&mut copy);
        assert_eq!(recv.open(h, b).unwrap(), b"first");
        let (h, b) = split(&mut first);
        assert_eq!(recv.open(h, b), Err(RecordError::Unauthentic(1)));
        // Another lane's keys (another ticket, same material): nothing opens.
        let other = LaneSecrets {
            ticket: rand::random(),
            ..s.clone()
        };
        let (_, mut stranger) = lane_keys(&other, Side::Listener).unwrap();
        let (h, b) = split(&mut second);
        assert!(stranger.open(h, b).is_err());
    }

    #[test]
    fn an_unsealed_record_is_sealed_again_under_another_lane() {
        let (old, new) = (LaneSecrets::fresh(), LaneSecrets::fresh());
        let (mut send, _) = lane_keys(&old, Side::Dialer).unwrap();
        send.seal(&mut record(b"skip")).unwrap();
        let n = send.next_record();
        let mut r = record(b"resend me");
        send.seal(&mut r).unwrap();
        assert!(
            send.unseal(n + 1, &mut r.clone()).is_err(),
            "another number"
        );
        send.unseal(n, &mut r).unwrap();
        assert_eq!(&r[RECORD_HEADER..], b"resend me");
        let (mut send2, _) = lane_keys(&new, Side::Dialer).unwrap();
        let (_, mut recv2) = lane_keys(&new, Side::Listener).unwrap();
        send2.seal(&mut r).unwrap();
        let (h, b) = split(&mut r);
        assert_eq!(recv2.open(h, b).unwrap(), b"resend me");
    }

    #[test]
    fn oversized_records_are_refused_before_reading() {
        let s = LaneSecrets::fresh();
        let (mut send, recv) = lane_keys(&s, Side::Dialer).unwrap();
        let announced = ((MAX_RECORD + 1) as u32).to_be_bytes();
        assert_eq!(
            recv.announced(announced),
            Err(RecordError::TooLarge(MAX_RECORD + 1))
        );
        let mut big = record(&vec![0; MAX_RECORD + 1]);
        assert_eq!(
            send.seal(&mut big),
            Err(RecordError::TooLarge(MAX_RECORD + 1))
        );
    }

    #[test]
    fn record_numbers_never_wrap() {
        let s = LaneSecrets::fresh();
        let (mut send, _) = lane_keys(&s, Side::Dialer).unwrap();
        send.next = u64::MAX;
        assert_eq!(send.seal(&mut record(b"x")), Err(RecordError::Exhausted));
    }
}
