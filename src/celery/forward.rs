//! From the beat to Celery workers: the outbox.
//!
//! The beat fires a tick exactly once by enqueueing its message atomically with the record
//! of the fire (see [`crate::beat::store`]). For a schedule on a `protocol: celery` queue,
//! that message lands on the celeriac queue of the same name, which serves as an outbox: the
//! [`Forwarder`] reserves it there (under a lease, like a worker), publishes it to the Celery
//! app's kombu list, and only then acks it.
//!
//! - The Celery broker may be another Redis server: nothing needs both in one script.
//! - A beat that dies between the publish and the ack leaves the message leased; the lease
//!   runs out, the message returns to the outbox and a forwarder (every beat runs one, leader
//!   or standby) publishes it again. A beat tick carries a `fire_id`, and publishing sets a
//!   dedupe marker for it in the same script as the push (see [`super::publish`]), so the
//!   repeat is not pushed: each tick reaches Celery exactly once.
//! - The Celery broker being down delays the publish (the message stays in the outbox, the
//!   failure is logged once, retries back off); nothing is lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::publish::CeleryPublisher;
use crate::broker::{Broker, BrokerError, Delivery, Lease};
use crate::config::{CeleryQueue, Config};

/// Lease on an outbox message while it is published.
const LEASE: Duration = Duration::from_secs(30);
/// Longest wait for the outbox in one reserve call.
const WAIT: Duration = Duration::from_secs(1);
/// Most messages published per round trip.
const BATCH: usize = 500;

/// The `protocol: celery` queues of a configuration, by celeriac queue name.
pub fn celery_queues(cfg: &Config) -> Vec<(String, CeleryQueue)> {
    cfg.queues
        .iter()
        .filter_map(|(name, q)| q.celery.clone().map(|c| (name.clone(), c)))
        .collect()
}

/// Moves beat messages from the outbox queues to Celery.
pub struct Forwarder {
    outbox: Arc<dyn Broker>,
    queues: Vec<String>,
    publishers: HashMap<String, CeleryPublisher>,
    lease: Duration,
    failing: bool,
    forwarded: u64,
}

impl Forwarder {
    /// A forwarder for `queues` (celeriac queue name, its Celery settings), reading the
    /// outbox on `outbox` (the beat's own broker). Connects lazily: an unreachable Celery
    /// broker delays publishing, it does not stop the beat.
    pub fn new(
        outbox: Arc<dyn Broker>,
        queues: Vec<(String, CeleryQueue)>,
    ) -> Result<Self, BrokerError> {
        let mut publishers = HashMap::new();
        for (name, q) in &queues {
            publishers.insert(name.clone(), CeleryPublisher::lazy(q)?);
        }
        Ok(Forwarder {
            outbox,
            queues: queues.into_iter().map(|(n, _)| n).collect(),
            publishers,
            lease: LEASE,
            failing: false,
            forwarded: 0,
        })
    }

    /// The lease taken on outbox messages while they are published (default 30 s): how long
    /// a message a dead forwarder held waits before another one publishes it.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Messages published so far.
    pub fn forwarded(&self) -> u64 {
        self.forwarded
    }

    /// Runs until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        if self.queues.is_empty() {
            return;
        }
        tracing::info!(queues = %self.queues.join(","), "forwarding beat messages to Celery");
        let mut failures = 0u32;
        loop {
            let round = tokio::select! {
                r = self.round() => r,
                _ = shutdown.cancelled() => return,
            };
            let pause = match round {
                Ok(_) => {
                    if self.failing {
                        tracing::info!("publishing to Celery again");
                        self.failing = false;
                    }
                    failures = 0;
                    continue;
                }
                Err(e) => {
                    if !self.failing {
                        tracing::warn!(error = %e, "cannot forward beat messages to Celery; retrying with backoff (they wait in the outbox)");
                        self.failing = true;
                    }
                    failures = failures.saturating_add(1);
                    Duration::from_millis(100)
                        .saturating_mul(2u32.saturating_pow(failures.min(7) - 1))
                        .min(Duration::from_secs(10))
                        .mul_f64(rand::random_range(0.5..=1.0))
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Reserves what the outbox holds (waiting up to a second), publishes it, acks it.
    /// Returns how many were published.
    pub async fn round(&mut self) -> Result<usize, BrokerError> {
        let deliveries = self
            .outbox
            .reserve(&self.queues, BATCH, self.lease, WAIT)
            .await?;
        if deliveries.is_empty() {
            return Ok(0);
        }
        let mut by_queue: HashMap<String, Vec<Delivery>> = HashMap::new();
        for d in deliveries {
            by_queue.entry(d.lease.queue.clone()).or_default().push(d);
        }
        let mut published = 0;
        let mut first_error = None;
        for (queue, deliveries) in by_queue {
            match self.forward(&queue, deliveries).await {
                Ok(n) => published += n,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        self.forwarded += published as u64;
        match first_error {
            Some(e) => Err(e),
            None => Ok(published),
        }
    }

    async fn forward(&self, queue: &str, deliveries: Vec<Delivery>) -> Result<usize, BrokerError> {
        let publisher = &self.publishers[queue];
        let mut messages = Vec::new();
        let mut leases = Vec::new();
        for d in deliveries {
            match d.payload {
                Ok(m) => {
                    messages.push(m);
                    leases.push(d.lease);
                }
                Err(bad) => {
                    // Nothing a Celery worker could run either: keep it, with the reason.
                    let reason = format!("undecodable message in the Celery outbox: {}", bad.error);
                    tracing::warn!(queue, id = %d.lease.id, "{reason}");
                    self.outbox.dead_letter(&d.lease, &reason).await?;
                }
            }
        }
        if messages.is_empty() {
            return Ok(0);
        }
        match publisher.publish(&messages).await {
            Ok(pushed) => {
                for (m, pushed) in messages.iter().zip(&pushed) {
                    tracing::debug!(
                        queue,
                        id = %m.id,
                        task = %m.task,
                        fire_id = m.fire_id.as_deref().unwrap_or(""),
                        repeat = !pushed,
                        "published to Celery"
                    );
                }
                // Acked only now: a crash before this line republishes (deduped).
                self.outbox.ack_many(&leases).await?;
                Ok(messages.len())
            }
            Err(e) => {
                // Back to the outbox at once for the next attempt (or the lease runs out).
                let _ = self.release(&leases).await;
                Err(e)
            }
        }
    }

    async fn release(&self, leases: &[Lease]) -> Result<(), BrokerError> {
        self.outbox.release(leases).await.map(|_| ())
    }
}

/// Runs a [`Forwarder`] for the `protocol: celery` queues of the configuration in `config`,
/// rebuilt whenever a reload changes those queues. Runs until `shutdown`.
pub async fn forward_while_running(
    outbox: Arc<dyn Broker>,
    mut config: tokio::sync::watch::Receiver<Arc<Config>>,
    shutdown: CancellationToken,
) {
    loop {
        let active = celery_queues(&config.borrow_and_update());
        let stop = shutdown.child_token();
        let task = match Forwarder::new(outbox.clone(), active.clone()) {
            Ok(f) => Some(tokio::spawn(f.run(stop.clone()))),
            Err(e) => {
                // Validation accepted the URL, so this is unexpected; the messages wait.
                tracing::error!(error = %e, "cannot forward to Celery");
                None
            }
        };
        // Until the Celery queues change (or shutdown).
        let mut reloads_open = true;
        while reloads_open {
            tokio::select! {
                changed = config.changed() => match changed {
                    Ok(()) => {
                        if celery_queues(&config.borrow_and_update()) != active {
                            break;
                        }
                    }
                    Err(_) => reloads_open = false,
                },
                _ = shutdown.cancelled() => break,
            }
        }
        if !reloads_open {
            // No more reloads: keep forwarding what we have.
            shutdown.cancelled().await;
        }
        stop.cancel();
        if let Some(t) = task {
            let _ = t.await;
        }
        if shutdown.is_cancelled() {
            return;
        }
    }
}
