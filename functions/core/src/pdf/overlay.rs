//! A searchable PDF of a PDF upload: the upload itself, every byte kept, with the recognised
//! words added as invisible text on the pages that have none, the way a PDF editor saves a
//! change (an incremental update: new and changed objects, a cross-reference section and a
//! trailer appended after the original's end).
//!
//! Only the page objects change: their `/Contents` gain a stream of invisible text (the
//! original's drawing wrapped in `q … Q`, so whatever state it leaves cannot move the text),
//! and their `/Resources` a font for it. The text is placed through the page's crop box and
//! `/Rotate` the way PDFium rendered the page for the engine, so a word lands where it was seen.
//!
//! A page that already has text (its resources, or those of a form it draws, name a font) is
//! left as it is: it is searchable already, and a second copy of its words would make every
//! search hit twice. A scanned page has no fonts; a born-digital page, or one a scanner made
//! searchable, has them.

use std::cell::Cell;
use std::collections::HashSet;

use pdf_writer::{Content, Filter, Name, Pdf, Ref};

use super::{Doc, Halt, Known, Lexer, MAX_DEPTH, Obj, PdfError, Tok, damaged, find_last, get, is_name, parse_table};
use crate::result::OcrResult;

/// Why a text layer cannot be added. Retrying never helps: the bytes are what they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayerError {
    #[error("the PDF is encrypted, so text cannot be added to it")]
    Encrypted,
    #[error("the PDF's structure cannot be followed to its pages ({0})")]
    Unreadable(String),
    #[error("the PDF has {pdf} pages but its result has {result}")]
    PageCount { pdf: usize, result: usize },
}

/// The text font's resource name on a page.
const TEXT_FONT: &[u8] = b"OcrText";

/// Most pages followed in the page tree: far past any `MAX_PAGES` (the worker refuses longer
/// documents), while a hostile tree's cost stays bounded.
const MAX_WALKED: usize = 10_000;

/// One page of the document, as the page tree gives it.
struct Page {
    num: u32,
    generation: u16,
    dict: Vec<(Vec<u8>, Obj)>,
    /// What it shows: the crop box within the media box, `[left, bottom, right, top]`.
    shown: [f64; 4],
    /// Quarter turns clockwise (0–3).
    turns: u8,
    /// Its resources, inherited or its own, resolved.
    resources: Vec<(Vec<u8>, Obj)>,
}

/// The upload `original` with `result`'s words as invisible text on each page without text.
/// The result's pages are the document's, in order, as PDFium rendered them.
pub fn add_text_layer(original: &[u8], result: &OcrResult) -> Result<Vec<u8>, LayerError> {
    let known = Known::whole(original);
    let work = Cell::new(0);
    let unreadable = |h: Halt| match h {
        Halt::Fail(PdfError::Encrypted) => LayerError::Encrypted,
        Halt::Fail(e) => LayerError::Unreadable(e.to_string()),
        Halt::Need { .. } => LayerError::Unreadable("its structure points past the end of the file".into()),
    };
    // Only a file whose cross-reference sections hold together is updated: an update chained
    // to a broken section would leave readers to guess which objects are current.
    let doc = Doc::from_xref(&known, &work).map_err(unreadable)?;
    if doc.trailers.iter().any(|t| get(t, b"Encrypt").is_some()) {
        return Err(LayerError::Encrypted);
    }
    let Some((startxref, newest_is_stream)) = doc.newest_section else {
        return Err(LayerError::Unreadable("no cross-reference section".into()));
    };
    let pages = doc.pages(MAX_WALKED).map_err(unreadable)?;
    if pages.len() != result.pages.len() {
        return Err(LayerError::PageCount { pdf: pages.len(), result: result.pages.len() });
    }

    // New objects are numbered from the document's size on.
    let size = doc
        .trailers
        .iter()
        .filter_map(|t| match get(t, b"Size") {
            Some(Obj::Int(n)) => u32::try_from(*n).ok(),
            _ => None,
        })
        .chain(doc.xref.keys().map(|n| n + 1))
        .max()
        .unwrap_or(1);
    let mut next = size;
    let mut alloc = || {
        next += 1;
        Ref::new((next - 1) as i32)
    };
    let (font, cid, descriptor, cmap, open) = (alloc(), alloc(), alloc(), alloc(), alloc());
    let mut new = Pdf::new();
    crate::render::pdf::write_font(&mut new, font, cid, descriptor, cmap);
    new.stream(open, b"q\n");

    let mut changed = Vec::new();
    for (page, read) in pages.iter().zip(&result.pages) {
        if read.lines.is_empty() || doc.has_text(&page.resources).map_err(unreadable)? {
            continue;
        }
        let text = alloc();
        let contents = doc.contents(&page.dict)?;
        let [left, bottom, right, top] = page.shown;
        let (w, h) = if page.turns % 2 == 0 { (right - left, top - bottom) } else { (top - bottom, right - left) };
        // Shown-page points (origin at the shown bottom left, y up) to the page's user space.
        let to_user = match page.turns {
            0 => [1.0, 0.0, 0.0, 1.0, left, bottom],
            1 => [0.0, 1.0, -1.0, 0.0, right, bottom],
            2 => [-1.0, 0.0, 0.0, -1.0, right, top],
            _ => [0.0, -1.0, 1.0, 0.0, left, top],
        }
        .map(|v| v as f32);
        let mut c = Content::new();
        if !contents.is_empty() {
            // Undoes whatever state the page's own drawing left (opened by `open`).
            c.restore_state();
        }
        c.save_state().transform(to_user);
        let scale = [(w / f64::from(read.width.max(1))) as f32, (h / f64::from(read.height.max(1))) as f32];
        crate::render::pdf::write_words(&mut c, Name(TEXT_FONT), read, scale, h as f32);
        c.restore_state();
        let data = miniz_oxide::deflate::compress_to_vec_zlib(&c.finish(), 6);
        new.stream(text, &data).filter(Filter::FlateDecode);
        changed.push((page, contents, text));
    }
    if changed.is_empty() {
        return Ok(original.to_vec());
    }
    let new = new.finish();
    let (offsets, body_end) =
        written_offsets(&new).ok_or_else(|| LayerError::Unreadable("the text layer was not written".into()))?;
    let body_start = offsets.iter().map(|(_, at)| *at).min().unwrap_or(0);

    let mut out = Vec::with_capacity(original.len() + new.len() + 4096);
    out.extend_from_slice(original);
    if !matches!(out.last(), Some(b'\n' | b'\r')) {
        out.push(b'\n');
    }
    let base = out.len();
    out.extend_from_slice(&new[body_start..body_end]);
    let mut entries: Vec<(u32, u16, usize)> =
        offsets.iter().map(|(num, at)| (*num, 0, base + at - body_start)).collect();
    for (page, contents, text) in changed {
        let mut dict: Vec<(Vec<u8>, Obj)> =
            page.dict.iter().filter(|(k, _)| k != b"Contents" && k != b"Resources").cloned().collect();
        let mut items = Vec::with_capacity(contents.len() + 2);
        if !contents.is_empty() {
            items.push(Obj::Ref(open.get() as u32, 0));
            items.extend(contents);
        }
        items.push(Obj::Ref(text.get() as u32, 0));
        dict.push((b"Contents".to_vec(), Obj::Array(items)));
        dict.push((b"Resources".to_vec(), Obj::Dict(with_font(&page.resources, font))));
        entries.push((page.num, page.generation, out.len()));
        out.extend_from_slice(format!("{} {} obj\n", page.num, page.generation).as_bytes());
        write(&mut out, &Obj::Dict(dict));
        out.extend_from_slice(b"\nendobj\n");
    }

    // The new trailer keeps the newest one's entries (catalog, info, identifiers) but its
    // chain and cross-reference fields, as the standard asks of an update.
    let mut trailer: Vec<(Vec<u8>, Obj)> = doc.trailers[0]
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_slice(),
                b"Prev" | b"Size" | b"XRefStm" | b"Type" | b"W" | b"Index" | b"Length" | b"Filter" | b"DecodeParms"
            )
        })
        .cloned()
        .collect();
    if get(&trailer, b"Root").is_none()
        && let Some(root) = doc.trailers.iter().find_map(|t| get(t, b"Root"))
    {
        trailer.push((b"Root".to_vec(), root.clone()));
    }
    trailer.push((b"Prev".to_vec(), Obj::Int(startxref as i64)));
    entries.sort_by_key(|e| e.0);
    let xref_at = out.len();
    if newest_is_stream {
        // An update of a file with cross-reference streams is one too, so readers that read
        // only streams (no classic tables) follow it.
        let xref_num = next;
        entries.push((xref_num, 0, xref_at));
        let mut data = Vec::with_capacity(entries.len() * 7);
        let mut index = Vec::new();
        for run in entries.chunk_by(consecutive) {
            index.extend([Obj::Int(i64::from(run[0].0)), Obj::Int(run.len() as i64)]);
            for (_, generation, at) in run {
                data.push(1);
                data.extend_from_slice(&(*at as u32).to_be_bytes());
                data.extend_from_slice(&generation.to_be_bytes());
            }
        }
        trailer.push((b"Size".to_vec(), Obj::Int(i64::from(xref_num) + 1)));
        trailer.extend([
            (b"Type".to_vec(), Obj::Name(b"XRef".to_vec())),
            (b"W".to_vec(), Obj::Array(vec![Obj::Int(1), Obj::Int(4), Obj::Int(2)])),
            (b"Index".to_vec(), Obj::Array(index)),
            (b"Length".to_vec(), Obj::Int(data.len() as i64)),
        ]);
        out.extend_from_slice(format!("{xref_num} 0 obj\n").as_bytes());
        write(&mut out, &Obj::Dict(trailer));
        out.extend_from_slice(b"\nstream\n");
        out.extend_from_slice(&data);
        out.extend_from_slice(b"\nendstream\nendobj\n");
    } else {
        out.extend_from_slice(b"xref\n");
        for run in entries.chunk_by(consecutive) {
            out.extend_from_slice(format!("{} {}\n", run[0].0, run.len()).as_bytes());
            for (_, generation, at) in run {
                out.extend_from_slice(format!("{at:010} {generation:05} n\r\n").as_bytes());
            }
        }
        trailer.push((b"Size".to_vec(), Obj::Int(i64::from(next))));
        out.extend_from_slice(b"trailer\n");
        write(&mut out, &Obj::Dict(trailer));
        out.push(b'\n');
    }
    out.extend_from_slice(format!("startxref\n{xref_at}\n%%EOF\n").as_bytes());
    Ok(out)
}

/// Whether two cross-reference entries (sorted) belong to one subsection: consecutive numbers.
fn consecutive(a: &(u32, u16, usize), b: &(u32, u16, usize)) -> bool {
    b.0 == a.0 + 1
}

/// The object offsets of a file `pdf_writer` wrote, from its cross-reference table, and where
/// that table starts.
fn written_offsets(pdf: &[u8]) -> Option<(Vec<(u32, usize)>, usize)> {
    let at = find_last(pdf, b"startxref")?;
    let Ok(Tok::Int(xref)) = Lexer::new(&pdf[at + 9..], 0, true).next() else { return None };
    let xref = usize::try_from(xref).ok()?;
    let (Ok((entries, _)), _) = parse_table(pdf.get(xref..)?, true) else { return None };
    Some((entries.into_iter().map(|(num, at)| (num, at as usize)).collect(), xref))
}

/// The page's resources with the text font as its only font: only pages without fonts get a
/// text layer (see [`Doc::has_text`]), so the name is free.
fn with_font(resources: &[(Vec<u8>, Obj)], font: Ref) -> Vec<(Vec<u8>, Obj)> {
    let mut out: Vec<(Vec<u8>, Obj)> = resources.iter().filter(|(k, _)| k != b"Font").cloned().collect();
    out.push((b"Font".to_vec(), Obj::Dict(vec![(TEXT_FONT.to_vec(), Obj::Ref(font.get() as u32, 0))])));
    out
}

impl Doc<'_> {
    /// The document's pages in order, at most `limit`.
    fn pages(&self, limit: usize) -> Result<Vec<Page>, Halt> {
        let root = self
            .trailers
            .iter()
            .find_map(|t| get(t, b"Root").cloned())
            .ok_or_else(|| damaged("no document catalog"))?;
        let Obj::Dict(catalog) = self.resolve(&root, 0)? else {
            return Err(damaged("the catalog is not a dictionary"));
        };
        let tree = get(&catalog, b"Pages").cloned().ok_or_else(|| damaged("the catalog has no page tree"))?;
        let mut pages = Vec::new();
        let mut seen = HashSet::new();
        self.walk(&tree, &Inherited::default(), 0, limit, &mut seen, &mut pages)?;
        Ok(pages)
    }

    fn walk(
        &self,
        node: &Obj,
        inherited: &Inherited,
        depth: usize,
        limit: usize,
        seen: &mut HashSet<u32>,
        pages: &mut Vec<Page>,
    ) -> Result<(), Halt> {
        let &Obj::Ref(num, generation) = node else { return Err(damaged("a page tree node is not a reference")) };
        if depth > MAX_DEPTH || !seen.insert(num) {
            return Err(damaged("the page tree loops or is too deep"));
        }
        let Obj::Dict(dict) = self.resolve(node, 0)? else {
            return Err(damaged("a page tree node is not a dictionary"));
        };
        let mut here = inherited.clone();
        for key in [&b"Resources"[..], b"MediaBox", b"CropBox", b"Rotate"] {
            if let Some(v) = get(&dict, key) {
                here.set(key, self.resolve(v, 0)?);
            }
        }
        let kind = get(&dict, b"Type");
        let is_node = is_name(kind, b"Pages") || (!is_name(kind, b"Page") && get(&dict, b"Kids").is_some());
        if !is_node && kind.is_some() && !is_name(kind, b"Page") {
            // The catalog, say: rewriting it as a page would break the file.
            return Err(damaged("the page tree holds an object that is neither a page nor pages"));
        }
        if is_node {
            let kids = get(&dict, b"Kids").ok_or_else(|| damaged("a page tree node without kids"))?;
            let Obj::Array(kids) = self.resolve(kids, 0)? else {
                return Err(damaged("a page tree's kids are not a list"));
            };
            for kid in &kids {
                if pages.len() >= limit {
                    break;
                }
                self.walk(kid, &here, depth + 1, limit, seen, pages)?;
            }
            return Ok(());
        }
        // PDFium's page box: the crop box within the media box (letter size when neither is
        // usable), turned by whole quarter turns.
        let media = here.media.filter(|b| b[2] > b[0] && b[3] > b[1]).unwrap_or([0.0, 0.0, 612.0, 792.0]);
        let shown = match here.crop {
            Some(c) if c[2] > c[0] && c[3] > c[1] => {
                let i = [c[0].max(media[0]), c[1].max(media[1]), c[2].min(media[2]), c[3].min(media[3])];
                if i[2] > i[0] && i[3] > i[1] { i } else { media }
            }
            _ => media,
        };
        let turns = ((here.rotate / 90) % 4 + 4) % 4;
        let resources = match &here.resources {
            Obj::Dict(d) => d.clone(),
            _ => Vec::new(),
        };
        pages.push(Page { num, generation, dict, shown, turns: turns as u8, resources });
        Ok(())
    }

    /// The page's content streams, as references, in order (none for a blank page).
    fn contents(&self, page: &[(Vec<u8>, Obj)]) -> Result<Vec<Obj>, LayerError> {
        let unreadable = |why: &str| LayerError::Unreadable(format!("a page's contents are {why}"));
        Ok(match get(page, b"Contents") {
            None | Some(Obj::Null) => Vec::new(),
            Some(Obj::Array(items)) => items.clone(),
            Some(r @ Obj::Ref(..)) => match self.resolve(r, 0) {
                // A reference to an array of streams: its items.
                Ok(Obj::Array(items)) => items,
                Ok(Obj::Dict(_)) => vec![r.clone()],
                Ok(Obj::Null) => Vec::new(),
                _ => return Err(unreadable("not streams")),
            },
            Some(_) => return Err(unreadable("not streams")),
        })
    }

    /// Whether a page with these resources has text: they, or those of a form they draw, name
    /// a font.
    fn has_text(&self, resources: &[(Vec<u8>, Obj)]) -> Result<bool, Halt> {
        let fonts = |res: &[(Vec<u8>, Obj)]| -> Result<bool, Halt> {
            Ok(match get(res, b"Font") {
                Some(f) => matches!(self.resolve(f, 0)?, Obj::Dict(d) if !d.is_empty()),
                None => false,
            })
        };
        if fonts(resources)? {
            return Ok(true);
        }
        let Some(xobjects) = get(resources, b"XObject") else { return Ok(false) };
        let Obj::Dict(xobjects) = self.resolve(xobjects, 0)? else { return Ok(false) };
        for (_, x) in xobjects.iter().take(256) {
            if let Obj::Dict(form) = self.resolve(x, 0)?
                && is_name(get(&form, b"Subtype"), b"Form")
                && let Some(res) = get(&form, b"Resources")
                && let Obj::Dict(res) = self.resolve(res, 0)?
                && fonts(&res)?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The page attributes a page inherits from the nodes above it.
#[derive(Clone)]
struct Inherited {
    resources: Obj,
    media: Option<[f64; 4]>,
    crop: Option<[f64; 4]>,
    rotate: i64,
}

impl Default for Inherited {
    fn default() -> Self {
        Inherited { resources: Obj::Null, media: None, crop: None, rotate: 0 }
    }
}

impl Inherited {
    fn set(&mut self, key: &[u8], v: Obj) {
        match key {
            b"Resources" => self.resources = v,
            b"MediaBox" => self.media = rect(&v),
            b"CropBox" => self.crop = rect(&v),
            _ => {
                self.rotate = match v {
                    Obj::Int(r) => r,
                    Obj::Real(r) if r.is_finite() => r as i64,
                    _ => 0,
                }
            }
        }
    }
}

/// A rectangle `[llx lly urx ury]`, its corners put in order.
fn rect(o: &Obj) -> Option<[f64; 4]> {
    let Obj::Array(items) = o else { return None };
    let v: Vec<f64> = items
        .iter()
        .map(|i| match i {
            Obj::Int(n) => Some(*n as f64),
            Obj::Real(r) if r.is_finite() => Some(*r),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let [a, b, c, d] = v.as_slice() else { return None };
    Some([a.min(*c), b.min(*d), a.max(*c), b.max(*d)])
}

/// Writes an object in PDF syntax (strings as hexadecimal, as read).
fn write(out: &mut Vec<u8>, o: &Obj) {
    match o {
        Obj::Null => out.extend_from_slice(b"null"),
        Obj::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Obj::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
        // Display never uses an exponent, which PDF does not allow.
        Obj::Real(r) => out.extend_from_slice(format!("{}", if r.is_finite() { *r } else { 0.0 }).as_bytes()),
        Obj::Name(n) => {
            out.push(b'/');
            for &c in n {
                if c.is_ascii_graphic() && c != b'#' && super::is_regular(c) {
                    out.push(c);
                } else {
                    out.extend_from_slice(format!("#{c:02X}").as_bytes());
                }
            }
        }
        Obj::Str(s) => {
            out.push(b'<');
            for c in s {
                out.extend_from_slice(format!("{c:02X}").as_bytes());
            }
            out.push(b'>');
        }
        Obj::Array(items) => {
            out.push(b'[');
            for (k, item) in items.iter().enumerate() {
                if k > 0 {
                    out.push(b' ');
                }
                write(out, item);
            }
            out.push(b']');
        }
        Obj::Dict(entries) => {
            out.extend_from_slice(b"<<");
            for (k, v) in entries {
                write(out, &Obj::Name(k.clone()));
                out.push(b' ');
                write(out, v);
            }
            out.extend_from_slice(b">>");
        }
        Obj::Ref(num, generation) => out.extend_from_slice(format!("{num} {generation} R").as_bytes()),
    }
}
