//! Batched signature verification across concurrent calls.
//!
//! Every call hands its signatures to [`Verifier::verify`]; a few workers (one per core) take
//! whatever has queued up from all calls in flight, up to [`MAX_SIGNATURES`], and check them
//! together on the blocking pool with [`envelope::verify_many`]: one `verify_batch` when all
//! are good, each alone with `verify_strict` when the batch fails, so a bad signature gets the
//! answer it would get alone and its neighbours theirs. An idle server verifies a lone call at
//! once: nothing waits for a batch to fill.

use std::sync::{Arc, Once};

use duban_proto::envelope::{self, PendingSignature};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::metrics::Metrics;

/// The most signatures one worker checks together.
const MAX_SIGNATURES: usize = 512;

struct Job {
    items: Vec<PendingSignature>,
    reply: oneshot::Sender<Vec<bool>>,
}

pub(super) struct Verifier {
    jobs: mpsc::Sender<Job>,
    queue: Arc<Mutex<mpsc::Receiver<Job>>>,
    started: Once,
    metrics: Metrics,
}

impl Verifier {
    pub fn new(metrics: Metrics) -> Self {
        let (jobs, queue) = mpsc::channel(4096);
        Verifier {
            jobs,
            queue: Arc::new(Mutex::new(queue)),
            started: Once::new(),
            metrics,
        }
    }

    /// One answer per item, in order: whether its signature verifies (`verify_strict`'s
    /// answer; see [`envelope::verify_many`]).
    pub async fn verify(&self, items: Vec<PendingSignature>) -> Vec<bool> {
        if items.is_empty() {
            return Vec::new();
        }
        // Workers start on first use, inside the runtime that serves the calls.
        self.started.call_once(|| {
            let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
            for _ in 0..workers {
                tokio::spawn(work(self.queue.clone(), self.metrics.clone()));
            }
        });
        let (reply, answer) = oneshot::channel();
        let len = items.len();
        if let Err(mpsc::error::SendError(job)) = self.jobs.send(Job { items, reply }).await {
            return envelope::verify_many(&job.items);
        }
        answer.await.unwrap_or_else(|_| vec![false; len])
    }
}

async fn work(queue: Arc<Mutex<mpsc::Receiver<Job>>>, metrics: Metrics) {
    let mut jobs: Vec<Job> = Vec::new();
    loop {
        {
            let mut queue = queue.lock().await;
            if queue.recv().await.map(|job| jobs.push(job)).is_none() {
                return;
            }
            let mut count = jobs[0].items.len();
            while count < MAX_SIGNATURES {
                match queue.try_recv() {
                    Ok(job) => {
                        count += job.items.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
        }
        let mut items = Vec::new();
        let mut replies = Vec::with_capacity(jobs.len());
        for job in jobs.drain(..) {
            replies.push((job.items.len(), job.reply));
            items.extend(job.items);
        }
        let Ok(verdicts) = tokio::task::spawn_blocking(move || envelope::verify_many(&items)).await
        else {
            continue; // the replies are dropped: those calls count their signatures as bad
        };
        metrics.verify_batch_size.observe(verdicts.len() as f64);
        if verdicts.len() > 1 && verdicts.iter().any(|ok| !ok) {
            metrics.verify_batch_fallbacks.inc();
        }
        let mut verdicts = verdicts.into_iter();
        for (len, reply) in replies {
            let _ = reply.send(verdicts.by_ref().take(len).collect());
        }
    }
}
