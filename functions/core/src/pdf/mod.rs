//! What the upload check needs from a PDF without rendering it: how many pages it declares and
//! whether it is encrypted.
//!
//! The on-upload function has no renderer (PDFium lives on the workers), and fetching a whole
//! 20 MB upload for two facts would be wasteful, so this reads a PDF the way a reader starts:
//! `startxref` at the end, the cross-reference sections it chains (tables and streams, hybrid
//! files, incremental updates), the trailers, then the catalog and the root of the page tree,
//! fetching only those byte ranges. A file whose structure does not hold together (offsets that
//! miss, a cut table) is read whole and scanned for its objects, as readers repair a broken
//! cross-reference table; only one that fails that too is called damaged.
//!
//! It is sans-IO: [`examine`] runs over the bytes known so far ([`Known`]) and either answers or
//! names the range it needs next; [`read_facts`] drives it with any async range reader. Every
//! limit (object size, inflated size, sections, reads, bytes fetched) is fixed, so a hostile
//! file costs a bounded amount of memory and reads and gets a reason.
//!
//! The page count is the one the page tree's root declares (`/Count`). A file that lies there is
//! still stopped by the worker, which counts the pages PDFium finds against `MAX_PAGES`.

mod overlay;
mod security;

pub use overlay::{LayerError, add_text_layer};

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::rc::Rc;

/// Default most pages of one document (`MAX_PAGES`): the upload check refuses a PDF that
/// declares more, the worker a document it finds longer.
pub const DEFAULT_MAX_PAGES: usize = 50;

/// What a PDF's structure says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PdfFacts {
    /// Pages the page tree's root declares.
    pub pages: u64,
}

/// Why a PDF cannot be read. Retrying never helps: the bytes are what they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PdfError {
    #[error("the PDF is encrypted (it needs a password)")]
    Encrypted,
    #[error("the PDF has no pages")]
    NoPages,
    #[error("the PDF is damaged or not a PDF ({0})")]
    Damaged(String),
}

/// Largest single object (a dictionary with its header) read.
const MAX_OBJECT: u64 = 1 << 20;
/// Largest cross-reference table read (20 bytes per object: about 400,000 objects).
const MAX_TABLE: u64 = 8 << 20;
/// Largest stream (cross-reference or object stream) read, and the most it may inflate to.
const MAX_STREAM: u64 = 8 << 20;
const MAX_INFLATED: usize = 32 << 20;
/// Cross-reference sections followed (incremental updates): more is a loop or a bomb.
const MAX_SECTIONS: usize = 64;
/// Nesting of arrays and dictionaries, and of references followed to resolve one value.
const MAX_DEPTH: usize = 32;
/// The first window read at an object's offset; doubled up to [`MAX_OBJECT`] as needed.
const FIRST_WINDOW: u64 = 4096;
/// Bytes lexed, scanned or inflated while reading one file, over all its reads: bounds the CPU
/// a hostile file costs (an unclosed string repeated 20 MB long would otherwise be lexed once
/// per candidate object by the repair scan).
const WORK_LIMIT: u64 = 64 << 20;
/// Files up to this size are fetched whole in one read.
pub const WHOLE_BELOW: u64 = 1 << 20;
/// Reads [`read_facts`] makes at most (a file needs 2–8).
pub const MAX_READS: usize = 24;
/// Each read fetches at least this much (fewer, larger reads).
const MIN_READ: u64 = 64 << 10;

/// The bytes of one file read so far: disjoint, sorted spans.
#[derive(Debug, Clone)]
pub struct Known {
    size: u64,
    spans: Vec<(u64, Vec<u8>)>,
}

impl Known {
    /// Nothing known yet of a file of `size` bytes.
    pub fn new(size: u64) -> Self {
        Known { size, spans: Vec::new() }
    }

    /// A file known whole.
    pub fn whole(bytes: &[u8]) -> Self {
        Known { size: bytes.len() as u64, spans: vec![(0, bytes.to_vec())] }
    }

    /// Adds bytes read at `offset` (anything past the file's end is dropped).
    pub fn insert(&mut self, offset: u64, bytes: &[u8]) {
        let end = (offset + bytes.len() as u64).min(self.size);
        if offset >= end {
            return;
        }
        let mut start = offset;
        let mut data = bytes[..(end - offset) as usize].to_vec();
        let mut kept = Vec::with_capacity(self.spans.len() + 1);
        for (s, d) in std::mem::take(&mut self.spans) {
            let e = s + d.len() as u64;
            if e < start || s > start + data.len() as u64 {
                kept.push((s, d));
                continue;
            }
            // Overlapping or touching: union them (the bytes agree; one version is read).
            let new_start = s.min(start);
            let new_end = e.max(start + data.len() as u64);
            let mut merged = vec![0u8; (new_end - new_start) as usize];
            merged[(s - new_start) as usize..(e - new_start) as usize].copy_from_slice(&d);
            let at = (start - new_start) as usize;
            merged[at..at + data.len()].copy_from_slice(&data);
            start = new_start;
            data = merged;
        }
        kept.push((start, data));
        kept.sort_by_key(|(s, _)| *s);
        self.spans = kept;
    }

    /// The bytes known contiguously from `offset` on (empty if none).
    pub fn from(&self, offset: u64) -> &[u8] {
        for (s, d) in &self.spans {
            let e = s + d.len() as u64;
            if *s <= offset && offset < e {
                return &d[(offset - s) as usize..];
            }
        }
        &[]
    }

    /// Where the first span known after `offset` starts.
    fn next_start(&self, offset: u64) -> Option<u64> {
        self.spans.iter().map(|(s, _)| *s).find(|s| *s > offset)
    }

    /// At least `want` bytes from `offset` (fewer only where the file ends), or the read needed.
    fn window(&self, offset: u64, want: u64) -> Result<&[u8], Halt> {
        if offset >= self.size {
            return Err(damaged("an offset points past the end of the file"));
        }
        let have = self.from(offset);
        if have.len() as u64 >= want || offset + have.len() as u64 >= self.size {
            Ok(have)
        } else {
            Err(Halt::Need { offset, len: want })
        }
    }
}

/// Why [`examine`] stopped without an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Halt {
    /// These bytes are needed to go on.
    Need { offset: u64, len: u64 },
    /// The answer is that the file cannot be read.
    Fail(PdfError),
}

fn damaged(why: &str) -> Halt {
    Halt::Fail(PdfError::Damaged(why.to_string()))
}

/// Reads a PDF's facts with `read(offset, len)`, a ranged read of the file; `tail` is the file's
/// last bytes, already read by the caller. `Err` is the reader's own error; `Ok(Err)` says why the
/// file is refused.
pub async fn read_facts<F, Fut, B, E>(size: u64, tail: &[u8], mut read: F) -> Result<Result<PdfFacts, PdfError>, E>
where
    F: FnMut(u64, usize) -> Fut,
    Fut: Future<Output = Result<B, E>>,
    B: AsRef<[u8]>,
{
    let mut known = Known::new(size);
    known.insert(size.saturating_sub(tail.len() as u64), tail);
    if size <= WHOLE_BELOW && known.from(0).len() as u64 != size {
        let bytes = read(0, size as usize).await?;
        known.insert(0, bytes.as_ref());
    }
    let mut fetched = 0u64;
    let work = Cell::new(0);
    for _ in 0..MAX_READS {
        match examine_within(&known, &work) {
            Ok(facts) => return Ok(Ok(facts)),
            Err(Halt::Fail(e)) => return Ok(Err(e)),
            Err(Halt::Need { offset, len }) => {
                // Fetch from the first byte not yet known: at least MIN_READ, but never what is
                // known already after it, nor past the file's end.
                let from = offset + known.from(offset).len() as u64;
                let to = (offset + len).max(from + MIN_READ).min(known.next_start(from).unwrap_or(size)).min(size);
                if from >= to || fetched + (to - from) > 2 * size + MIN_READ {
                    return Ok(Err(PdfError::Damaged("its structure could not be read".into())));
                }
                let bytes = read(from, (to - from) as usize).await?;
                if bytes.as_ref().is_empty() {
                    return Ok(Err(PdfError::Damaged("the file is shorter than its size".into())));
                }
                fetched += bytes.as_ref().len() as u64;
                known.insert(from, bytes.as_ref());
            }
        }
    }
    Ok(Err(PdfError::Damaged("its structure needs too many reads".into())))
}

/// [`read_facts`] over a file in memory.
pub fn facts(bytes: &[u8]) -> Result<PdfFacts, PdfError> {
    match examine(&Known::whole(bytes)) {
        Ok(f) => Ok(f),
        Err(Halt::Fail(e)) => Err(e),
        Err(Halt::Need { .. }) => Err(PdfError::Damaged("its structure could not be read".into())),
    }
}

/// The facts from what is known, or what is missing. Runs from scratch each time: cheap next to
/// a read.
pub fn examine(known: &Known) -> Result<PdfFacts, Halt> {
    examine_within(known, &Cell::new(0))
}

/// [`examine`], adding the work done to `work` and giving up past [`WORK_LIMIT`].
fn examine_within(known: &Known, work: &Cell<u64>) -> Result<PdfFacts, Halt> {
    match Doc::from_xref(known, work).and_then(|doc| doc.facts()) {
        Err(Halt::Fail(PdfError::Damaged(_))) => Doc::from_scan(known, work)?.facts(),
        other => other,
    }
}

// ------------------------------------------------------------------------------------ objects

#[derive(Debug, Clone, PartialEq)]
enum Obj {
    Null,
    Bool(bool),
    Int(i64),
    Real(f64),
    Name(Vec<u8>),
    /// As stored: an encrypted file's strings stay encrypted.
    Str(Vec<u8>),
    Array(Vec<Obj>),
    Dict(Dict),
    /// Object number and generation.
    Ref(u32, u16),
}

type Dict = Vec<(Vec<u8>, Obj)>;

fn get<'a>(d: &'a [(Vec<u8>, Obj)], key: &[u8]) -> Option<&'a Obj> {
    d.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn get_int(d: &Dict, key: &[u8]) -> Option<i64> {
    match get(d, key) {
        Some(Obj::Int(i)) => Some(*i),
        _ => None,
    }
}

fn is_name(o: Option<&Obj>, name: &[u8]) -> bool {
    matches!(o, Some(Obj::Name(n)) if n == name)
}

/// Why a parse stopped: the bytes ran out (more may help) or they are wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Syntax {
    Eof,
    Bad(&'static str),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok<'a> {
    Int(i64),
    Real(f64),
    Name(Vec<u8>),
    Str(Vec<u8>),
    DictOpen,
    DictClose,
    ArrOpen,
    ArrClose,
    Word(&'a [u8]),
}

fn is_space(c: u8) -> bool {
    matches!(c, b'\0' | b'\t' | b'\n' | b'\x0c' | b'\r' | b' ')
}

fn is_delim(c: u8) -> bool {
    matches!(c, b'(' | b')' | b'<' | b'>' | b'[' | b']' | b'{' | b'}' | b'/' | b'%')
}

fn is_regular(c: u8) -> bool {
    !is_space(c) && !is_delim(c)
}

struct Lexer<'a> {
    b: &'a [u8],
    pos: usize,
    /// `b` runs to the end of its data (the file's, or a decoded stream's): its end ends a
    /// token. Otherwise it is a window, and a token touching its end may go on past it.
    complete: bool,
}

impl<'a> Lexer<'a> {
    fn new(b: &'a [u8], pos: usize, complete: bool) -> Self {
        Lexer { b, pos, complete }
    }

    fn skip_space(&mut self) -> Result<(), Syntax> {
        loop {
            let &c = self.b.get(self.pos).ok_or(Syntax::Eof)?;
            if is_space(c) {
                self.pos += 1;
            } else if c == b'%' {
                while let Some(&c) = self.b.get(self.pos) {
                    if c == b'\r' || c == b'\n' {
                        break;
                    }
                    self.pos += 1;
                }
            } else {
                return Ok(());
            }
        }
    }

    /// The run of regular characters from `pos`; running into the window's end is `Eof`, as the
    /// token may go on past it.
    fn regular_run(&mut self) -> Result<&'a [u8], Syntax> {
        let start = self.pos;
        while let Some(&c) = self.b.get(self.pos) {
            if !is_regular(c) {
                return Ok(&self.b[start..self.pos]);
            }
            self.pos += 1;
        }
        if self.complete && self.pos > start { Ok(&self.b[start..]) } else { Err(Syntax::Eof) }
    }

    fn next(&mut self) -> Result<Tok<'a>, Syntax> {
        self.skip_space()?;
        let c = self.b[self.pos];
        match c {
            b'/' => {
                self.pos += 1;
                let raw = self.regular_run()?;
                Ok(Tok::Name(decode_name(raw)))
            }
            b'(' => self.literal().map(Tok::Str),
            b'<' => {
                if self.b.get(self.pos + 1) == Some(&b'<') {
                    self.pos += 2;
                    return Ok(Tok::DictOpen);
                }
                self.hex().map(Tok::Str)
            }
            b'>' => match self.b.get(self.pos + 1) {
                Some(b'>') => {
                    self.pos += 2;
                    Ok(Tok::DictClose)
                }
                Some(_) => Err(Syntax::Bad("a stray '>'")),
                None => Err(Syntax::Eof),
            },
            b'[' => {
                self.pos += 1;
                Ok(Tok::ArrOpen)
            }
            b']' => {
                self.pos += 1;
                Ok(Tok::ArrClose)
            }
            b')' | b'{' | b'}' => Err(Syntax::Bad("a stray delimiter")),
            _ => {
                let run = self.regular_run()?;
                Ok(number(run).unwrap_or(Tok::Word(run)))
            }
        }
    }

    /// A literal string's bytes, escapes undone, from its `(`.
    fn literal(&mut self) -> Result<Vec<u8>, Syntax> {
        let mut out = Vec::new();
        let mut depth = 0usize;
        while let Some(&c) = self.b.get(self.pos) {
            self.pos += 1;
            match c {
                b'(' => {
                    depth += 1;
                    if depth == 1 {
                        continue;
                    }
                }
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(out);
                    }
                }
                b'\\' => {
                    let &e = self.b.get(self.pos).ok_or(Syntax::Eof)?;
                    self.pos += 1;
                    let byte = match e {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'f' => 12,
                        b'0'..=b'7' => {
                            let mut v = u32::from(e - b'0');
                            for _ in 0..2 {
                                match self.b.get(self.pos) {
                                    Some(d @ b'0'..=b'7') => {
                                        v = v * 8 + u32::from(d - b'0');
                                        self.pos += 1;
                                    }
                                    _ => break,
                                }
                            }
                            v as u8
                        }
                        // A line break after a backslash continues the string.
                        b'\r' => {
                            if self.b.get(self.pos) == Some(&b'\n') {
                                self.pos += 1;
                            }
                            continue;
                        }
                        b'\n' => continue,
                        other => other,
                    };
                    out.push(byte);
                    continue;
                }
                // An unescaped line end, CR LF or CR alike, is a line feed.
                b'\r' => {
                    if self.b.get(self.pos) == Some(&b'\n') {
                        self.pos += 1;
                    }
                    out.push(b'\n');
                    continue;
                }
                _ => {}
            }
            out.push(c);
        }
        Err(Syntax::Eof)
    }

    /// A hexadecimal string's bytes, from its `<` (white space skipped, an odd last digit
    /// padded with 0).
    fn hex(&mut self) -> Result<Vec<u8>, Syntax> {
        self.pos += 1;
        let mut digits = Vec::new();
        while let Some(&c) = self.b.get(self.pos) {
            self.pos += 1;
            match c {
                b'>' => {
                    if !digits.len().is_multiple_of(2) {
                        digits.push(0);
                    }
                    return Ok(digits.chunks(2).map(|p| (p[0] << 4) | p[1]).collect());
                }
                c if is_space(c) => {}
                c => digits.push(match c {
                    b'0'..=b'9' => c - b'0',
                    b'a'..=b'f' => c - b'a' + 10,
                    b'A'..=b'F' => c - b'A' + 10,
                    _ => return Err(Syntax::Bad("a bad hexadecimal string")),
                }),
            }
        }
        Err(Syntax::Eof)
    }

    fn value(&mut self, depth: usize) -> Result<Obj, Syntax> {
        if depth > MAX_DEPTH {
            return Err(Syntax::Bad("objects nested too deep"));
        }
        Ok(match self.next()? {
            Tok::Int(n) => {
                // `n g R` is a reference; anything else leaves the lexer after `n`.
                let after = self.pos;
                if let Some((num, generation)) = self.reference_after(n)? {
                    return Ok(Obj::Ref(num, generation));
                }
                self.pos = after;
                Obj::Int(n)
            }
            Tok::Real(r) => Obj::Real(r),
            Tok::Name(n) => Obj::Name(n),
            Tok::Str(s) => Obj::Str(s),
            Tok::ArrOpen => {
                let mut items = Vec::new();
                loop {
                    let at = self.pos;
                    if self.next()? == Tok::ArrClose {
                        break;
                    }
                    self.pos = at;
                    items.push(self.value(depth + 1)?);
                }
                Obj::Array(items)
            }
            Tok::DictOpen => {
                let mut entries = Vec::new();
                loop {
                    match self.next()? {
                        Tok::DictClose => break,
                        Tok::Name(k) => {
                            let v = self.value(depth + 1)?;
                            entries.push((k, v));
                        }
                        _ => return Err(Syntax::Bad("a dictionary key is not a name")),
                    }
                }
                Obj::Dict(entries)
            }
            Tok::Word(b"true") => Obj::Bool(true),
            Tok::Word(b"false") => Obj::Bool(false),
            Tok::Word(b"null") => Obj::Null,
            Tok::Word(_) => return Err(Syntax::Bad("an unexpected keyword")),
            Tok::DictClose | Tok::ArrClose => return Err(Syntax::Bad("an unexpected closing bracket")),
        })
    }

    /// The object number and generation if `n` is followed by `g R`; only running out of a
    /// window's bytes is an error.
    fn reference_after(&mut self, n: i64) -> Result<Option<(u32, u16)>, Syntax> {
        let g = match self.next() {
            Ok(Tok::Int(g)) => g,
            Err(Syntax::Eof) if !self.complete => return Err(Syntax::Eof),
            _ => return Ok(None),
        };
        match self.next() {
            Ok(Tok::Word(b"R")) => {}
            Err(Syntax::Eof) if !self.complete => return Err(Syntax::Eof),
            _ => return Ok(None),
        }
        Ok(match (u32::try_from(n), u16::try_from(g)) {
            (Ok(n), Ok(g)) => Some((n, g)),
            _ => None,
        })
    }
}

fn decode_name(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'#'
            && i + 2 < raw.len()
            && let Ok(s) = std::str::from_utf8(&raw[i + 1..i + 3])
            && let Ok(v) = u8::from_str_radix(s, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(raw[i]);
        i += 1;
    }
    out
}

fn number(run: &[u8]) -> Option<Tok<'static>> {
    let digits = run.strip_prefix(b"+").or_else(|| run.strip_prefix(b"-")).unwrap_or(run);
    if digits.is_empty() || !digits.iter().all(|c| c.is_ascii_digit() || *c == b'.') {
        return None;
    }
    let text = std::str::from_utf8(run).ok()?;
    // `4.`, `-.5` and `+1` are numbers too.
    let real = || {
        let t = text.strip_prefix('+').unwrap_or(text);
        let t = t.strip_suffix('.').unwrap_or(t);
        let t = t.replacen("-.", "-0.", 1);
        Some(Tok::Real(if t == "-" || t.is_empty() { 0.0 } else { t.parse::<f64>().unwrap_or(0.0) }))
    };
    if digits.contains(&b'.') {
        return real();
    }
    // Too long for an integer: no PDF offset or count is; a number nonetheless.
    text.parse::<i64>().map(Tok::Int).ok().or_else(real)
}

/// An indirect object `num gen obj value [stream]` at the start of `b`.
struct Indirect {
    num: u32,
    generation: u16,
    value: Obj,
    /// Where the stream's data starts in `b`, if it has one.
    stream_at: Option<usize>,
}

/// [`indirect`] at the start of `b`, and how many bytes it lexed.
fn parse_indirect(b: &[u8], complete: bool) -> (Result<Indirect, Syntax>, usize) {
    let mut lx = Lexer::new(b, 0, complete);
    let r = indirect(&mut lx, b);
    (r, lx.pos.min(b.len()))
}

fn indirect(lx: &mut Lexer<'_>, b: &[u8]) -> Result<Indirect, Syntax> {
    let num = match lx.next()? {
        Tok::Int(n) => u32::try_from(n).map_err(|_| Syntax::Bad("a bad object number"))?,
        _ => return Err(Syntax::Bad("no object where the cross-reference points")),
    };
    let generation = match lx.next()? {
        Tok::Int(g) => u16::try_from(g).map_err(|_| Syntax::Bad("a bad generation number"))?,
        _ => return Err(Syntax::Bad("no object where the cross-reference points")),
    };
    if lx.next()? != Tok::Word(b"obj") {
        return Err(Syntax::Bad("no object where the cross-reference points"));
    }
    let value = lx.value(0)?;
    let mut stream_at = None;
    if matches!(value, Obj::Dict(_)) {
        match lx.next() {
            Ok(Tok::Word(b"stream")) => {
                let mut p = lx.pos;
                // The keyword ends with CR LF or LF (a lone CR is tolerated).
                match (b.get(p), b.get(p + 1)) {
                    (None, _) | (Some(b'\r'), None) => return Err(Syntax::Eof),
                    (Some(b'\r'), Some(b'\n')) => p += 2,
                    (Some(b'\r' | b'\n'), _) => p += 1,
                    _ => {}
                }
                stream_at = Some(p);
            }
            Err(Syntax::Eof) => return Err(Syntax::Eof),
            _ => {}
        }
    }
    Ok(Indirect { num, generation, value, stream_at })
}

// ------------------------------------------------------------------------------------ document

/// Where an object lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loc {
    /// At this byte offset of the file.
    At(u64),
    /// Inside this object stream.
    InStream(u32),
}

struct Doc<'k> {
    known: &'k Known,
    xref: HashMap<u32, Loc>,
    /// Newest first.
    trailers: Vec<Dict>,
    /// Page-tree roots seen by a repair scan: the answer when the catalog cannot be followed.
    scanned_roots: Vec<i64>,
    /// For a file encrypted without a user password: how its streams decrypt.
    decryptor: Option<security::Decryptor>,
    /// Work done so far (see [`WORK_LIMIT`]).
    work: &'k Cell<u64>,
    /// Object streams decoded so far.
    object_streams: RefCell<HashMap<u32, Rc<ObjectStream>>>,
    /// Where the newest cross-reference section starts (`startxref`), and whether it is a
    /// stream; `None` for a document rebuilt by a scan.
    newest_section: Option<(u64, bool)>,
}

/// An object stream's decoded data: `n` objects, the first at offset `first`.
struct ObjectStream {
    data: Vec<u8>,
    n: i64,
    first: i64,
}

impl<'k> Doc<'k> {
    fn new(known: &'k Known, work: &'k Cell<u64>) -> Self {
        Doc {
            known,
            xref: HashMap::new(),
            trailers: Vec::new(),
            scanned_roots: Vec::new(),
            decryptor: None,
            work,
            object_streams: RefCell::new(HashMap::new()),
            newest_section: None,
        }
    }

    /// Counts `n` bytes of work; past the limit the file is too complex to check.
    fn charge(&self, n: usize) -> Result<(), Halt> {
        self.work.set(self.work.get().saturating_add(n as u64));
        if self.work.get() > WORK_LIMIT { Err(damaged("its structure is too complex to check")) } else { Ok(()) }
    }

    /// The document as its cross-reference sections describe it.
    fn from_xref(known: &'k Known, work: &'k Cell<u64>) -> Result<Self, Halt> {
        let mut doc = Doc::new(known, work);
        let tail_at = known.size.saturating_sub(1024);
        let tail = known.window(tail_at, known.size - tail_at)?;
        let at = find_last(tail, b"startxref").ok_or_else(|| damaged("no startxref"))?;
        let mut lx = Lexer::new(&tail[at + 9..], 0, true);
        let first = match lx.next() {
            Ok(Tok::Int(o)) if o >= 0 => o as u64,
            _ => return Err(damaged("no startxref offset")),
        };
        let mut queue = std::collections::VecDeque::from([first]);
        let mut seen = HashSet::new();
        while let Some(offset) = queue.pop_front() {
            if !seen.insert(offset) {
                continue; // a /Prev loop: each section once
            }
            if seen.len() > MAX_SECTIONS {
                return Err(damaged("too many cross-reference sections"));
            }
            let trailer = doc.section(offset)?;
            if offset == first {
                doc.newest_section = Some((first, !doc.is_table_at(first)?));
            }
            if let Some(o) = get_int(&trailer, b"XRefStm").filter(|o| *o >= 0) {
                queue.push_front(o as u64);
            }
            if let Some(o) = get_int(&trailer, b"Prev").filter(|o| *o >= 0) {
                queue.push_back(o as u64);
            }
            doc.trailers.push(trailer);
        }
        Ok(doc)
    }

    /// Reads the cross-reference section at `offset` into `xref` (newer entries kept) and
    /// returns its trailer.
    fn section(&mut self, offset: u64) -> Result<Dict, Halt> {
        if self.is_table_at(offset)? {
            self.table(offset)
        } else {
            let obj = self.object_at(offset)?;
            let Obj::Dict(dict) = &obj.value else { return Err(damaged("a cross-reference stream is not a stream")) };
            if !is_name(get(dict, b"Type"), b"XRef") {
                return Err(damaged("startxref points at neither a table nor a stream"));
            }
            let data = self.stream_data(offset, &obj, 0)?;
            self.xref_stream(dict, &data)?;
            Ok(obj.value_dict())
        }
    }

    /// Whether the section at `offset` is a classic table (else a stream).
    fn is_table_at(&self, offset: u64) -> Result<bool, Halt> {
        let head = self.known.window(offset, 16)?;
        Ok(Lexer::new(head, 0, false).next() == Ok(Tok::Word(b"xref")))
    }

    fn table(&mut self, offset: u64) -> Result<Dict, Halt> {
        let mut want = FIRST_WINDOW.max(MIN_READ);
        loop {
            let b = self.known.window(offset, want)?;
            let more = (offset + (b.len() as u64)) < self.known.size;
            let (parsed, used) = parse_table(b, !more);
            self.charge(used)?;
            match parsed {
                Ok((entries, trailer)) => {
                    for (num, at) in entries {
                        self.xref.entry(num).or_insert(Loc::At(at));
                    }
                    return Ok(trailer);
                }
                Err(Syntax::Eof) if more && want < MAX_TABLE => want = (want * 4).min(MAX_TABLE),
                Err(Syntax::Eof) if more => return Err(damaged("a cross-reference table is too large")),
                Err(Syntax::Eof) => return Err(damaged("a cross-reference table is cut short")),
                Err(Syntax::Bad(why)) => return Err(damaged(why)),
            }
        }
    }

    fn xref_stream(&mut self, dict: &Dict, data: &[u8]) -> Result<(), Halt> {
        let w: Vec<usize> = match get(dict, b"W") {
            Some(Obj::Array(items)) if items.len() == 3 => items
                .iter()
                .map(|o| match o {
                    Obj::Int(i) if (0..=8).contains(i) => Ok(*i as usize),
                    _ => Err(damaged("a bad /W in a cross-reference stream")),
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(damaged("a cross-reference stream without /W")),
        };
        let row = w.iter().sum::<usize>();
        if row == 0 {
            return Err(damaged("a bad /W in a cross-reference stream"));
        }
        let size = get_int(dict, b"Size").unwrap_or(0).max(0);
        let index: Vec<i64> = match get(dict, b"Index") {
            Some(Obj::Array(items)) => items.iter().map(|o| if let Obj::Int(i) = o { *i } else { -1 }).collect(),
            _ => vec![0, size],
        };
        if !index.len().is_multiple_of(2) || index.iter().any(|i| *i < 0) {
            return Err(damaged("a bad /Index in a cross-reference stream"));
        }
        let mut rows = data.chunks_exact(row);
        for pair in index.chunks_exact(2) {
            for num in pair[0]..pair[0].saturating_add(pair[1]) {
                let Some(r) = rows.next() else { return Ok(()) };
                let field = |i: usize| {
                    let start: usize = w[..i].iter().sum();
                    r[start..start + w[i]].iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
                };
                let kind = if w[0] == 0 { 1 } else { field(0) };
                let Ok(num) = u32::try_from(num) else { return Ok(()) };
                let loc = match kind {
                    1 => Loc::At(field(1)),
                    2 => match u32::try_from(field(1)) {
                        Ok(stm) => Loc::InStream(stm),
                        Err(_) => continue,
                    },
                    _ => continue, // free, or a type readers ignore
                };
                self.xref.entry(num).or_insert(loc);
            }
        }
        Ok(())
    }

    /// The document rebuilt by scanning the whole file for `n g obj` and `trailer`.
    fn from_scan(known: &'k Known, work: &'k Cell<u64>) -> Result<Self, Halt> {
        let b = known.window(0, known.size)?;
        let mut doc = Doc::new(known, work);
        // The two searches below, for `obj` and `trailer`.
        doc.charge(2 * b.len())?;
        let mut streams = Vec::new();
        let mut at = 0;
        while let Some(found) = find(&b[at..], b"obj") {
            let kw = at + found;
            at = kw + 3;
            if b.get(kw + 3).is_some_and(|c| is_regular(*c)) {
                continue; // `objects`, `endobj`, ...
            }
            let Some(start) = object_start(b, kw) else { continue };
            let (parsed, used) = parse_indirect(&b[start..], true);
            doc.charge(used)?;
            let Ok(obj) = parsed else { continue };
            // A later definition replaces an earlier one, as an incremental update does.
            doc.xref.insert(obj.num, Loc::At(start as u64));
            if let Obj::Dict(d) = &obj.value {
                if is_name(get(d, b"Type"), b"XRef") {
                    doc.trailers.insert(0, d.clone());
                } else if is_name(get(d, b"Type"), b"ObjStm") {
                    streams.push(obj.num);
                } else if is_name(get(d, b"Type"), b"Pages")
                    && get(d, b"Parent").is_none()
                    && let Some(count) = get_int(d, b"Count")
                {
                    doc.scanned_roots.push(count);
                }
            }
        }
        let mut at = 0;
        while let Some(found) = find(&b[at..], b"trailer") {
            at += found + 7;
            let mut lx = Lexer::new(&b[at..], 0, true);
            let parsed = lx.value(0);
            doc.charge(lx.pos)?;
            if let Ok(Obj::Dict(d)) = parsed {
                doc.trailers.insert(0, d);
            }
        }
        // Objects kept in object streams, where no direct definition exists.
        for stm in streams {
            if let Ok(nums) = doc.stream_members(stm) {
                for num in nums {
                    doc.xref.entry(num).or_insert(Loc::InStream(stm));
                }
            }
        }
        Ok(doc)
    }

    fn facts(mut self) -> Result<PdfFacts, Halt> {
        if let Some(encrypt) = self.trailers.iter().find_map(|t| get(t, b"Encrypt")) {
            // Readable without a password (one is needed only to change the file, as on many
            // statements and forms): PDFium opens it, so it is read. Anything else is refused.
            let id = self.trailers.iter().find_map(|t| match get(t, b"ID") {
                Some(Obj::Array(ids)) => match ids.first() {
                    Some(Obj::Str(id)) => Some(id.as_slice()),
                    _ => None,
                },
                _ => None,
            });
            let dict = match self.resolve(encrypt, 0) {
                Ok(Obj::Dict(d)) => Some(d),
                Err(e @ Halt::Need { .. }) => return Err(e),
                _ => None,
            };
            match dict.and_then(|d| security::open_without_password(&d, id.unwrap_or_default())) {
                // Its object streams, where the catalog may be, are then read decrypted.
                Some(decryptor) => {
                    self.decryptor = Some(decryptor);
                    // Any decoded before the key was known were read without it.
                    self.object_streams.borrow_mut().clear();
                }
                None => return Err(Halt::Fail(PdfError::Encrypted)),
            }
        }
        let from_catalog = self.count_from_catalog();
        let count = match (from_catalog, self.scanned_roots.iter().max()) {
            (Ok(count), _) => count,
            (Err(Halt::Fail(_)), Some(&count)) => count,
            (Err(e), _) => return Err(e),
        };
        match count {
            0 => Err(Halt::Fail(PdfError::NoPages)),
            c if c < 0 => Err(damaged("a negative page count")),
            c => Ok(PdfFacts { pages: c as u64 }),
        }
    }

    fn count_from_catalog(&self) -> Result<i64, Halt> {
        let root = self
            .trailers
            .iter()
            .find_map(|t| match get(t, b"Root") {
                Some(r @ Obj::Ref(..)) => Some(r.clone()),
                _ => None,
            })
            .ok_or_else(|| damaged("no document catalog"))?;
        let catalog = self.resolve(&root, 0)?;
        let Obj::Dict(catalog) = catalog else { return Err(damaged("the catalog is not a dictionary")) };
        let pages = get(&catalog, b"Pages").ok_or_else(|| damaged("the catalog has no page tree"))?;
        let Obj::Dict(pages) = self.resolve(pages, 0)? else {
            return Err(damaged("the page tree is not a dictionary"));
        };
        if get(&pages, b"Type").is_some_and(|t| !is_name(Some(t), b"Pages")) {
            return Err(damaged("the page tree's root is not a page tree"));
        }
        match self.resolve(get(&pages, b"Count").unwrap_or(&Obj::Null), 0)? {
            Obj::Int(count) => Ok(count),
            _ => Err(damaged("the page tree has no page count")),
        }
    }

    /// `o` with references followed.
    fn resolve(&self, o: &Obj, depth: usize) -> Result<Obj, Halt> {
        let Obj::Ref(num, _) = o else { return Ok(o.clone()) };
        if depth > MAX_DEPTH {
            return Err(damaged("references loop"));
        }
        let value = match self.xref.get(num) {
            None => Obj::Null, // a missing object is null, by the standard
            Some(Loc::At(offset)) => {
                let obj = self.object_at(*offset)?;
                if obj.num != *num {
                    return Err(damaged("the cross-reference table points at the wrong objects"));
                }
                obj.value
            }
            Some(Loc::InStream(stm)) => self.in_stream(*stm, *num, depth)?,
        };
        self.resolve(&value, depth + 1)
    }

    /// The indirect object at `offset`, reading more of the file as it needs.
    fn object_at(&self, offset: u64) -> Result<Indirect, Halt> {
        let mut want = FIRST_WINDOW;
        loop {
            let b = self.known.window(offset, want)?;
            let more = offset + (b.len() as u64) < self.known.size;
            let (parsed, used) = parse_indirect(b, !more);
            self.charge(used)?;
            match parsed {
                Ok(obj) => return Ok(obj),
                Err(Syntax::Eof) if more && want < MAX_OBJECT => want = (want * 4).min(MAX_OBJECT),
                Err(Syntax::Eof) if more => return Err(damaged("an object is too large")),
                Err(Syntax::Eof) => return Err(damaged("an object is cut short by the end of the file")),
                Err(Syntax::Bad(why)) => return Err(damaged(why)),
            }
        }
    }

    /// The decoded data of the stream object `obj` found at `offset`.
    fn stream_data(&self, offset: u64, obj: &Indirect, depth: usize) -> Result<Vec<u8>, Halt> {
        let (Obj::Dict(dict), Some(rel)) = (&obj.value, obj.stream_at) else {
            return Err(damaged("a stream object without data"));
        };
        let start = offset + rel as u64;
        let declared = match self.resolve(get(dict, b"Length").unwrap_or(&Obj::Null), depth + 1) {
            Ok(Obj::Int(n)) if (0..=MAX_STREAM as i64).contains(&n) => Some(n as u64),
            Err(e @ Halt::Need { .. }) => return Err(e),
            _ => None,
        };
        let raw = match declared {
            Some(len) if start + len <= self.known.size => {
                let b = self.known.window(start, len + 16)?;
                let after = &b[len as usize..];
                let ends_right = Lexer::new(after, 0, false).next() == Ok(Tok::Word(b"endstream"))
                    || find(&after[..after.len().min(16)], b"endstream").is_some();
                if ends_right { Some(b[..len as usize].to_vec()) } else { None }
            }
            _ => None,
        };
        let raw = match raw {
            Some(raw) => raw,
            // A wrong or missing /Length: the data runs to `endstream`, as readers take it.
            None => {
                let mut want = FIRST_WINDOW.max(MIN_READ);
                loop {
                    let b = self.known.window(start, want)?;
                    self.charge(b.len())?;
                    if let Some(end) = find(b, b"endstream") {
                        let mut data = &b[..end];
                        data = data.strip_suffix(b"\n").unwrap_or(data);
                        data = data.strip_suffix(b"\r").unwrap_or(data);
                        break data.to_vec();
                    }
                    if start + (b.len() as u64) >= self.known.size || want >= MAX_STREAM {
                        return Err(damaged("a stream has no end"));
                    }
                    want = (want * 4).min(MAX_STREAM);
                }
            }
        };
        // Encrypted files encrypt every stream but their cross-reference streams.
        let raw = match &self.decryptor {
            Some(d) if !is_name(get(dict, b"Type"), b"XRef") => {
                d.stream(obj.num, obj.generation, &raw).ok_or_else(|| damaged("a stream does not decrypt"))?
            }
            _ => raw,
        };
        let data = decode(dict, raw)?;
        self.charge(data.len())?;
        Ok(data)
    }

    /// Object stream `stm`, decoded once per examination (the catalog, the page tree and its
    /// count are often in the same one).
    fn stream_object(&self, stm: u32, depth: usize) -> Result<Rc<ObjectStream>, Halt> {
        if let Some(cached) = self.object_streams.borrow().get(&stm) {
            return Ok(cached.clone());
        }
        let Some(Loc::At(offset)) = self.xref.get(&stm) else {
            return Err(damaged("an object stream that is not in the file"));
        };
        let obj = self.object_at(*offset)?;
        if obj.num != stm {
            return Err(damaged("the cross-reference table points at the wrong objects"));
        }
        let Obj::Dict(dict) = &obj.value else { return Err(damaged("an object stream is not a stream")) };
        let (Some(n), Some(first)) = (get_int(dict, b"N"), get_int(dict, b"First")) else {
            return Err(damaged("an object stream without /N or /First"));
        };
        let data = self.stream_data(*offset, &obj, depth)?;
        let decoded = Rc::new(ObjectStream { data, n, first });
        self.object_streams.borrow_mut().insert(stm, decoded.clone());
        Ok(decoded)
    }

    /// Object `num` from object stream `stm`.
    fn in_stream(&self, stm: u32, num: u32, depth: usize) -> Result<Obj, Halt> {
        let stream = self.stream_object(stm, depth)?;
        let (data, first) = (&stream.data, stream.first);
        for (member, offset) in stream_index(data, stream.n)? {
            if member == num {
                let at = usize::try_from(first).ok().and_then(|f| f.checked_add(offset)).filter(|a| *a < data.len());
                let at = at.ok_or_else(|| damaged("an object stream's offsets are wrong"))?;
                return Lexer::new(data, at, true).value(0).map_err(|_| damaged("a bad object in an object stream"));
            }
        }
        Ok(Obj::Null)
    }

    fn stream_members(&self, stm: u32) -> Result<Vec<u32>, Halt> {
        let stream = self.stream_object(stm, 0)?;
        Ok(stream_index(&stream.data, stream.n)?.into_iter().map(|(num, _)| num).collect())
    }
}

impl Indirect {
    fn value_dict(self) -> Dict {
        match self.value {
            Obj::Dict(d) => d,
            _ => Vec::new(),
        }
    }
}

/// An object stream's header: `n` pairs of object number and offset.
fn stream_index(data: &[u8], n: i64) -> Result<Vec<(u32, usize)>, Halt> {
    let n = usize::try_from(n).map_err(|_| damaged("a bad object stream"))?;
    let mut lx = Lexer::new(data, 0, true);
    let mut out = Vec::new();
    for _ in 0..n {
        match (lx.next(), lx.next()) {
            (Ok(Tok::Int(num)), Ok(Tok::Int(off))) => match (u32::try_from(num), usize::try_from(off)) {
                (Ok(num), Ok(off)) => out.push((num, off)),
                _ => return Err(damaged("a bad object stream")),
            },
            _ => return Err(damaged("a bad object stream")),
        }
    }
    Ok(out)
}

/// A classic table: `xref`, subsections of `start count` then `offset gen n|f` lines, `trailer`
/// and its dictionary. Returns the in-use entries.
#[allow(clippy::type_complexity)]
fn parse_table(b: &[u8], complete: bool) -> (Result<(Vec<(u32, u64)>, Dict), Syntax>, usize) {
    let mut lx = Lexer::new(b, 0, complete);
    let r = table_entries(&mut lx);
    (r, lx.pos.min(b.len()))
}

#[allow(clippy::type_complexity)]
fn table_entries(lx: &mut Lexer<'_>) -> Result<(Vec<(u32, u64)>, Dict), Syntax> {
    lx.next()?; // xref
    let mut entries = Vec::new();
    loop {
        match lx.next()? {
            Tok::Word(b"trailer") => {
                return match lx.value(0)? {
                    Obj::Dict(d) => Ok((entries, d)),
                    _ => Err(Syntax::Bad("a trailer that is not a dictionary")),
                };
            }
            Tok::Int(start) => {
                let Tok::Int(count) = lx.next()? else { return Err(Syntax::Bad("a bad cross-reference table")) };
                if start < 0 || count < 0 {
                    return Err(Syntax::Bad("a bad cross-reference table"));
                }
                for i in 0..count {
                    let (Tok::Int(offset), Tok::Int(_), kind) = (lx.next()?, lx.next()?, lx.next()?) else {
                        return Err(Syntax::Bad("a bad cross-reference entry"));
                    };
                    match (kind, u32::try_from(start + i)) {
                        (Tok::Word(b"n"), Ok(num)) if offset > 0 => entries.push((num, offset as u64)),
                        (Tok::Word(b"n" | b"f"), _) => {}
                        _ => return Err(Syntax::Bad("a bad cross-reference entry")),
                    }
                }
            }
            _ => return Err(Syntax::Bad("a bad cross-reference table")),
        }
    }
}

/// The start of `num gen` before the `obj` keyword at `kw`, if that is what precedes it.
fn object_start(b: &[u8], kw: usize) -> Option<usize> {
    let mut i = kw;
    let skip = |i: &mut usize, digits: bool| {
        let end = *i;
        while *i > 0 && (if digits { b[*i - 1].is_ascii_digit() } else { is_space(b[*i - 1]) }) {
            *i -= 1;
        }
        *i < end
    };
    let ok = skip(&mut i, false) && skip(&mut i, true) && skip(&mut i, false) && skip(&mut i, true);
    (ok && (i == 0 || !is_regular(b[i - 1]))).then_some(i)
}

/// The stream's data through its filters: none or Flate (with a PNG or no predictor). Cross-
/// reference and object streams use nothing else in practice.
fn decode(dict: &Dict, raw: Vec<u8>) -> Result<Vec<u8>, Halt> {
    let filters: Vec<&Obj> = match get(dict, b"Filter") {
        None | Some(Obj::Null) => Vec::new(),
        Some(Obj::Array(items)) => items.iter().collect(),
        Some(f) => vec![f],
    };
    let parms = match get(dict, b"DecodeParms") {
        Some(Obj::Array(items)) => items.first().cloned(),
        other => other.cloned(),
    };
    let mut data = raw;
    for f in &filters {
        if !is_name(Some(f), b"FlateDecode") {
            return Err(damaged("a structure stream with a filter other than Flate"));
        }
        data = miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(&data, MAX_INFLATED)
            .or_else(|_| miniz_oxide::inflate::decompress_to_vec_with_limit(&data, MAX_INFLATED))
            .map_err(|_| damaged("a stream does not inflate, or inflates too large"))?;
    }
    match parms {
        Some(Obj::Dict(p)) if get_int(&p, b"Predictor").unwrap_or(1) >= 10 => {
            let columns = get_int(&p, b"Columns").unwrap_or(1);
            let colors = get_int(&p, b"Colors").unwrap_or(1);
            let bits = get_int(&p, b"BitsPerComponent").unwrap_or(8);
            if !(1..=1 << 16).contains(&columns) || !(1..=32).contains(&colors) || bits != 8 {
                return Err(damaged("unsupported predictor parameters"));
            }
            unpredict_png(&data, (columns * colors) as usize, colors as usize)
        }
        Some(Obj::Dict(p)) if get_int(&p, b"Predictor").unwrap_or(1) > 1 => Err(damaged("unsupported predictor")),
        _ => Ok(data),
    }
}

/// Undoes PNG row filters: each row is a filter byte then `row` bytes; `bpp` bytes per pixel.
fn unpredict_png(data: &[u8], row: usize, bpp: usize) -> Result<Vec<u8>, Halt> {
    let mut out = Vec::with_capacity(data.len());
    let mut prev = vec![0u8; row];
    for chunk in data.chunks(row + 1) {
        if chunk.len() < row + 1 {
            break; // a short last row is dropped, as readers do
        }
        let (kind, src) = (chunk[0], &chunk[1..]);
        let mut cur = vec![0u8; row];
        for i in 0..row {
            let left = if i >= bpp { cur[i - bpp] } else { 0 };
            let up = prev[i];
            let up_left = if i >= bpp { prev[i - bpp] } else { 0 };
            let pred = match kind {
                0 => 0,
                1 => left,
                2 => up,
                3 => ((u16::from(left) + u16::from(up)) / 2) as u8,
                4 => paeth(left, up, up_left),
                _ => return Err(damaged("a bad predictor row")),
            };
            cur[i] = src[i].wrapping_add(pred);
        }
        out.extend_from_slice(&cur);
        prev = cur;
    }
    Ok(out)
}

fn paeth(a: u8, b: u8, c: u8) -> u8 {
    let p = i16::from(a) + i16::from(b) - i16::from(c);
    let (pa, pb, pc) = ((p - i16::from(a)).abs(), (p - i16::from(b)).abs(), (p - i16::from(c)).abs());
    if pa <= pb && pa <= pc {
        a
    } else if pb <= pc {
        b
    } else {
        c
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn find_last(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    // PDFs written by hand, to control every structure the reader meets.
    use crate::fakes::PdfWriter as Writer;

    fn zlib(data: &[u8]) -> Vec<u8> {
        miniz_oxide::deflate::compress_to_vec_zlib(data, 6)
    }

    /// PNG "Up" rows, as qpdf and Acrobat write cross-reference streams.
    fn png_up(rows: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut prev = vec![0u8; rows[0].len()];
        for r in rows {
            out.push(2);
            out.extend(r.iter().zip(&prev).map(|(a, b)| a.wrapping_sub(*b)));
            prev = r.clone();
        }
        out
    }

    fn classic(n: u32) -> Vec<u8> {
        classic_after(n, 0)
    }

    /// A file with `pad` bytes of stream data before its page tree.
    fn padded(pad: usize, num: u32) -> Writer {
        let mut w = Writer::new();
        if pad > 0 {
            w.stream(num, "", &vec![b'x'; pad]);
        }
        w
    }

    fn classic_after(n: u32, pad: usize) -> Vec<u8> {
        let mut w = padded(pad, 999);
        w.pages(n);
        let size = 3 + n;
        w.table(0, &format!("<< /Size {size} /Root 1 0 R >>"));
        w.out
    }

    /// PDF 1.5 style: catalog and page tree in a compressed object stream, the cross-reference
    /// in a stream with PNG predictors; `extra` goes into the stream's dictionary.
    fn compressed(n: u32, extra: &str) -> Vec<u8> {
        compressed_after(n, extra, 0)
    }

    fn compressed_after(n: u32, extra: &str, pad: usize) -> Vec<u8> {
        // The padding takes the number after the cross-reference stream's: numbers stay dense.
        let mut w = padded(pad, n + 5);
        for i in 0..n {
            w.obj(3 + i, "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>");
        }
        let kids: Vec<String> = (0..n).map(|i| format!("{} 0 R", 3 + i)).collect();
        let members = [
            "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
            format!("<</Type/Pages/Kids[{}]/Count {n}>>", kids.join(" ")),
        ];
        let header = format!("1 0 2 {} ", members[0].len() + 1);
        let body = format!("{header}{}\n{}", members[0], members[1]);
        let stm = 3 + n;
        w.stream(
            stm,
            &format!("/Type /ObjStm /N 2 /First {} /Filter /FlateDecode", header.len()),
            &zlib(body.as_bytes()),
        );
        let xref_num = stm + 1;
        let xref_at = w.out.len();
        let mut rows = vec![vec![0u8, 0, 0, 0, 0, 0xff, 0xff]];
        rows.push(vec![2, 0, 0, 0, stm as u8, 0, 0]);
        rows.push(vec![2, 0, 0, 0, stm as u8, 0, 1]);
        let mut direct: Vec<(u32, usize)> = w.offsets.clone();
        direct.push((xref_num, xref_at));
        direct.sort();
        for (_, off) in direct {
            let o = (off as u32).to_be_bytes();
            rows.push(vec![1, o[0], o[1], o[2], o[3], 0, 0]);
        }
        let size = xref_num + 1 + u32::from(pad > 0);
        let data = zlib(&png_up(&rows));
        w.stream(
            xref_num,
            &format!(
                "/Type /XRef /Size {size} /W [1 4 2] /Root 1 0 R {extra} /Filter /FlateDecode \
                 /DecodeParms << /Columns 7 /Predictor 12 >>"
            ),
            &data,
        );
        w.out.extend_from_slice(format!("startxref\n{xref_at}\n%%EOF\n").as_bytes());
        w.out
    }

    fn pages(bytes: &[u8]) -> Result<u64, PdfError> {
        facts(bytes).map(|f| f.pages)
    }

    #[test]
    fn reads_the_page_count_of_classic_and_compressed_files() {
        assert_eq!(pages(&classic(1)), Ok(1));
        assert_eq!(pages(&classic(7)), Ok(7));
        assert_eq!(pages(&compressed(3, "")), Ok(3));
        assert_eq!(pages(&compressed(60, "")), Ok(60));
        // Files with CR LF line ends and comments between tokens.
        let crlf = String::from_utf8_lossy(&classic(2)).replace("obj\n", "obj % a comment\r\n").into_bytes();
        assert_eq!(pages(&crlf), Ok(2));
    }

    #[test]
    fn reads_our_own_searchable_pdf() {
        let page = |n| crate::OcrPage::new(n, 800, 600, Vec::new());
        let result = crate::OcrResult::from_pages(vec![page(1), page(2), page(3)], 0.1);
        let bytes = crate::render::searchable_pdf(&result, &[None, None, None], 200.0);
        assert_eq!(pages(&bytes), Ok(3));
    }

    #[test]
    fn an_incremental_update_counts_as_its_newest_revision() {
        let mut w = Writer::new();
        w.pages(1);
        let first = w.table(0, "<< /Size 4 /Root 1 0 R >>");
        let since = w.offsets.len();
        w.obj(4, "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>");
        w.obj(2, "<< /Type /Pages /Kids [3 0 R 4 0 R] /Count 2 >>");
        w.table(since, &format!("<< /Size 5 /Root 1 0 R /Prev {first} >>"));
        assert_eq!(pages(&w.out), Ok(2));
    }

    #[test]
    fn encryption_is_found_in_a_trailer_or_a_cross_reference_stream() {
        let mut w = Writer::new();
        w.pages(1);
        w.obj(6, "<< /Filter /Standard /V 2 /R 3 /O <00> /U <00> /P -4 >>");
        w.table(0, "<< /Size 7 /Root 1 0 R /Encrypt 6 0 R >>");
        assert_eq!(pages(&w.out), Err(PdfError::Encrypted));
        // In a stream's dictionary followed by more than the upload check's tail.
        let pad = "0".repeat(2 * crate::content::TAIL_LEN);
        let bytes = compressed(2, &format!("/Encrypt << /Filter /Standard >> /Pad <{pad}>"));
        let tail = &bytes[bytes.len() - crate::content::TAIL_LEN..];
        assert!(!tail.windows(8).any(|w| w == b"/Encrypt"));
        assert_eq!(pages(&bytes), Err(PdfError::Encrypted));
    }

    #[test]
    fn a_broken_cross_reference_is_rebuilt_by_scanning() {
        // Every offset off by 7 bytes, as after an editor re-saved the header.
        let bytes = classic(4);
        let mut shifted = b"%PDF-1.7\n% junk!\n".to_vec();
        shifted.extend_from_slice(&bytes[9..]);
        assert_eq!(pages(&shifted), Ok(4));
        // No cross-reference at all.
        let at = find_last(&bytes, b"xref\n0 1").unwrap();
        let mut bare = bytes[..at].to_vec();
        bare.extend_from_slice(b"trailer\n<< /Root 1 0 R >>\n%%EOF\n");
        assert_eq!(pages(&bare), Ok(4));
        // startxref past the end; the compressed form too.
        let mut past = compressed(5, "");
        let at = find_last(&past, b"startxref").unwrap();
        past.truncate(at);
        past.extend_from_slice(b"startxref\n999999\n%%EOF\n");
        assert_eq!(pages(&past), Ok(5));
    }

    #[test]
    fn what_cannot_be_read_is_refused_with_a_reason() {
        let damaged = |r: Result<u64, PdfError>| matches!(r, Err(PdfError::Damaged(_)));
        assert!(damaged(pages(b"%PDF-1.7\n%%EOF\n")));
        assert!(damaged(pages(b"%PDF-1.7\nstartxref\n9\n%%EOF\n")));
        // No page tree; an empty one.
        let mut w = Writer::new();
        w.obj(1, "<< /Type /Catalog >>");
        w.table(0, "<< /Size 2 /Root 1 0 R >>");
        assert!(damaged(pages(&w.out)));
        let mut w = Writer::new();
        w.obj(1, "<< /Type /Catalog /Pages 2 0 R >>");
        w.obj(2, "<< /Type /Pages /Kids [] /Count 0 >>");
        w.table(0, "<< /Size 3 /Root 1 0 R >>");
        assert_eq!(pages(&w.out), Err(PdfError::NoPages));
        // A /Prev that points at itself, and a /Count that refers to itself.
        let mut w = Writer::new();
        w.pages(2);
        let at = w.out.len();
        w.table(0, &format!("<< /Size 5 /Root 1 0 R /Prev {at} >>"));
        assert_eq!(pages(&w.out), Ok(2));
        let mut w = Writer::new();
        w.obj(1, "<< /Type /Catalog /Pages 2 0 R >>");
        w.obj(2, "<< /Type /Pages /Kids [] /Count 2 0 R >>");
        w.table(0, "<< /Size 3 /Root 1 0 R >>");
        assert!(damaged(pages(&w.out)));
        // Nesting a hundred thousand deep: refused, not a stack overflow.
        let mut w = Writer::new();
        w.obj(1, &format!("<< /Type /Catalog /Pages {}{} >>", "[".repeat(100_000), "]".repeat(100_000)));
        w.table(0, "<< /Size 2 /Root 1 0 R >>");
        assert!(damaged(pages(&w.out)));
    }

    #[test]
    fn a_file_made_to_be_slow_to_repair_is_refused_within_the_work_limit() {
        // An unclosed string after every object header: without the limit the repair scan would
        // lex each to the end of the file, 400,000 times over.
        let mut bytes = b"%PDF-1.7\n".to_vec();
        while bytes.len() < 4 << 20 {
            bytes.extend_from_slice(b"1 0 obj (\n");
        }
        bytes.extend_from_slice(b"%%EOF\n");
        let work = Cell::new(0);
        let r = examine_within(&Known::whole(&bytes), &work);
        assert!(matches!(&r, Err(Halt::Fail(PdfError::Damaged(why))) if why.contains("too complex")), "{r:?}");
        assert!(work.get() <= WORK_LIMIT + bytes.len() as u64, "{} bytes of work", work.get());
    }

    #[test]
    fn a_stream_that_inflates_without_bound_is_refused() {
        // 64 MB of zeros in an object stream holding the catalog: over the inflate limit.
        let zeros = zlib(&vec![0u8; 64 << 20]);
        let mut w = Writer::new();
        w.stream(5, "/Type /ObjStm /N 1 /First 4 /Filter /FlateDecode", &zeros);
        w.obj(2, "<< /Type /Pages /Kids [] /Count 1 >>");
        let mut bytes = w.out.clone();
        let at = bytes.len();
        let o5 = w.offsets[0].1 as u32;
        let o2 = w.offsets[1].1 as u32;
        let rows = [
            [0u8, 0, 0, 0, 0, 0xff, 0xff],
            [2, 0, 0, 0, 5, 0, 0],
            [1, 0, 0, 0, 0, 0, 0],
            [1, 0, 0, 0, 0, 0, 0],
            [1, 0, 0, 0, 0, 0, 0],
        ];
        let mut data = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            let mut r = *r;
            let off = match i {
                2 => Some(o2),
                4 => Some(o5),
                _ => None,
            };
            if let Some(o) = off {
                r[1..5].copy_from_slice(&o.to_be_bytes());
            }
            data.extend_from_slice(&r);
        }
        bytes.extend_from_slice(
            format!("9 0 obj\n<< /Type /XRef /Size 5 /W [1 4 2] /Root 1 0 R /Length {} >>\nstream\n", data.len())
                .as_bytes(),
        );
        bytes.extend_from_slice(&data);
        bytes.extend_from_slice(format!("\nendstream\nendobj\nstartxref\n{at}\n%%EOF\n").as_bytes());
        // The catalog is nowhere to be read, but the scan finds the root of the page tree.
        assert_eq!(pages(&bytes), Ok(1));
        let mut no_tree = bytes.clone();
        let at = find(&no_tree, b"/Type /Pages").unwrap();
        no_tree[at + 7..at + 12].copy_from_slice(b"Xages");
        assert!(matches!(pages(&no_tree), Err(PdfError::Damaged(_))));
    }

    /// Reads a file through `read_facts`, counting the reads and bytes.
    fn read_counted(bytes: &[u8]) -> (Result<PdfFacts, PdfError>, usize, u64) {
        let tail = &bytes[bytes.len().saturating_sub(crate::content::TAIL_LEN)..];
        let reads = std::cell::Cell::new((0usize, 0u64));
        let read = |offset: u64, len: usize| {
            let (n, total) = reads.get();
            let end = (offset as usize + len).min(bytes.len());
            reads.set((n + 1, total + (end - offset as usize) as u64));
            std::future::ready(Ok::<_, ()>(bytes[offset as usize..end].to_vec()))
        };
        let facts = futures_lite_block_on(read_facts(bytes.len() as u64, tail, read)).unwrap();
        let (n, total) = reads.get();
        (facts, n, total)
    }

    /// Polls a future that never waits (every read above is ready at once).
    fn futures_lite_block_on<F: Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => unreachable!("the reads are ready at once"),
        }
    }

    #[test]
    fn a_large_file_is_read_in_a_few_small_ranges() {
        // 8 MB of page content before the page tree and the cross-reference, in both forms.
        for bytes in [classic_after(40, 8 << 20), compressed_after(40, "", 8 << 20)] {
            let (facts, reads, fetched) = read_counted(&bytes);
            assert_eq!(facts, Ok(PdfFacts { pages: 40 }));
            assert!(reads <= 3, "{reads} reads");
            assert!(fetched < 300_000, "{fetched} bytes fetched of {}", bytes.len());
        }
        // A small file is one read (one within the tail already read, none).
        let small = compressed(60, "");
        assert!(small.len() > crate::content::TAIL_LEN);
        assert_eq!(read_counted(&small).0, Ok(PdfFacts { pages: 60 }));
        assert_eq!(read_counted(&small).1, 1);
        assert_eq!(read_counted(&classic(1)).1, 0);
    }

    #[test]
    fn mangled_files_never_panic_and_reads_stay_bounded() {
        let seeds = [classic(3), compressed(4, ""), compressed(2, "/Encrypt << >>"), {
            let mut w = Writer::new();
            w.pages(2);
            let first = w.table(0, "<< /Size 5 /Root 1 0 R >>");
            let since = w.offsets.len();
            w.obj(2, "<< /Type /Pages /Kids [3 0 R] /Count 1 >>");
            w.table(since, &format!("<< /Size 5 /Root 1 0 R /Prev {first} >>"));
            w.out
        }];
        let mut rng = StdRng::seed_from_u64(16);
        for round in 0..4000 {
            let mut bytes = seeds[round % seeds.len()].clone();
            for _ in 0..rng.random_range(1..6) {
                let at = rng.random_range(0..bytes.len());
                match rng.random_range(0..5) {
                    0 => bytes[at] = rng.random(),
                    1 => bytes[at] = *b"0123456789 /<>[]()RnfEe".get(rng.random_range(0..23)).unwrap(),
                    2 => bytes.truncate(at.max(10)),
                    3 => {
                        let len = rng.random_range(1..64).min(bytes.len() - at);
                        let chunk = bytes[at..at + len].to_vec();
                        let to = rng.random_range(0..bytes.len());
                        bytes.splice(to..to, chunk);
                    }
                    _ => {
                        bytes.drain(at..(at + rng.random_range(1..32)).min(bytes.len()));
                    }
                }
                if bytes.len() < 10 {
                    bytes = seeds[0].clone();
                }
            }
            let whole = facts(&bytes);
            let (ranged, reads, fetched) = read_counted(&bytes);
            assert!(reads <= MAX_READS && fetched <= 2 * bytes.len() as u64 + 2 * MIN_READ, "round {round}");
            // Both ways of reading agree on whether the file is fine.
            assert_eq!(whole.is_ok(), ranged.is_ok(), "round {round}: {whole:?} vs {ranged:?}");
        }
    }

    #[test]
    fn known_bytes_merge() {
        let mut k = Known::new(100);
        k.insert(10, &[1; 10]);
        k.insert(30, &[3; 10]);
        assert_eq!(k.from(15).len(), 5);
        k.insert(18, &[2; 14]);
        assert_eq!(k.from(10).len(), 30);
        assert_eq!(k.from(40), &[] as &[u8]);
        k.insert(95, &[9; 20]);
        assert_eq!(k.from(95).len(), 5);
    }
}
