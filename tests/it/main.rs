//! The one integration test binary. Each module tests one area; `util` holds the helpers
//! (temp dirs, running the real `celeriac` binary, private redis-server processes).

mod config;
mod schedule;
mod util;
