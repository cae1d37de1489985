//! The private-network layer under noise: libp2p's PSK v1 protocol (the
//! one `libp2p::pnet` and go-libp2p speak), with a faster cipher.
//!
//! The protocol: each side sends 24 random bytes (its nonce), then every
//! byte it sends is XORed with the XSalsa20 keystream of the pre-shared
//! key and its own nonce. A peer without the key cannot produce a single
//! byte the other side decrypts into a valid noise handshake.
//!
//! `libp2p::pnet` implements this with RustCrypto's portable XSalsa20, one
//! 64-byte block at a time, which cost more CPU on payloads than noise's
//! ChaCha20-Poly1305 (see BENCHMARKS.md). This module speaks the same bytes
//! (tests check it against `libp2p::pnet` on a real socket and against
//! RustCrypto's keystream) and computes eight blocks at once with AVX2
//! where the CPU has it, through `pulp`'s safe wrappers, so no `unsafe` is
//! needed here. Other CPUs use the portable one-block code.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Length of each side's nonce.
pub const NONCE_SIZE: usize = 24;
/// The most encrypted bytes a stream holds for the socket at a time.
const WRITE_BUFFER: usize = 64 * 1024;
/// Bytes of keystream computed at a time: eight 64-byte blocks.
const BATCH: usize = 8 * 64;
/// "expand 32-byte k".
const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

/// The cluster's pre-shared key for the private network.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PreSharedKey([u8; 32]);

impl PreSharedKey {
    /// A key from its 32 bytes.
    pub fn new(key: [u8; 32]) -> Self {
        Self(key)
    }
}

impl fmt::Debug for PreSharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PreSharedKey(..)")
    }
}

/// The XSalsa20 stream cipher (20 rounds, 24-byte nonce, 64-bit block
/// counter starting at 0), as NaCl and RustCrypto's `salsa20::XSalsa20`
/// define it.
#[derive(Clone)]
pub struct XSalsa20 {
    /// Salsa20 input words for block 0 (key = HSalsa20 subkey).
    input: [u32; 16],
    /// The next block to compute.
    counter: u64,
    /// Keystream computed but not used yet: `batch[used..]`.
    batch: [u8; BATCH],
    used: usize,
    simd: Simd,
}

impl fmt::Debug for XSalsa20 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XSalsa20").finish_non_exhaustive()
    }
}

#[derive(Clone, Copy)]
enum Simd {
    #[cfg(target_arch = "x86_64")]
    Avx2(pulp::x86::V3),
    Portable,
}

impl Simd {
    /// What tests print about the path they ran.
    #[cfg(test)]
    fn name(self) -> &'static str {
        match self {
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2(_) => "AVX2 (8 blocks at a time)",
            Simd::Portable => "portable (one block at a time)",
        }
    }

    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(v3) = pulp::x86::V3::try_new() {
            return Simd::Avx2(v3);
        }
        Simd::Portable
    }
}

fn words<const N: usize>(bytes: &[u8]) -> [u32; N] {
    std::array::from_fn(|i| {
        let mut w = [0u8; 4];
        w.copy_from_slice(&bytes[i * 4..i * 4 + 4]);
        u32::from_le_bytes(w)
    })
}

/// Salsa20's 20 rounds (10 double rounds) on one block's words.
fn rounds(x: &mut [u32; 16]) {
    fn qr(x: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize) {
        x[b] ^= x[a].wrapping_add(x[d]).rotate_left(7);
        x[c] ^= x[b].wrapping_add(x[a]).rotate_left(9);
        x[d] ^= x[c].wrapping_add(x[b]).rotate_left(13);
        x[a] ^= x[d].wrapping_add(x[c]).rotate_left(18);
    }
    for _ in 0..10 {
        qr(x, 0, 4, 8, 12);
        qr(x, 5, 9, 13, 1);
        qr(x, 10, 14, 2, 6);
        qr(x, 15, 3, 7, 11);
        qr(x, 0, 1, 2, 3);
        qr(x, 5, 6, 7, 4);
        qr(x, 10, 11, 8, 9);
        qr(x, 15, 12, 13, 14);
    }
}

/// Salsa20 input words: constants, key, 8-byte nonce, block counter.
fn salsa_input(key: &[u32; 8], nonce: [u32; 2], counter: u64) -> [u32; 16] {
    [
        SIGMA[0],
        key[0],
        key[1],
        key[2],
        key[3],
        SIGMA[1],
        nonce[0],
        nonce[1],
        counter as u32,
        (counter >> 32) as u32,
        SIGMA[2],
        key[4],
        key[5],
        key[6],
        key[7],
        SIGMA[3],
    ]
}

/// Eight blocks from `input` (its counter words say where), one at a time.
fn batch_portable(input: &[u32; 16], out: &mut [u8; BATCH]) {
    let start = u64::from(input[8]) | (u64::from(input[9]) << 32);
    for (b, block) in out.chunks_exact_mut(64).enumerate() {
        let mut init = *input;
        let c = start.wrapping_add(b as u64);
        init[8] = c as u32;
        init[9] = (c >> 32) as u32;
        let mut x = init;
        rounds(&mut x);
        for (i, w) in block.chunks_exact_mut(4).enumerate() {
            w.copy_from_slice(&x[i].wrapping_add(init[i]).to_le_bytes());
        }
    }
}

/// Eight blocks at once: each AVX2 register holds one state word of all
/// eight blocks.
#[cfg(target_arch = "x86_64")]
fn batch_avx2(simd: pulp::x86::V3, input: &[u32; 16], out: &mut [u8; BATCH]) {
    use std::arch::x86_64::__m256i;
    simd.vectorize(
        #[inline(always)]
        || {
            let (avx, avx2) = (simd.avx, simd.avx2);
            let start = u64::from(input[8]) | (u64::from(input[9]) << 32);
            let ctr: [u64; 8] = std::array::from_fn(|l| start.wrapping_add(l as u64));
            let lo: [u32; 8] = std::array::from_fn(|l| ctr[l] as u32);
            let hi: [u32; 8] = std::array::from_fn(|l| (ctr[l] >> 32) as u32);
            let mut init: [__m256i; 16] =
                std::array::from_fn(|i| avx._mm256_set1_epi32(input[i] as i32));
            init[8] = pulp::bytemuck::cast(lo);
            init[9] = pulp::bytemuck::cast(hi);
            let mut x = init;
            macro_rules! step {
                ($t:expr, $u:expr, $v:expr, $r:literal) => {{
                    let s = avx2._mm256_add_epi32(x[$u], x[$v]);
                    let rot = avx2._mm256_or_si256(
                        avx2._mm256_slli_epi32::<$r>(s),
                        avx2._mm256_srli_epi32::<{ 32 - $r }>(s),
                    );
                    x[$t] = avx2._mm256_xor_si256(x[$t], rot);
                }};
            }
            macro_rules! qr {
                ($a:expr, $b:expr, $c:expr, $d:expr) => {
                    step!($b, $a, $d, 7);
                    step!($c, $b, $a, 9);
                    step!($d, $c, $b, 13);
                    step!($a, $d, $c, 18);
                };
            }
            for _ in 0..10 {
                qr!(0, 4, 8, 12);
                qr!(5, 9, 13, 1);
                qr!(10, 14, 2, 6);
                qr!(15, 3, 7, 11);
                qr!(0, 1, 2, 3);
                qr!(5, 6, 7, 4);
                qr!(10, 11, 8, 9);
                qr!(15, 12, 13, 14);
            }
            for i in 0..16 {
                let w: [u32; 8] = pulp::bytemuck::cast(avx2._mm256_add_epi32(x[i], init[i]));
                for (l, v) in w.iter().enumerate() {
                    out[l * 64 + i * 4..l * 64 + i * 4 + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
        },
    )
}

impl XSalsa20 {
    /// The cipher for `key` and `nonce`, using AVX2 where available.
    pub fn new(key: &[u8; 32], nonce: &[u8; NONCE_SIZE]) -> Self {
        Self::with_simd(key, nonce, Simd::detect())
    }

    fn with_simd(key: &[u8; 32], nonce: &[u8; NONCE_SIZE], simd: Simd) -> Self {
        // HSalsa20: the first 16 nonce bytes turn the key into a subkey.
        let key: [u32; 8] = words(key);
        let n: [u32; 6] = words(nonce);
        let mut x = salsa_input(
            &key,
            [n[0], n[1]],
            u64::from(n[2]) | (u64::from(n[3]) << 32),
        );
        rounds(&mut x);
        let sub = [x[0], x[5], x[10], x[15], x[6], x[7], x[8], x[9]];
        Self {
            input: salsa_input(&sub, [n[4], n[5]], 0),
            counter: 0,
            batch: [0; BATCH],
            used: BATCH,
            simd,
        }
    }

    /// The next eight blocks of keystream into `out`.
    fn next_batch(&mut self, out: &mut [u8; BATCH]) {
        let mut input = self.input;
        input[8] = self.counter as u32;
        input[9] = (self.counter >> 32) as u32;
        match self.simd {
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2(v3) => batch_avx2(v3, &input, out),
            Simd::Portable => batch_portable(&input, out),
        }
        self.counter = self.counter.wrapping_add(8);
    }

    /// Moves to byte `pos` of the keystream (RustCrypto's
    /// `StreamCipherSeek::seek`), so tests reach the block counter's carry
    /// into its high word, 256 GiB in.
    #[cfg(test)]
    fn seek(&mut self, pos: u64) {
        self.counter = pos / 64;
        self.used = BATCH;
        let skip = (pos % 64) as usize;
        if skip > 0 {
            let mut batch = [0u8; BATCH];
            self.next_batch(&mut batch);
            self.batch = batch;
            self.used = skip;
        }
    }

    /// XORs the next `data.len()` bytes of keystream into `data`.
    pub fn apply_keystream(&mut self, mut data: &mut [u8]) {
        // Left over from the last call.
        let n = data.len().min(BATCH - self.used);
        xor(&mut data[..n], &self.batch[self.used..self.used + n]);
        self.used += n;
        data = &mut data[n..];
        let mut ks = [0u8; BATCH];
        while data.len() >= BATCH {
            self.next_batch(&mut ks);
            let (head, rest) = data.split_at_mut(BATCH);
            xor(head, &ks);
            data = rest;
        }
        if !data.is_empty() {
            let mut batch = [0u8; BATCH];
            self.next_batch(&mut batch);
            self.batch = batch;
            xor(data, &self.batch[..data.len()]);
            self.used = data.len();
        }
    }
}

fn xor(data: &mut [u8], ks: &[u8]) {
    for (d, k) in data.iter_mut().zip(ks) {
        *d ^= k;
    }
}

/// Runs the private-network handshake on `socket`: sends a fresh random
/// nonce, reads the peer's. Everything after is encrypted.
pub async fn handshake<S>(mut socket: S, key: PreSharedKey) -> io::Result<PnetStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let local: [u8; NONCE_SIZE] = rand::random();
    socket.write_all(&local).await?;
    socket.flush().await?;
    let mut remote = [0u8; NONCE_SIZE];
    socket.read_exact(&mut remote).await?;
    Ok(PnetStream {
        inner: socket,
        read: XSalsa20::new(&key.0, &remote),
        write: XSalsa20::new(&key.0, &local),
        out: Vec::new(),
        sent: 0,
    })
}

/// A socket after [`handshake`]: reads decrypt, writes encrypt.
pub struct PnetStream<S> {
    inner: S,
    read: XSalsa20,
    write: XSalsa20,
    /// Encrypted bytes not yet taken by the socket: `out[sent..]`. Once
    /// encrypted, bytes must go out (the keystream has moved on).
    out: Vec<u8>,
    sent: usize,
}

impl<S> fmt::Debug for PnetStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PnetStream")
            .field("pending", &(self.out.len() - self.sent))
            .finish_non_exhaustive()
    }
}

impl<S: AsyncWrite + Unpin> PnetStream<S> {
    /// Hands the buffered encrypted bytes to the socket.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.out.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PnetStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.read.apply_keystream(&mut buf[..n]);
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PnetStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        let n = buf.len().min(WRITE_BUFFER);
        this.out.extend_from_slice(&buf[..n]);
        this.write.apply_keystream(&mut this.out);
        // The bytes are accepted: a socket that is not ready now gets them
        // on the next write or flush (its waker is registered).
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use salsa20::cipher::{KeyIvInit, StreamCipher};

    /// RustCrypto's XSalsa20 (what `libp2p::pnet` uses) on the same input.
    fn reference(key: &[u8; 32], nonce: &[u8; 24], data: &mut [u8]) {
        salsa20::XSalsa20::new(key.into(), nonce.into()).apply_keystream(data);
    }

    /// The portable path and, where the CPU has it, the AVX2 one; says
    /// on stderr which run (`cargo test -- --nocapture` shows it).
    fn both_paths() -> Vec<Simd> {
        let mut v = vec![Simd::Portable];
        let detected = Simd::detect();
        if !matches!(detected, Simd::Portable) {
            v.push(detected);
        } else {
            eprintln!("pnet: this CPU has no AVX2: only the portable path runs");
        }
        v
    }

    /// Hex to bytes, for the vectors below.
    fn unhex(s: &str) -> Vec<u8> {
        crate::hex::decode(s).unwrap()
    }

    /// libsodium's XSalsa20 test, `test/default/stream.c` with its expected
    /// output `test/default/stream.exp` (the key and nonce are NaCl's
    /// `firstkey` and `nonce` from "Cryptography in NaCl", also in NaCl's
    /// `tests/stream.c`).
    const KAT_KEY: &str = "1b27556473e985d462cd51197a9a46c76009549eac6474f206c4ee0844f68389";
    const KAT_NONCE: &str = "69696ee955b62b73cd62bda875fc73d68219e0036b7a0b37";
    /// SHA-256 of the first 4,194,304 bytes of keystream (stream.exp line 1).
    const KAT_SHA256_4MIB: &str =
        "662b9d0e3463029156069b12f918691a98f7dfb2ca0393c96bbfc6b1fbd630a2";
    /// The last of stream.exp's 64 prefix lines: 64 bytes set to 63
    /// (`0x3f`), the first 63 of them overwritten by keystream.
    const KAT_FIRST_63: &str = "eea6a7251c1e72916d11c2cb214d3c252539121d8e234e652d651fa4c8cff880309e645a74e9e0a60d8243acd9177ab51a1beb8d5a2f5d700c093c5e5585573f";
    /// Keystream blocks 2^32 - 1, 2^32 and 2^32 + 1 (192 bytes):
    /// `crypto_stream_xsalsa20_xor_ic(.., 192, nonce, (1ULL << 32) - 1, firstkey)`
    /// on zeros, the last line of stream.exp. The block counter carries
    /// into its high word after the first of them.
    const KAT_AT_2_32_MINUS_1: &str = "b46af0bf761b78533e01a0dd7e07216c9710ef35f09a28d1e5fa469b602472ca5085f6dbcc6a6b51fb89986f8feca85658d05701f5677d0bb340a1f2c769547219f5420c62ffff7d1304dad82b6dec2bdc59ec12a9e18a774eed128c2c90610a9d4c75c0817d64817a76bbc12746971ae897af210a072c1bc9fb044e086b7bfe85fad95d5c2bbb28c12de5755b1ccde63e93cc892b4d2bcbd7dc0706b094c2492e329e3b9a98a9cbc7d01031cf1d5861f576e1291df6286c28146b0b4df9ad44";

    fn kat_cipher(simd: Simd) -> XSalsa20 {
        let key: [u8; 32] = unhex(KAT_KEY).try_into().unwrap();
        let nonce: [u8; 24] = unhex(KAT_NONCE).try_into().unwrap();
        XSalsa20::with_simd(&key, &nonce, simd)
    }

    #[test]
    fn the_keystream_matches_libsodiums_published_vectors() {
        use sha2::Digest;
        for simd in both_paths() {
            eprintln!("pnet known-answer test: {} path", simd.name());
            // `crypto_stream` writes the keystream itself: XOR it into zeros.
            let mut first = [0u8; 64];
            kat_cipher(simd).apply_keystream(&mut first[..63]);
            first[63] = 63;
            assert_eq!(first.to_vec(), unhex(KAT_FIRST_63), "{}", simd.name());

            let mut four_mib = vec![0u8; 4_194_304];
            let mut c = kat_cipher(simd);
            // Uneven pieces: partial batches and batch boundaries.
            for piece in four_mib.chunks_mut(4_097) {
                c.apply_keystream(piece);
            }
            let digest = sha2::Sha256::digest(&four_mib);
            assert_eq!(
                crate::hex::encode(&digest),
                KAT_SHA256_4MIB,
                "{}",
                simd.name()
            );

            let mut carry = [0u8; 192];
            let mut c = kat_cipher(simd);
            c.seek(((1u64 << 32) - 1) * 64);
            c.apply_keystream(&mut carry);
            assert_eq!(
                carry.to_vec(),
                unhex(KAT_AT_2_32_MINUS_1),
                "{}",
                simd.name()
            );
        }
    }

    #[test]
    fn the_block_counter_carries_into_its_high_word_like_rustcrypto() {
        use salsa20::cipher::StreamCipherSeek;
        let key = [0x5au8; 32];
        let nonce: [u8; 24] = std::array::from_fn(|i| i as u8 * 11);
        for simd in both_paths() {
            eprintln!("pnet 2^32 block-counter carry: {} path", simd.name());
            // Start 0..=9 blocks before the carry, on and off block
            // boundaries, so the carry falls on every lane of a batch and
            // on a batch boundary; ~2 kB each in uneven pieces.
            for blocks_before in 0..=9u64 {
                for offset in [0u64, 1, 63] {
                    let pos = ((1u64 << 32) - blocks_before) * 64 + offset;
                    let mut want = vec![0u8; 2_000];
                    let mut reference = salsa20::XSalsa20::new(&key.into(), &nonce.into());
                    reference.seek(pos);
                    reference.apply_keystream(&mut want);
                    let mut got = vec![0u8; 2_000];
                    let mut c = XSalsa20::with_simd(&key, &nonce, simd);
                    c.seek(pos);
                    let mut at = 0;
                    for step in [1usize, 62, 513, 64, 700, 3].iter().cycle() {
                        if at == got.len() {
                            break;
                        }
                        let end = (at + step).min(got.len());
                        c.apply_keystream(&mut got[at..end]);
                        at = end;
                    }
                    assert!(
                        got == want,
                        "{}: keystream differs from RustCrypto's at byte {pos} (block 2^32 - {blocks_before}, offset {offset})",
                        simd.name()
                    );
                }
            }
        }
    }

    #[test]
    fn the_avx2_and_portable_paths_give_the_same_bytes() {
        let detected = Simd::detect();
        if matches!(detected, Simd::Portable) {
            eprintln!(
                "pnet: this CPU has no AVX2; the AVX2 path was NOT compared (only {} exists here)",
                Simd::Portable.name()
            );
            return;
        }
        eprintln!(
            "pnet: comparing the {} path with the {} path",
            detected.name(),
            Simd::Portable.name()
        );
        for seed in 0..16u64 {
            let key: [u8; 32] = std::array::from_fn(|i| (seed * 29 + i as u64 * 5) as u8);
            let nonce: [u8; 24] = std::array::from_fn(|i| (seed * 17 + i as u64) as u8);
            // From the start, around the carry into the high counter word,
            // and far into the stream (block 2^58 - 41).
            for pos in [0, ((1u64 << 32) - 5) * 64 + 7, (u64::MAX / 64 - 40) * 64] {
                let mut a = vec![0u8; 1_500 + seed as usize * 37];
                let mut b = a.clone();
                let mut fast = XSalsa20::with_simd(&key, &nonce, detected);
                let mut portable = XSalsa20::with_simd(&key, &nonce, Simd::Portable);
                fast.seek(pos);
                portable.seek(pos);
                fast.apply_keystream(&mut a);
                portable.apply_keystream(&mut b);
                assert!(a == b, "the paths differ (seed {seed}, byte {pos})");
            }
        }
    }

    #[test]
    fn the_keystream_matches_rustcrypto_for_any_split_of_the_data() {
        for simd in both_paths() {
            for seed in 0..20u64 {
                let key: [u8; 32] = std::array::from_fn(|i| (seed * 31 + i as u64 * 7) as u8);
                let nonce: [u8; 24] = std::array::from_fn(|i| (seed * 13 + i as u64 * 3) as u8);
                let len = 3000 + seed as usize * 97;
                let plain: Vec<u8> = (0..len).map(|i| (i * 5 + seed as usize) as u8).collect();
                let mut want = plain.clone();
                reference(&key, &nonce, &mut want);
                let mut got = plain.clone();
                let mut c = XSalsa20::with_simd(&key, &nonce, simd);
                // Pieces of 0..=600 bytes: partial batches, whole batches,
                // empty calls, and calls crossing batch boundaries.
                let mut at = 0;
                let mut step = seed as usize;
                while at < len {
                    step = (step * 7 + 13) % 601;
                    let end = (at + step).min(len);
                    c.apply_keystream(&mut got[at..end]);
                    at = end;
                }
                assert_eq!(got, want, "seed {seed}");
            }
        }
    }

    #[test]
    fn the_keystream_is_right_far_into_the_stream() {
        // Several thousand batches in, one piece after another (the carry
        // into the counter's high word, 2^32 blocks in, is tested with
        // `seek` above).
        let key = [9u8; 32];
        let nonce = [4u8; 24];
        let mut want = vec![0u8; 5 << 20];
        reference(&key, &nonce, &mut want);
        for simd in both_paths() {
            let mut got = vec![0u8; 5 << 20];
            let mut c = XSalsa20::with_simd(&key, &nonce, simd);
            for piece in got.chunks_mut(65_535) {
                c.apply_keystream(piece);
            }
            assert!(got == want, "keystream differs after {} bytes", 5 << 20);
        }
    }

    /// A real socket on 127.0.0.1 as a blocking futures stream.
    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn speaks_the_same_bytes_as_libp2p_pnet_both_ways() {
        use futures::executor::block_on;
        use futures::io::AllowStdIo;
        let key = [42u8; 32];
        let (a, b) = pair();
        let size = 1 << 20;
        let theirs = std::thread::spawn(move || {
            block_on(async move {
                let cfg = libp2p::pnet::PnetConfig::new(libp2p::pnet::PreSharedKey::new(key));
                let mut s = cfg.handshake(AllowStdIo::new(b)).await.unwrap();
                let mut got = vec![0u8; size];
                s.read_exact(&mut got).await.unwrap();
                // Answer with the bytes reversed, in uneven writes.
                got.reverse();
                for piece in got.chunks(70_001) {
                    s.write_all(piece).await.unwrap();
                }
                s.flush().await.unwrap();
                got
            })
        });
        let sent: Vec<u8> = (0..size).map(|i| (i * 7 + i / 251) as u8).collect();
        let back = block_on(async {
            let mut s = handshake(AllowStdIo::new(a), PreSharedKey::new(key))
                .await
                .unwrap();
            for piece in sent.chunks(4_097) {
                s.write_all(piece).await.unwrap();
            }
            s.flush().await.unwrap();
            let mut back = vec![0u8; size];
            s.read_exact(&mut back).await.unwrap();
            back
        });
        let mut reversed = theirs.join().unwrap();
        reversed.reverse();
        assert!(
            reversed == sent,
            "libp2p::pnet read other bytes than were sent"
        );
        let mut want = sent.clone();
        want.reverse();
        assert!(
            back == want,
            "libp2p::pnet's answer decrypted to other bytes"
        );
    }

    #[test]
    fn a_peer_with_another_key_reads_noise() {
        use futures::executor::block_on;
        use futures::io::AllowStdIo;
        let (a, b) = pair();
        let theirs = std::thread::spawn(move || {
            block_on(async move {
                let cfg = libp2p::pnet::PnetConfig::new(libp2p::pnet::PreSharedKey::new([2u8; 32]));
                let mut s = cfg.handshake(AllowStdIo::new(b)).await.unwrap();
                let mut got = vec![0u8; 4096];
                s.read_exact(&mut got).await.unwrap();
                got
            })
        });
        let sent = vec![0u8; 4096];
        block_on(async {
            let mut s = handshake(AllowStdIo::new(a), PreSharedKey::new([1u8; 32]))
                .await
                .unwrap();
            s.write_all(&sent).await.unwrap();
            s.flush().await.unwrap();
        });
        let got = theirs.join().unwrap();
        let zeros = got.iter().filter(|b| **b == 0).count();
        assert!(
            zeros < 100,
            "{zeros} of 4096 bytes came through in the clear"
        );
    }
}
