//! Lower-case hex, as secret files and gossiped signatures store bytes.

/// `bytes` as lower-case hex.
pub(crate) fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// The bytes `text` spells in hex (either case). The error is the byte
/// offset of the first pair that is not two hex digits (an odd length
/// fails at the last, lone digit).
pub(crate) fn decode(text: &str) -> Result<Vec<u8>, usize> {
    let digit = |c: u8| char::from(c).to_digit(16);
    text.as_bytes()
        .chunks(2)
        .enumerate()
        .map(|(i, pair)| match pair {
            // Both digits are below 16, so the byte cannot overflow.
            [hi, lo] => match (digit(*hi), digit(*lo)) {
                (Some(h), Some(l)) => Ok((h * 16 + l) as u8),
                _ => Err(2 * i),
            },
            _ => Err(2 * i),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_the_first_bad_pair() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&all)), Ok(all));
        assert_eq!(encode(&[0, 255, 16]), "00ff10");
        assert_eq!(decode("00FF10"), Ok(vec![0, 255, 16]));
        assert_eq!(decode(""), Ok(vec![]));
        assert_eq!(decode("0"), Err(0));
        assert_eq!(decode("000"), Err(2));
        assert_eq!(decode("000g00"), Err(2));
        assert_eq!(decode("+1"), Err(0), "a sign is not a digit");
        assert_eq!(decode("aé"), Err(0), "non-ASCII is not a digit");
    }
}
