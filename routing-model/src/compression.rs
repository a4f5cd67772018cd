//! gzip for snapshot messages (the [`CAP_GZIP`](crate::protocol::CAP_GZIP) capability).
//!
//! Pushing a snapshot to N data planes costs N times its bytes, and at fleet scale those bytes,
//! not encoding, set how long convergence takes (BENCHMARKS.md, row 1). gzip at its fastest level
//! shrinks a snapshot about 6.7x for about 1 ms per 10k customers, paid once per version on the
//! control plane. Decompression is bounded, so a small message cannot expand without limit.

use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

/// Why a compressed message was refused.
#[derive(Debug, thiserror::Error)]
pub enum GunzipError {
    /// It expands past the message-size limit.
    #[error(
        "the compressed message expands past {limit} bytes (raise --max-message-bytes if this snapshot is legitimate)"
    )]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// It is not gzip, or is truncated.
    #[error("the compressed message is not valid gzip: {0}")]
    Corrupt(std::io::Error),
    /// It decompresses to something that is not UTF-8 text.
    #[error("the decompressed message is not UTF-8 text: {0}")]
    NotText(std::string::FromUtf8Error),
}

/// `text` compressed at gzip's fastest level.
pub fn gzip(text: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(text.len() / 4), Compression::fast());
    // Writing into a Vec cannot fail.
    encoder.write_all(text).expect("writing to a Vec");
    encoder.finish().expect("writing to a Vec")
}

/// The text inside `bytes`, refusing more than `limit` decompressed bytes.
pub fn gunzip(bytes: &[u8], limit: usize) -> Result<String, GunzipError> {
    let mut text = Vec::with_capacity(bytes.len().saturating_mul(8).min(limit));
    GzDecoder::new(bytes)
        .take(limit as u64 + 1)
        .read_to_end(&mut text)
        .map_err(GunzipError::Corrupt)?;
    if text.len() > limit {
        return Err(GunzipError::TooLarge { limit });
    }
    String::from_utf8(text).map_err(GunzipError::NotText)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let text = r#"{"type":"snapshot","spec":{"customerToPlacement":{"acme":"tier1"}}}"#.repeat(50);
        let packed = gzip(text.as_bytes());
        assert!(
            packed.len() < text.len() / 4,
            "{} of {}",
            packed.len(),
            text.len()
        );
        assert_eq!(gunzip(&packed, text.len()).unwrap(), text);
    }

    #[test]
    fn refuses_to_expand_past_the_limit() {
        let bomb = gzip(&vec![b'a'; 1 << 20]);
        assert!(bomb.len() * 100 < 1 << 20, "{} bytes", bomb.len());
        let err = gunzip(&bomb, (1 << 20) - 1).unwrap_err();
        assert!(
            matches!(err, GunzipError::TooLarge { limit } if limit == (1 << 20) - 1),
            "{err}"
        );
        assert!(err.to_string().contains("--max-message-bytes"));
    }

    #[test]
    fn names_garbage_and_truncation() {
        assert!(matches!(
            gunzip(b"not gzip at all", 100),
            Err(GunzipError::Corrupt(_))
        ));
        let packed = gzip(b"some text that is long enough to be cut somewhere in the middle");
        assert!(matches!(
            gunzip(&packed[..packed.len() / 2], 1000),
            Err(GunzipError::Corrupt(_))
        ));
    }

    #[test]
    fn refuses_binary_content() {
        let packed = gzip(&[0xff, 0xfe, 0x00]);
        assert!(matches!(gunzip(&packed, 100), Err(GunzipError::NotText(_))));
    }
}
