//! The one integration test binary. Each module tests one area; `util` holds the helpers
//! (temp dirs, running the real `celeriac` binary, private redis-server processes).

mod beat_core;
mod beat_process;
mod beat_waves;
mod broker_contract;
mod broker_redis;
mod celery;
mod chaos_regressions;
mod cli;
mod config;
mod observe;
mod ops;
mod redis_server;
mod schedule;
mod systemd;
mod util;
mod worker;
mod worker_faults;
mod worker_library;
