#![no_main]
//! Untrusted bytes through the upload check's PDF reader, read whole and read in ranges as the
//! on-upload function reads S3: it never panics, stays within its reads, and both ways agree.

use std::future::Future;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use ocr_core::pdf::{self, MAX_READS};

fuzz_target!(|data: &[u8]| {
    let whole = pdf::facts(data);
    let tail = &data[data.len().saturating_sub(ocr_core::content::TAIL_LEN)..];
    let reads = std::cell::Cell::new(0usize);
    let read = |offset: u64, len: usize| {
        reads.set(reads.get() + 1);
        assert!(offset as usize + len <= data.len(), "read past the end: {offset}+{len} of {}", data.len());
        std::future::ready(Ok::<_, ()>(data[offset as usize..offset as usize + len].to_vec()))
    };
    let mut fut = std::pin::pin!(pdf::read_facts(data.len() as u64, tail, read));
    let Poll::Ready(ranged) = fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) else {
        panic!("the reads are ready at once");
    };
    let ranged = ranged.unwrap();
    assert!(reads.get() <= MAX_READS + 1, "{} reads", reads.get());
    assert_eq!(whole.is_ok(), ranged.is_ok(), "{whole:?} vs {ranged:?}");
    if let (Ok(a), Ok(b)) = (whole, ranged) {
        assert_eq!(a, b);
        assert!(a.pages > 0);
    }
});
