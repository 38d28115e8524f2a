//! A batch on its way through the stages: one item per delivery, and what became of it.

use std::time::Duration;

use image::RgbImage;
use ocr_core::worker::{Delivery, TakenJob};
use ocr_core::{JobId, OcrResult, Priority};

pub use super::receive::{Lane, Received};

use crate::recognizer::ImageFailure;

/// What became of one delivery so far. Each stage moves items forward; only
/// [`super::persist`] decides what the final state means for the message.
#[derive(Debug)]
pub enum State {
    /// Just received: nothing known yet.
    Received,
    /// Decoded and waiting for the engine: its pages (one for an image).
    Ready(Vec<RgbImage>),
    /// Handed to the engine (its result replaces this).
    InEngine,
    /// The engine read it.
    Done(OcrResult),
    /// This attempt failed.
    Failed(ImageFailure),
    /// Nothing to do (the job already ended, was deleted, or is unknown).
    Ended(String),
    /// Not a job message we understand: leave it for the dead-letter queue.
    Unreadable(String),
    /// A job message of a newer version (a rolling deploy is under way): a newer worker reads it.
    Newer(u32),
    /// Not read this time, through no fault of the job (the database stayed away for the whole
    /// retry limit, or its image did not fit the batch's decoded-pixel budget): the message goes
    /// back to the queue as a new one, visible `after`, using none of the job's attempts.
    Deferred { reason: String, after: Duration },
}

#[derive(Debug)]
pub struct Item {
    pub delivery: Delivery,
    pub job: Option<TakenJob>,
    pub state: State,
    pub hops: Hops,
}

/// When the item passed each stage (epoch ms, 0 until it did): the job's line on success
/// carries them, for `scripts/bench.sh latency`'s per-hop breakdown.
#[derive(Debug, Default, Clone, Copy)]
pub struct Hops {
    pub received_ms: i64,
    pub prepared_ms: i64,
    pub engine_start_ms: i64,
    pub engine_end_ms: i64,
}

impl Item {
    pub fn new(delivery: Delivery) -> Self {
        Item { delivery, job: None, state: State::Received, hops: Hops::default() }
    }

    pub fn job_id(&self) -> Option<JobId> {
        self.job.as_ref().map(|j| j.id)
    }

    /// The decoded pages, if the item is ready for the engine; it is then [`State::InEngine`].
    pub fn take_pages(&mut self) -> Option<Vec<RgbImage>> {
        match std::mem::replace(&mut self.state, State::InEngine) {
            State::Ready(pages) => Some(pages),
            other => {
                self.state = other;
                None
            }
        }
    }
}

/// The deliveries of one receive, in order.
#[derive(Debug)]
pub struct Batch {
    pub items: Vec<Item>,
    /// The lane it went through.
    pub lane: Lane,
    /// The share of the decoded-pixel budget its images hold, from decoding until the engine
    /// has read them (`None` when the budget is off or nothing was decoded).
    pub pixels: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Batch {
    pub fn new(lane: Lane, received: Vec<Received>) -> Self {
        let items = received
            .into_iter()
            .map(|r| {
                let mut item = Item::new(r.delivery);
                item.hops.received_ms = r.at_ms;
                item
            })
            .collect();
        Batch { items, lane, pixels: None }
    }

    /// How many of its messages are express.
    pub fn express(&self) -> usize {
        self.items.iter().filter(|i| i.delivery.priority == Priority::Express).count()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}
