//! The upload check's PDF reader (`ocr_core::pdf`) against an independent one: our own
//! searchable PDFs rewritten by qpdf into every structure it writes (object and cross-reference
//! streams, linearized, merged, encrypted with and without a user password), and by poppler's
//! pdfunite; each file's page count and encryption as `pdfinfo` reads them must be ours, read
//! through ranged reads as the on-upload function reads S3.
//!
//! Needs `qpdf`, `pdfinfo` and `pdfunite` (scripts/lib/checkers.sh installs them and sets
//! `OCR_REQUIRE_CHECKERS=1`; without that the test reports itself skipped).

use std::path::{Path, PathBuf};
use std::process::Command;

use ocr_core::pdf::{self, PdfError, PdfFacts};
use ocr_core::render::{PageImage, searchable_pdf};
use ocr_core::{OcrPage, OcrResult};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn tools() -> bool {
    let found = ["qpdf", "pdfinfo", "pdfunite"].iter().all(|t| Command::new(t).arg("--version").output().is_ok());
    if !found {
        let msg = "qpdf, pdfinfo or pdfunite missing; source scripts/lib/checkers.sh and run checkers_ensure";
        assert!(!std::env::var("OCR_REQUIRE_CHECKERS").is_ok_and(|v| v == "1"), "OCR_REQUIRE_CHECKERS=1 but {msg}");
        eprintln!("SKIPPED PDF structure checks: {msg}");
    }
    found
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    // qpdf exits 3 for warnings only.
    assert!(
        out.status.success() || out.status.code() == Some(3),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What pdfinfo says: the page count, or that the file needs a password. A file encrypted with an
/// empty user password (a password only to change it) opens, and is counted.
fn pdfinfo(path: &Path) -> Result<u64, PdfError> {
    let out = Command::new("pdfinfo").arg(path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if text.contains("Incorrect password") {
        return Err(PdfError::Encrypted);
    }
    let pages = text.lines().find_map(|l| l.strip_prefix("Pages:")).unwrap_or_else(|| panic!("pdfinfo: {text}"));
    Ok(pages.trim().parse().unwrap())
}

/// Ours, through `read_facts` with ranged reads; also the reads it made.
async fn ours(bytes: &[u8]) -> (Result<PdfFacts, PdfError>, usize, u64) {
    let tail = &bytes[bytes.len().saturating_sub(ocr_core::content::TAIL_LEN)..];
    let reads = std::sync::Mutex::new((0usize, 0u64));
    let read = |offset: u64, len: usize| {
        let end = (offset as usize + len).min(bytes.len());
        let mut r = reads.lock().unwrap();
        *r = (r.0 + 1, r.1 + (end - offset as usize) as u64);
        std::future::ready(Ok::<_, ()>(bytes[offset as usize..end].to_vec()))
    };
    let facts = pdf::read_facts(bytes.len() as u64, tail, read).await.unwrap();
    let (n, total) = *reads.lock().unwrap();
    (facts, n, total)
}

/// A searchable PDF of `pages` pages, each over 120 kB of (random) image data so that the file
/// is read in ranges, not whole.
fn base(pages: u32) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(3);
    let result = OcrResult::from_pages((1..=pages).map(|n| OcrPage::new(n, 800, 1000, Vec::new())).collect(), 0.1);
    let images: Vec<_> = (0..pages)
        .map(|_| {
            let mut jpeg = vec![0u8; 120_000];
            rng.fill(&mut jpeg[..]);
            Some(PageImage { jpeg, width: 800, height: 1000, gray: true, orientation: 1 })
        })
        .collect();
    searchable_pdf(&result, &images, 200.0)
}

#[tokio::test]
async fn page_counts_and_encryption_agree_with_pdfinfo_on_every_structure_qpdf_writes() {
    if !tools() {
        return;
    }
    let dir = tempdir();
    let p = |name: &str| dir.join(name).to_string_lossy().into_owned();
    std::fs::write(p("base.pdf"), base(12)).unwrap();
    let b = p("base.pdf");
    // qpdf's options for each variant (the input and output follow them). The encrypted ones: a
    // password only to change the file, in every revision of the standard handler qpdf writes
    // (R2 40-bit RC4, R3 128-bit RC4, R4 AES-128 with and without encrypted metadata, R6
    // AES-256), then the same with a password to open it.
    let weak = "--allow-weak-crypto";
    let variants: &[(&str, &[&str])] = &[
        ("objstm", &["--object-streams=generate"]),
        ("linearized", &["--linearize"]),
        ("objstm-linearized", &["--object-streams=generate", "--linearize"]),
        ("qdf", &["--qdf"]),
        ("owner-only-r6", &["--encrypt", "", "owner", "256", "--"]),
        ("owner-only-r6-objstm", &["--object-streams=generate", "--encrypt", "", "owner", "256", "--"]),
        ("owner-only-r4", &["--object-streams=generate", "--encrypt", "", "owner", "128", "--use-aes=y", "--"]),
        ("owner-only-r4-meta", &["--encrypt", "", "owner", "128", "--use-aes=y", "--cleartext-metadata", "--"]),
        ("owner-only-r3", &[weak, "--encrypt", "", "owner", "128", "--use-aes=n", "--"]),
        ("owner-only-r2", &[weak, "--encrypt", "", "owner", "40", "--"]),
        ("user-r6", &["--encrypt", "user", "owner", "256", "--"]),
        ("user-r4", &["--object-streams=generate", "--encrypt", "user", "owner", "128", "--use-aes=y", "--"]),
        ("user-r3", &[weak, "--encrypt", "user", "owner", "128", "--use-aes=n", "--"]),
        ("user-r2", &[weak, "--encrypt", "user", "owner", "40", "--"]),
    ];
    for (name, opts) in variants {
        let out = p(&format!("{name}.pdf"));
        run("qpdf", &[opts, &[b.as_str(), out.as_str()][..]].concat());
    }
    for (name, opts) in [("merged-60", &[][..]), ("merged-60-objstm", &["--object-streams=generate"][..])] {
        let out = p(&format!("{name}.pdf"));
        run("qpdf", &[opts, &["--empty", "--pages", &b, &b, &b, &b, &b, "--", &out][..]].concat());
    }
    run("pdfunite", &[&b, &p("objstm.pdf"), &p("pdfunite.pdf")]);

    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    assert_eq!(names.len(), 18);
    let (mut ranged, mut refused) = (0, 0);
    for path in names {
        let bytes = std::fs::read(&path).unwrap();
        let theirs = pdfinfo(&path);
        let (facts, reads, fetched) = ours(&bytes).await;
        let name = path.file_name().unwrap().to_string_lossy();
        eprintln!(
            "{name}: {} bytes, pdfinfo {theirs:?}, ours {facts:?} in {reads} reads of {fetched} bytes",
            bytes.len()
        );
        assert_eq!(facts.map(|f| f.pages), theirs, "{name}");
        refused += usize::from(theirs.is_err());
        // Past the whole-file threshold, a few ranges are read, never most of the file.
        if bytes.len() as u64 > pdf::WHOLE_BELOW {
            ranged += 1;
            assert!(reads <= 6 && fetched * 4 < bytes.len() as u64, "{name}: {reads} reads of {fetched} bytes");
        }
    }
    assert!(ranged >= 15, "only {ranged} files were read in ranges");
    assert_eq!(refused, 4, "the four files that need a password");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ocr-pdf-structure-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
