//! The worker through the library API (`celeriac::worker::Worker`), with in-process handlers
//! and a broker that can be slowed down: what the real binary cannot easily show.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use celeriac::broker::{
    Broker, DeadLetter, DeadSelector, Delivery, Lease, MemoryBroker, QueueStats, Result,
    TaskMessage, TaskResult,
};
use celeriac::worker::{Handlers, Worker, WorkerOptions};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::util::eventually;

/// A memory broker whose acknowledgements take `ack_delay`.
struct SlowAcks {
    inner: MemoryBroker,
    ack_delay: Duration,
}

#[async_trait]
impl Broker for SlowAcks {
    async fn enqueue_many(&self, messages: &[TaskMessage]) -> Result<usize> {
        self.inner.enqueue_many(messages).await
    }
    async fn reserve(
        &self,
        queues: &[String],
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>> {
        self.inner.reserve(queues, max, lease, wait).await
    }
    async fn ack_many(&self, leases: &[Lease]) -> Result<Vec<bool>> {
        tokio::time::sleep(self.ack_delay).await;
        self.inner.ack_many(leases).await
    }
    async fn release(&self, leases: &[Lease]) -> Result<Vec<bool>> {
        self.inner.release(leases).await
    }
    async fn retry_later(&self, lease: &Lease, eta: DateTime<Utc>, reason: &str) -> Result<bool> {
        self.inner.retry_later(lease, eta, reason).await
    }
    async fn dead_letter(&self, lease: &Lease, reason: &str) -> Result<bool> {
        self.inner.dead_letter(lease, reason).await
    }
    async fn extend_lease(&self, leases: &[Lease], lease: Duration) -> Result<Vec<bool>> {
        self.inner.extend_lease(leases, lease).await
    }
    async fn store_result(&self, result: &TaskResult, ttl: Duration) -> Result<()> {
        self.inner.store_result(result, ttl).await
    }
    async fn get_result(&self, id: &str) -> Result<Option<TaskResult>> {
        self.inner.get_result(id).await
    }
    async fn wait_result(&self, id: &str, timeout: Duration) -> Result<Option<TaskResult>> {
        self.inner.wait_result(id, timeout).await
    }
    async fn queue_stats(&self, queue: &str) -> Result<QueueStats> {
        self.inner.queue_stats(queue).await
    }
    async fn purge(&self, queue: &str) -> Result<u64> {
        self.inner.purge(queue).await
    }
    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        self.inner.dead_letters(queue, limit).await
    }
    async fn requeue_dead(&self, queue: &str, which: DeadSelector) -> Result<u64> {
        self.inner.requeue_dead(queue, which).await
    }
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
}

#[tokio::test]
async fn a_slow_acknowledgement_does_not_let_the_lease_run_out() {
    // The task is done in no time, but acknowledging it takes longer than the lease: the
    // worker must keep the lease alive until the ack, or the message runs a second time.
    let config = celeriac::config::load_str(
        "queues: {default: {}}\ntasks:\n  count: {handler: count}\n",
        Path::new("test.yaml"),
    )
    .unwrap();
    let memory = MemoryBroker::new();
    let broker = Arc::new(SlowAcks {
        inner: memory.clone(),
        ack_delay: Duration::from_millis(2500),
    });
    let runs = Arc::new(AtomicUsize::new(0));
    let mut handlers = Handlers::new();
    {
        let runs = runs.clone();
        handlers.register("count", move |_ctx| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(serde_json::Value::Null)
            }
        });
    }
    let worker = Worker::new(
        Arc::new(config),
        broker,
        handlers,
        WorkerOptions {
            concurrency: 2,
            lease: Duration::from_secs(1),
            reserve_wait: Duration::from_millis(100),
            ..WorkerOptions::default()
        },
    );
    let m = TaskMessage::new("count", "default");
    memory.enqueue(&m).await.unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone(), CancellationToken::new()));
    eventually(
        "the message acknowledged",
        Duration::from_secs(10),
        || async {
            let s = memory.queue_stats("default").await.unwrap();
            (s.active == 0 && s.ready_total() == 0).then_some(())
        },
    )
    .await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1, "ran once");
}
