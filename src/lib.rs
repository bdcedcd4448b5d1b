//! celeriac: a periodic-task scheduler ("beat") with its own dispatcher.
//!
//! The library holds everything the `celeriac` binary does, so that it can be used and
//! tested from Rust without the command line:
//!
//! - [`schedule`]: the pure cron / interval / time-zone engine (`next_after`), no clock, no I/O.
//! - [`config`]: the YAML model, with validation errors that carry `file:line:col`.
//! - [`broker`]: named priority queues with leases, dead letters and results, on Redis or in
//!   memory, behind one [`broker::Broker`] trait.
//! - [`celery`]: Celery interoperability: `protocol: celery` queues (kombu's Redis lists),
//!   Celery task protocol v2, Celery's Redis result format, `import-celery`.
//! - [`clock`]: the [`clock::Clock`] trait; a system clock and a manual clock for tests.
//! - [`shutdown`]: turns process signals into a cancellation token and reload events; the
//!   only module that touches signals.
//!
//! The library never installs signal handlers on its own and never reads environment
//! variables: the binary does that and passes values in.
#![deny(clippy::await_holding_lock)]

pub mod beat;
pub mod broker;
pub mod celery;
pub mod clock;
pub mod config;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod ops;
pub mod schedule;
pub mod shutdown;
pub mod signing;
pub mod worker;
