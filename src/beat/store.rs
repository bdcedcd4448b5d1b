//! Where the beat keeps what must be shared between beats: the leader lease, the record of
//! fired ticks, the journal, and the atomic "fire" step that enqueues a tick's message.
//!
//! Two implementations: [`super::redis_store::RedisBeatStore`] (several beats, one leads) and
//! [`super::memory_store::MemoryBeatStore`] (`celeriac run`: one process, always the leader).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::broker::{BrokerError, TaskMessage};

/// The leader's identity as recorded in the store: a random token and the fencing epoch
/// (incremented by every new acquisition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderToken {
    pub token: String,
    pub epoch: u64,
}

/// The answer to a claim (acquire or renew) of the leader lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The lease was free: it is ours now, under a new epoch.
    Acquired { epoch: u64 },
    /// It was already ours: extended, same epoch.
    Renewed { epoch: u64 },
    /// Someone else holds it, for about this much longer.
    HeldByOther { ttl_left: Duration },
}

/// One tick to fire.
#[derive(Debug, Clone)]
pub struct Fire {
    pub schedule: String,
    /// The tick's nominal instant: with the schedule name, its identity.
    pub nominal: DateTime<Utc>,
    /// The message to enqueue (its `fire_id`, `expires`, queue and priority already set).
    pub message: TaskMessage,
    /// `overlap: skip`: do not fire while the schedule's previous message is still queued or
    /// running.
    pub overlap_skip: bool,
    /// A catch-up fire (journaled as such).
    pub catch_up: bool,
}

impl Fire {
    /// Gives the fire's message a new id (signing it again with `signing`, the key that
    /// signed it), for sending it again: see [`BeatStore::fire`].
    pub fn renew_id(&mut self, signing: Option<&crate::signing::SigningKey>) {
        self.message.id = crate::broker::TaskMessage::new_id();
        if let Some(key) = signing {
            key.sign(&mut self.message);
        }
    }
}

/// What happened to one [`Fire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FireOutcome {
    /// Enqueued.
    Fired,
    /// This tick (or a later one of the schedule) was already fired: by us before an
    /// ambiguous error, or by another beat.
    AlreadyFired,
    /// Not fired: the schedule's previous run (this message id) is still queued or running.
    SkippedOverlap { running: String },
    /// Not fired: the schedule is paused.
    Paused,
    /// Not fired: we are not the leader (any more).
    NotLeader,
}

/// One beat decision, as kept in the journal and shown by `celeriac why`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// When the decision was made.
    pub at: DateTime<Utc>,
    /// The schedule it is about (none for leadership and reload events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// fired | caught_up | skipped_overlap | paused | misfired | leader_acquired |
    /// leader_lost | reload_applied | reload_rejected | triggered
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nominal: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fire_id: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Which beat decided (`host/pid/…`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub beat: String,
}

impl JournalEntry {
    pub fn new(event: &str, schedule: Option<&str>, detail: impl Into<String>) -> Self {
        JournalEntry {
            at: Utc::now(),
            schedule: schedule.map(str::to_string),
            event: event.to_string(),
            nominal: None,
            fire_id: None,
            detail: detail.into(),
            beat: String::new(),
        }
    }
}

/// The identity of a tick: `schedule@nominal` with the nominal instant in RFC 3339 UTC
/// (milliseconds only when not whole seconds).
pub fn fire_id(schedule: &str, nominal: DateTime<Utc>) -> String {
    format!(
        "{schedule}@{}",
        nominal.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    )
}

/// The beat's shared state. Every method is one round trip; `fire` is atomic per fire.
#[async_trait]
pub trait BeatStore: Send + Sync + 'static {
    /// Acquires the leader lease for `token` if it is free, or extends it if `token` holds it.
    async fn claim(&self, token: &str, ttl: Duration) -> Result<Claim, BrokerError>;

    /// Gives the lease up if `token` holds it (graceful shutdown: a standby takes over at once).
    async fn resign(&self, token: &str) -> Result<(), BrokerError>;

    /// Fires ticks. Each one, atomically: still the leader under this token and epoch? ->
    /// not decided before (the schedule's last decided tick is older) -> not paused -> no
    /// overlap (if asked) -> enqueue -> record as the schedule's last decided tick and
    /// journal it. Outcomes are in the order of `fires`.
    ///
    /// Every message id must be new to the store: a fire sent again (after an ambiguous
    /// error: it may have been enqueued) is sent with a new id ([`Fire::renew_id`]). The
    /// Redis store writes the bodies before it knows which ticks fire and deletes those of
    /// the ticks that do not: under a reused id, that would be the body of the message
    /// enqueued the first time.
    async fn fire(
        &self,
        leader: &LeaderToken,
        fires: &[Fire],
    ) -> Result<Vec<FireOutcome>, BrokerError>;

    /// The last fired nominal instant of each schedule (`None`: never fired).
    async fn last_fired(
        &self,
        schedules: &[String],
    ) -> Result<Vec<Option<DateTime<Utc>>>, BrokerError>;

    /// Records that `schedules` are on a beat's agenda since `at`, for those not recorded yet
    /// (so the record is the earliest instant any beat ran them). A schedule that has never
    /// fired is owed its ticks after this instant: on start or takeover they are caught up by
    /// the misfire policy exactly as ticks after a recorded last fire are. Without it, a
    /// brand-new schedule whose leader died before its first tick would silently lose the
    /// ticks due during the failover.
    ///
    /// Required (no default): a store wrapper that forgot to pass it on would silently turn
    /// the catch-up of never-fired schedules off.
    async fn arm(&self, schedules: &[String], at: DateTime<Utc>) -> Result<(), BrokerError>;

    /// The instant each schedule was first armed ([`BeatStore::arm`]), `None` if never.
    async fn armed(&self, schedules: &[String]) -> Result<Vec<Option<DateTime<Utc>>>, BrokerError>;

    /// Forgets when schedules were armed (removed from the configuration, or retimed), so
    /// that arming one again ([`BeatStore::arm`]: added back later, or its new timing) owes
    /// it the ticks after that instant only, not those of the time it was absent or of its
    /// old timing: a catch-up starts from the later of the last decided tick and the armed
    /// instant. The last decided tick stays: it is what refuses a tick that was decided
    /// already, whatever the configuration has become since.
    async fn disarm(&self, schedules: &[String]) -> Result<(), BrokerError>;

    /// Appends decisions to the journal (bounded).
    async fn journal(&self, entries: &[JournalEntry]) -> Result<(), BrokerError>;

    /// The newest journal entries, newest first: of one schedule, or of everything.
    async fn read_journal(
        &self,
        schedule: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, BrokerError>;
}
