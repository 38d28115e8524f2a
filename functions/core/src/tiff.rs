//! The pages of a multi-page TIFF, read from its structure without decoding: where each page's
//! directory starts, its size, and the file re-pointed at one page (decoders read the first
//! directory only, so the header is pointed at the page wanted). Shared by the worker, which
//! reads every page, and the API, which puts every page under a searchable PDF's text.

/// Why a TIFF's pages cannot be listed. Retrying never helps.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TiffError {
    #[error("TIFF: {0}")]
    Damaged(&'static str),
    #[error("the document has more than {limit} pages")]
    TooManyPages { limit: usize },
}

/// A TIFF's page directories, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TiffPages {
    kind: Kind,
    offsets: Vec<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kind {
    little: bool,
    big: bool,
}

impl TiffPages {
    /// The pages of `bytes` if it is a TIFF (`None` for anything else). A chain longer than
    /// `max_pages` is refused without walking it further, and so is a chain that loops (a page
    /// bomb: 4 bytes can point back at the first page for ever).
    pub fn read(bytes: &[u8], max_pages: usize) -> Result<Option<TiffPages>, TiffError> {
        let kind = match bytes.get(..4) {
            Some(b"II*\0") => Kind { little: true, big: false },
            Some(b"MM\0*") => Kind { little: false, big: false },
            Some(b"II+\0") => Kind { little: true, big: true },
            Some(b"MM\0+") => Kind { little: false, big: true },
            _ => return Ok(None),
        };
        let bad = TiffError::Damaged;
        let mut offsets = Vec::new();
        let mut next = kind.read(bytes, if kind.big { 8 } else { 4 }).ok_or(bad("header cut short"))?;
        while next != 0 {
            if offsets.contains(&next) {
                return Err(bad("its pages loop back on themselves"));
            }
            if offsets.len() == max_pages {
                return Err(TiffError::TooManyPages { limit: max_pages });
            }
            offsets.push(next);
            let at = usize::try_from(next).map_err(|_| bad("page offset out of range"))?;
            let (count, entry, count_len) = if kind.big {
                (kind.read(bytes, at).ok_or(bad("page directory out of the file"))?, 20, 8)
            } else {
                (kind.uint(bytes, at, 2).ok_or(bad("page directory out of the file"))?, 12, 2)
            };
            let link = usize::try_from(count)
                .ok()
                .and_then(|c| c.checked_mul(entry))
                .and_then(|n| n.checked_add(at + count_len));
            next = link.and_then(|l| kind.read(bytes, l)).ok_or(bad("page directory cut short"))?;
        }
        if offsets.is_empty() {
            return Err(bad("no pages"));
        }
        Ok(Some(TiffPages { kind, offsets }))
    }

    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Width and height (tags 256 and 257) of page `i` (from 0), read in place: the cost of a
    /// page without copying the file for it. `None` when either is missing or odd.
    pub fn page_size(&self, bytes: &[u8], i: usize) -> Option<(u32, u32)> {
        let k = self.kind;
        let at = usize::try_from(*self.offsets.get(i)?).ok()?;
        let (count, first, entry, value) =
            if k.big { (k.uint(bytes, at, 8)?, 8, 20, 12) } else { (k.uint(bytes, at, 2)?, 2, 12, 8) };
        let (mut width, mut height) = (None, None);
        for n in 0..usize::try_from(count).ok()?.min(4096) {
            let e = at + first + n * entry;
            let v = match k.uint(bytes, e + 2, 2)? {
                3 => k.uint(bytes, e + value, 2)?,  // SHORT
                4 => k.uint(bytes, e + value, 4)?,  // LONG
                16 => k.uint(bytes, e + value, 8)?, // LONG8 (BigTIFF)
                _ => continue,
            };
            match k.uint(bytes, e, 2)? {
                256 => width = u32::try_from(v).ok(),
                257 => height = u32::try_from(v).ok(),
                _ => {}
            }
        }
        Some((width?, height?))
    }

    /// The file with its header pointing at page `i`'s directory: what a decoder reads as that
    /// page alone. Copies the file.
    pub fn page(&self, bytes: &[u8], i: usize) -> Vec<u8> {
        let offset = self.offsets[i];
        let mut b = bytes.to_vec();
        let k = self.kind;
        if k.big {
            let v = if k.little { offset.to_le_bytes() } else { offset.to_be_bytes() };
            b[8..16].copy_from_slice(&v);
        } else {
            // The chain was read from 4-byte offsets, so it fits.
            let o = offset as u32;
            let v = if k.little { o.to_le_bytes() } else { o.to_be_bytes() };
            b[4..8].copy_from_slice(&v);
        }
        b
    }
}

impl Kind {
    /// An offset: 4 bytes in a classic TIFF, 8 in a BigTIFF.
    fn read(self, b: &[u8], at: usize) -> Option<u64> {
        self.uint(b, at, if self.big { 8 } else { 4 })
    }

    /// An unsigned integer of `n` (2, 4 or 8) bytes.
    fn uint(self, b: &[u8], at: usize, n: usize) -> Option<u64> {
        let s = b.get(at..at.checked_add(n)?)?;
        let fold = |acc: u64, &x: &u8| (acc << 8) | u64::from(x);
        Some(if self.little { s.iter().rev().fold(0, fold) } else { s.iter().fold(0, fold) })
    }
}
