//! The worker: reserves messages from named queues, runs their tasks, stores results,
//! retries failures with backoff and dead-letters what cannot succeed.

pub mod command;
