//! Configuration: the YAML model, loading (a file or a directory), validation with
//! `file:line:col` errors.
//!
//! ```no_run
//! let config = celeriac::config::load(std::path::Path::new("schedules/"))
//!     .unwrap_or_else(|errors| {
//!         eprintln!("{errors}"); // one `file:line:col: message` per line
//!         std::process::exit(78);
//!     });
//! println!("{}", config.summary()); // "3 schedules, 2 tasks, 2 queues"
//! ```
//!
//! - [`yaml`]: YAML parsed into [`yaml::Node`]s that remember their line and column,
//!   with guards against hostile input (size, nesting, aliases, binary data).
//! - [`model`]: the validated types ([`Config`], [`TaskConfig`], [`ScheduleConfig`], ...).
//! - `validate`: merging files and checking every key, value and reference.
//! - `load`: finding the files of a directory.
//! - [`error`]: [`ConfigError`] and [`ConfigErrors`].
//!
//! The format is documented in `docs/configuration.md`.

pub mod error;
mod load;
pub mod model;
mod placeholder;
mod suggest;
mod validate;
pub mod yaml;

pub use error::{ConfigError, ConfigErrors, Location};
pub use load::{is_config_file_name, load, load_str};
pub use model::{
    Builtin, CatchUp, CeleryQueue, Config, DEFAULT_QUEUE, Expires, MisfirePolicy, Overlap,
    QueueConfig, RetryPolicy, ScheduleConfig, TaskConfig, TaskKind,
};
