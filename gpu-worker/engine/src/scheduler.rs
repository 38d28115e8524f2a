//! The scheduler of one engine call: detection threads hand each image's line crops to a
//! recogniser queue, recognition threads take batches from it, and both share the call's
//! compute slots (see [`crate::engine::Engine::recognize_timed`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use image::RgbImage;

use crate::engine::{Prepared, StageTimes};
use crate::error::{EngineError, Result};
use crate::recognition::RecText;

/// Plans recogniser batches for crops of the given widths: `(padded width, indices)` pairs,
/// narrowest first (see [`crate::recognition::plan_batches`]).
pub(crate) type BatchPlanner<'a> = Box<dyn Fn(&[u32]) -> Vec<(u32, Vec<usize>)> + Send + 'a>;

/// An image's result once its call is done: its detection result and its lines' texts in
/// reading order, or its error.
pub(crate) type ImageResult = Result<(Prepared, Vec<RecText>)>;

/// One recogniser batch: crops padded to `width`, each tagged `(image, line)`.
pub(crate) struct RecJob {
    pub width: u32,
    pub items: Vec<(usize, usize)>,
    pub crops: Vec<RgbImage>,
}

/// A failure of the recogniser, kept per image it touched (`EngineError` is not `Clone`).
#[derive(Clone)]
struct RecFailure {
    message: String,
    retryable: bool,
}

impl RecFailure {
    fn into_error(self) -> EngineError {
        if self.retryable { EngineError::Inference(self.message) } else { EngineError::BadOutput(self.message) }
    }
}

/// The compute slots of a call: at most `cpu_slots` model runs at once, and detection goes
/// first when both stages wait, so recogniser batches keep coming.
struct Slots {
    /// Slots not in use.
    free: usize,
    /// Detection threads waiting for a slot.
    detectors_waiting: usize,
}

impl Slots {
    /// `cpu_slots` slots; 0 means no limit.
    fn new(cpu_slots: usize) -> Self {
        Self { free: if cpu_slots == 0 { usize::MAX } else { cpu_slots }, detectors_waiting: 0 }
    }

    /// Whether a recognition thread may take a slot now.
    fn free_for_recognition(&self) -> bool {
        self.free > 0 && self.detectors_waiting == 0
    }

    fn take(&mut self) {
        self.free -= 1;
    }

    fn release(&mut self) {
        self.free += 1;
    }
}

/// Line crops of detected images, turned into recogniser batches in groups of consecutive
/// images with at least `group` crops (or the call's last images). Groups depend only on the
/// images, not on timing, so a call's results are reproducible.
struct RecQueue<'a> {
    /// Per image: `None` until detected, then its line crops until they are batched.
    crops: Vec<Option<Vec<RgbImage>>>,
    /// Images before this one are in recogniser batches.
    grouped: usize,
    /// Fewest crops a group is planned over, so widths still sort into well-filled batches.
    group: usize,
    plan: BatchPlanner<'a>,
    /// Recogniser batches ready to run.
    ready: VecDeque<RecJob>,
}

impl<'a> RecQueue<'a> {
    fn new(images: usize, group: usize, plan: BatchPlanner<'a>) -> Self {
        Self { crops: (0..images).map(|_| None).collect(), grouped: 0, group, plan, ready: VecDeque::new() }
    }

    /// Stores image `k`'s crops and batches every group that is now complete.
    fn store(&mut self, k: usize, crops: Vec<RgbImage>) {
        self.crops[k] = Some(crops);
        while let Some(end) = self.next_group_end() {
            self.batch_group(end);
        }
    }

    /// The end of the next complete group of detected images after `grouped`, if there is one.
    fn next_group_end(&self) -> Option<usize> {
        let (start, n_images) = (self.grouped, self.crops.len());
        let (mut end, mut n) = (start, 0);
        while end < n_images && n < self.group {
            let Some(crops) = &self.crops[end] else { break };
            n += crops.len();
            end += 1;
        }
        (end > start && (n >= self.group || end == n_images)).then_some(end)
    }

    /// Plans the crops of images `grouped..end` into batches, widest first so parallel
    /// recognisers finish close together.
    fn batch_group(&mut self, end: usize) {
        let mut items = Vec::new();
        let mut crops = Vec::new();
        for i in self.grouped..end {
            let taken = self.crops[i].as_mut().map(std::mem::take).unwrap_or_default();
            for (j, c) in taken.into_iter().enumerate() {
                items.push((i, j));
                crops.push(Some(c));
            }
        }
        let widths: Vec<u32> = crops.iter().flatten().map(|c| c.width()).collect();
        for (width, idx) in (self.plan)(&widths).into_iter().rev() {
            self.ready.push_back(RecJob {
                width,
                items: idx.iter().map(|&i| items[i]).collect(),
                crops: idx.iter().map(|&i| crops[i].take().expect("each crop batched once")).collect(),
            });
        }
        self.grouped = end;
    }
}

/// Everything the threads of one call share, behind the scheduler's lock.
struct CallState<'a> {
    slots: Slots,
    queue: RecQueue<'a>,
    /// Per image: the detection result once there is one.
    prepared: Vec<Option<Result<Prepared>>>,
    /// Per image and line: the recognised text, once its batch ran.
    texts: Vec<Vec<Option<RecText>>>,
    /// Per image: a recogniser failure in one of its batches.
    failed: Vec<Option<RecFailure>>,
    /// Detection threads still running.
    detectors_left: usize,
    /// A thread of the call panicked: the others stop instead of waiting for it.
    aborted: bool,
    times: StageTimes,
}

/// Schedules one call's detection and recognition threads over its compute slots.
pub(crate) struct Scheduler<'a> {
    state: Mutex<CallState<'a>>,
    wake: Condvar,
    /// The next image a detection thread takes.
    next: AtomicUsize,
    images: usize,
}

impl<'a> Scheduler<'a> {
    /// A call over `images` images with `detectors` detection threads, `cpu_slots` compute
    /// slots (0 = no limit) and recogniser batches planned by `plan` over groups of at least
    /// `group` crops.
    pub fn new(images: usize, detectors: usize, cpu_slots: usize, group: usize, plan: BatchPlanner<'a>) -> Self {
        let state = CallState {
            slots: Slots::new(cpu_slots),
            queue: RecQueue::new(images, group, plan),
            prepared: (0..images).map(|_| None).collect(),
            texts: vec![Vec::new(); images],
            failed: vec![None; images],
            detectors_left: detectors,
            aborted: false,
            times: StageTimes::default(),
        };
        Self { state: Mutex::new(state), wake: Condvar::new(), next: AtomicUsize::new(0), images }
    }

    /// Locks the call's state; a thread that panicked while holding it already failed the call.
    fn lock(&self) -> MutexGuard<'_, CallState<'a>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Guards a thread of the call: see [`AbortOnPanic`].
    pub fn abort_on_panic(&self) -> AbortOnPanic<'_, 'a> {
        AbortOnPanic(self)
    }

    /// Tells every thread to stop.
    fn abort(&self) {
        let mut st = self.lock();
        st.aborted = true;
        self.wake.notify_all();
    }

    /// The next image to detect, `None` when every image is taken.
    pub fn next_image(&self) -> Option<usize> {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        (k < self.images).then_some(k)
    }

    /// Waits for a compute slot for detection and takes it; `false` when the call aborted.
    pub fn acquire_for_detection(&self) -> bool {
        let mut st = self.lock();
        st.slots.detectors_waiting += 1;
        st = self.wake.wait_while(st, |st| st.slots.free == 0 && !st.aborted).unwrap_or_else(|e| e.into_inner());
        st.slots.detectors_waiting -= 1;
        if st.aborted {
            return false;
        }
        st.slots.take();
        true
    }

    /// Releases a detection slot and stores image `k`'s result: its crops join the queue.
    pub fn release_detected(&self, k: usize, result: Result<(Prepared, Vec<RgbImage>)>) {
        let mut st = self.lock();
        st.slots.release();
        let crops = match result {
            Ok((p, crops)) => {
                st.texts[k] = vec![None; crops.len()];
                st.prepared[k] = Some(Ok(p));
                crops
            }
            Err(e) => {
                st.prepared[k] = Some(Err(e));
                Vec::new()
            }
        };
        st.queue.store(k, crops);
        self.wake.notify_all();
    }

    /// A detection thread is done; adds its stage times.
    pub fn detector_done(&self, times: &StageTimes) {
        let mut st = self.lock();
        st.detectors_left -= 1;
        st.times.add(times);
        self.wake.notify_all();
    }

    /// Waits for a recogniser batch and a compute slot free for it, and takes both; `None` when
    /// no batch is left or the call aborted.
    pub fn acquire_for_recognition(&self) -> Option<RecJob> {
        let mut st = self.lock();
        loop {
            if st.aborted {
                return None;
            }
            if st.slots.free_for_recognition() && !st.queue.ready.is_empty() {
                st.slots.take();
                return st.queue.ready.pop_front();
            }
            if st.queue.ready.is_empty() && st.detectors_left == 0 {
                return None;
            }
            st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Releases a recognition slot and stores the texts of the batch's `items`, or its failure
    /// for every image in it.
    pub fn release_recognized(&self, items: &[(usize, usize)], result: Result<Vec<RecText>>) {
        let mut st = self.lock();
        st.slots.release();
        match result {
            Ok(texts) => {
                for (&(i, j), text) in items.iter().zip(texts) {
                    st.texts[i][j] = Some(text);
                }
            }
            Err(e) => {
                let f = RecFailure { message: e.to_string(), retryable: e.is_retryable() };
                for &(i, _) in items {
                    st.failed[i] = Some(f.clone());
                }
            }
        }
        self.wake.notify_all();
    }

    /// A recognition thread is done; adds its recogniser time.
    pub fn recognizer_done(&self, secs: f64) {
        self.lock().times.rec += secs;
    }

    /// Per image, in order: its detection result and its lines' texts, or the image's error
    /// (from detection, else from a recogniser batch); plus the call's stage times.
    pub fn finish(self) -> (Vec<ImageResult>, StageTimes) {
        let st = self.state.into_inner().unwrap_or_else(|e| e.into_inner());
        let results = (st.prepared.into_iter().zip(st.failed).zip(st.texts))
            .map(|((p, failed), texts)| {
                let p = p.expect("every image went through detection")?;
                if let Some(f) = failed {
                    return Err(f.into_error());
                }
                Ok((p, texts.into_iter().map(|t| t.expect("every crop recognised")).collect()))
            })
            .collect();
        (results, st.times)
    }
}

/// Held by each thread of a call: if the thread panics, the others are told to stop, so none
/// waits forever for its slot or its images (the panic then reaches the caller).
pub(crate) struct AbortOnPanic<'s, 'a>(&'s Scheduler<'a>);

impl Drop for AbortOnPanic<'_, '_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batches a queue forms when images arrive in `order`, as `(width, items)`.
    fn batches(order: &[usize], lines: &[u32]) -> Vec<(u32, Vec<(usize, usize)>)> {
        // One batch per crop, padded to its own width.
        let plan: BatchPlanner<'_> = Box::new(|widths| widths.iter().enumerate().map(|(i, &w)| (w, vec![i])).collect());
        let mut queue = RecQueue::new(lines.len(), 4, plan);
        for &k in order {
            let crops = (0..lines[k]).map(|j| RgbImage::new(10 * (k as u32 + 1) + j, 1)).collect();
            queue.store(k, crops);
        }
        assert_eq!(queue.grouped, lines.len());
        queue.ready.into_iter().map(|job| (job.width, job.items)).collect()
    }

    #[test]
    fn groups_depend_on_the_images_not_on_the_order_they_arrive() {
        let lines = [2, 2, 3, 0, 1];
        let first = batches(&[0, 1, 2, 3, 4], &lines);
        // Images 0 and 1 make a group of 4 crops, 2 to 4 the call's last group; widest first.
        let expected = vec![
            (21, vec![(1, 1)]),
            (20, vec![(1, 0)]),
            (11, vec![(0, 1)]),
            (10, vec![(0, 0)]),
            (50, vec![(4, 0)]),
            (32, vec![(2, 2)]),
            (31, vec![(2, 1)]),
            (30, vec![(2, 0)]),
        ];
        assert_eq!(first, expected);
        assert_eq!(batches(&[4, 2, 3, 1, 0], &lines), expected);
        assert_eq!(batches(&[1, 0, 4, 3, 2], &lines), expected);
    }
}
