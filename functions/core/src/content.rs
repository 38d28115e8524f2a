//! Accepted image types and recognising them by their first bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The image types a job may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ContentType {
    #[serde(rename = "image/jpeg")]
    Jpeg,
    #[serde(rename = "image/png")]
    Png,
    #[serde(rename = "image/webp")]
    Webp,
    #[serde(rename = "image/tiff")]
    Tiff,
    /// A PDF document: each page is rendered and read (`MAX_PAGES` at most).
    #[serde(rename = "application/pdf")]
    Pdf,
}

impl ContentType {
    pub const ALL: [ContentType; 5] = [Self::Jpeg, Self::Png, Self::Webp, Self::Tiff, Self::Pdf];

    /// Bytes needed by [`ContentType::sniff`].
    pub const SNIFF_LEN: usize = 16;

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::Webp => "image/webp",
            Self::Tiff => "image/tiff",
            Self::Pdf => "application/pdf",
        }
    }

    /// The type the leading bytes of a file show, if it is one we accept.
    pub fn sniff(head: &[u8]) -> Option<ContentType> {
        if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Self::Jpeg)
        } else if head.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Self::Png)
        } else if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
            Some(Self::Webp)
        } else if head.starts_with(b"II*\0") || head.starts_with(b"MM\0*") {
            Some(Self::Tiff)
        } else if head.starts_with(b"%PDF-") {
            Some(Self::Pdf)
        } else {
            None
        }
    }
}

impl fmt::Display for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ContentType {
    type Err = String;

    /// Parses a media type, ignoring parameters and case (`image/JPEG; q=1`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let essence = s.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match essence.as_str() {
            "image/jpeg" | "image/jpg" => Ok(Self::Jpeg),
            "image/png" => Ok(Self::Png),
            "image/webp" => Ok(Self::Webp),
            "image/tiff" => Ok(Self::Tiff),
            "application/pdf" => Ok(Self::Pdf),
            _ => Err(format!(
                "unsupported content type {s:?}: expected one of image/jpeg, image/png, image/webp, image/tiff, application/pdf"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_each_type() {
        assert_eq!(ContentType::sniff(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0]), Some(ContentType::Jpeg));
        assert_eq!(ContentType::sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), Some(ContentType::Png));
        assert_eq!(ContentType::sniff(b"RIFF\x10\0\0\0WEBPVP8 "), Some(ContentType::Webp));
        assert_eq!(ContentType::sniff(b"II*\0\x08\0\0\0"), Some(ContentType::Tiff));
        assert_eq!(ContentType::sniff(b"MM\0*\0\0\0\x08"), Some(ContentType::Tiff));
        assert_eq!(ContentType::sniff(b"%PDF-1.7\n%\xe2\xe3"), Some(ContentType::Pdf));
        assert_eq!(ContentType::sniff(b"hello, this is text"), None);
        assert_eq!(ContentType::sniff(b""), None);
        assert_eq!(ContentType::sniff(b"RIFF\0\0\0\0WAVE"), None);
    }

    #[test]
    fn parses_media_types() {
        assert_eq!("image/JPEG; charset=x".parse::<ContentType>(), Ok(ContentType::Jpeg));
        assert_eq!("image/png".parse::<ContentType>(), Ok(ContentType::Png));
        assert!("image/gif".parse::<ContentType>().is_err());
        assert!("text/plain".parse::<ContentType>().is_err());
        for t in ContentType::ALL {
            assert_eq!(t.as_str().parse::<ContentType>(), Ok(t));
        }
    }
}

/// Why a file's bytes don't make a complete image of its type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("the file is empty")]
    Empty,
    #[error("the file is not an image of an accepted type (JPEG, PNG, WebP, TIFF) or a PDF")]
    NotAnImage,
    #[error("the file is {found}, but {declared} was declared")]
    WrongType { declared: ContentType, found: ContentType },
    #[error("the {0} file is truncated")]
    Truncated(ContentType),
}

/// Bytes of the file's end that [`check_shape`] looks at.
pub const TAIL_LEN: usize = 1024;

/// Checks what can be checked without decoding: the type the leading bytes show
/// against the declared one, and for PNG and WebP that the file is whole (PNG ends
/// with its IEND chunk, WebP's RIFF length matches the size). JPEG and TIFF are
/// left to the decoder: phones append trailers after a JPEG's end marker.
pub fn check_shape(declared: ContentType, size: u64, head: &[u8], tail: &[u8]) -> Result<(), ShapeError> {
    if size == 0 {
        return Err(ShapeError::Empty);
    }
    let found = ContentType::sniff(head).ok_or(ShapeError::NotAnImage)?;
    if found != declared {
        return Err(ShapeError::WrongType { declared, found });
    }
    match found {
        ContentType::Png => {
            const IEND: &[u8] = b"IEND\xAE\x42\x60\x82";
            if !tail.ends_with(IEND) {
                return Err(ShapeError::Truncated(found));
            }
        }
        ContentType::Webp => {
            let riff_len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as u64;
            // RIFF pads odd-sized payloads to even length.
            if riff_len + 8 != size && riff_len + 9 != size {
                return Err(ShapeError::Truncated(found));
            }
        }
        ContentType::Pdf => {
            // Every PDF ends with an end-of-file marker (readers allow junk after it, so look
            // through the whole tail read).
            if !tail.windows(5).any(|w| w == b"%%EOF") {
                return Err(ShapeError::Truncated(found));
            }
            // Encryption and pages are the structure's business: `crate::pdf` reads them.
        }
        ContentType::Jpeg | ContentType::Tiff => {}
    }
    Ok(())
}

#[cfg(test)]
mod shape_tests {
    use super::*;

    fn png(complete: bool) -> Vec<u8> {
        let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        v.extend_from_slice(&[0; 40]);
        if complete {
            v.extend_from_slice(b"\0\0\0\0IEND\xAE\x42\x60\x82");
        }
        v
    }

    fn check(declared: ContentType, bytes: &[u8]) -> Result<(), ShapeError> {
        let tail = &bytes[bytes.len().saturating_sub(TAIL_LEN)..];
        check_shape(declared, bytes.len() as u64, &bytes[..bytes.len().min(ContentType::SNIFF_LEN)], tail)
    }

    #[test]
    fn accepts_whole_files_and_refuses_others() {
        assert_eq!(check(ContentType::Png, &png(true)), Ok(()));
        assert_eq!(check(ContentType::Png, &png(false)), Err(ShapeError::Truncated(ContentType::Png)));
        assert_eq!(
            check(ContentType::Jpeg, &png(true)),
            Err(ShapeError::WrongType { declared: ContentType::Jpeg, found: ContentType::Png })
        );
        assert_eq!(check(ContentType::Jpeg, b"just some text, not a jpeg"), Err(ShapeError::NotAnImage));
        assert_eq!(check_shape(ContentType::Jpeg, 0, b"", b""), Err(ShapeError::Empty));
        let mut webp = b"RIFF\x0c\0\0\0WEBPVP8 ".to_vec();
        webp.extend_from_slice(&[0; 4]);
        assert_eq!(check(ContentType::Webp, &webp), Ok(()));
        assert_eq!(check(ContentType::Webp, &webp[..18]), Err(ShapeError::Truncated(ContentType::Webp)));
        // A PDF ends with %%EOF, perhaps followed by a little junk; a cut one does not.
        let pdf = b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\r\n".to_vec();
        assert_eq!(check(ContentType::Pdf, &pdf), Ok(()));
        let mut junk = pdf.clone();
        junk.extend_from_slice(&[b' '; 500]);
        assert_eq!(check(ContentType::Pdf, &junk), Ok(()));
        assert_eq!(check(ContentType::Pdf, &pdf[..pdf.len() - 8]), Err(ShapeError::Truncated(ContentType::Pdf)));
        assert_eq!(
            check(ContentType::Png, &pdf),
            Err(ShapeError::WrongType { declared: ContentType::Png, found: ContentType::Pdf })
        );
    }
}
