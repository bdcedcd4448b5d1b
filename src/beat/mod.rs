//! The beat: keeps every schedule's next tick, and when one comes, fires it exactly once.
//!
//! - [`agenda`]: heap of next nominal ticks; a wave pops what is due and re-arms each schedule
//!   from its nominal instant (no drift).
//! - [`misfire`]: what to do with ticks that could not fire on time.
//! - [`store`]: the shared state (leader lease, atomic fire, last-fired record, journal), on
//!   Redis ([`redis_store`]) or in memory ([`memory_store`], `celeriac run`).
//! - [`reload`]: watching the configuration and turning changes into validated configs.
//!
//! The loop: hold or seek the leader lease; while leading (and only while the lease is surely
//! still ours by the local monotonic clock), fire due ticks in batches; on becoming leader,
//! catch up missed ticks per schedule policy; apply reloads as a diff by schedule name.

pub mod agenda;
pub mod memory_store;
pub mod misfire;
pub mod redis_store;
pub mod reload;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::agenda::Agenda;
use self::misfire::{CatchUp, Policy};
use self::store::{BeatStore, Claim, Fire, FireOutcome, JournalEntry, LeaderToken, fire_id};
use crate::broker::{BrokerError, TaskMessage};
use crate::clock::Clock;
use crate::config::{self, Config, Expires, Overlap, ScheduleConfig};
use crate::metrics as m;
use crate::notify::Notifier;
use crate::schedule::Timing;

/// Above this many fires in one batch, per-fire log lines go to DEBUG and one summary goes
/// to INFO.
pub const LOG_EACH_FIRE_UP_TO: usize = 1000;

/// Ticks in the first wave of a burst (then [`BeatOptions::wave_limit`] each).
const FIRST_WAVE: usize = 1_000;

/// From this many schedules on, rebuilding the agenda or installing a configuration is
/// followed by handing the freed memory back to the system ([`crate::memory`]).
const RELEASE_MEMORY_FROM: usize = 10_000;

/// How a beat runs.
#[derive(Debug, Clone)]
pub struct BeatOptions {
    /// Leader lease ttl; renewed every third of it.
    pub lease_ttl: Duration,
    /// Identifies this beat in the lease and the journal (default `host/pid/random`).
    pub beat_id: String,
    /// Most ticks popped from the agenda per wave; the rest follow at once, with the lease
    /// renewed (when due) and the watchdog pinged between waves.
    pub wave_limit: usize,
    /// systemd notifications: READY once running, WATCHDOG from the loop (a stuck loop stops
    /// the pings), RELOADING/READY around reloads, STATUS with [`BeatStatus::summary`].
    pub notifier: Option<Arc<Notifier>>,
    /// Signs every fired message (HMAC-SHA256, `signing_key_file`): workers with the key
    /// dead-letter unsigned and badly signed messages.
    pub signing: Option<Arc<crate::signing::SigningKey>>,
}

impl Default for BeatOptions {
    fn default() -> Self {
        BeatOptions {
            lease_ttl: Duration::from_secs(10),
            beat_id: default_beat_id(),
            wave_limit: 2_000,
            notifier: None,
            signing: None,
        }
    }
}

/// `host/pid/random`: unique per beat process.
pub fn default_beat_id() -> String {
    format!(
        "{}/{:08x}",
        crate::worker::default_worker_id(),
        rand::random::<u32>()
    )
}

/// What the beat is doing, for status lines (sd_notify STATUS=) and tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BeatStatus {
    pub leader: bool,
    pub epoch: u64,
    pub schedules: usize,
    pub fired: u64,
    pub skipped: u64,
    pub misfired: u64,
    pub last_fire: Option<(String, DateTime<Utc>)>,
    pub reloads: u64,
    /// Set while leading and idle: the wall-clock instant the loop sleeps until (its next
    /// tick; `DateTime::MAX_UTC` when none), so every tick due before it has been fired,
    /// skipped or dropped. `None` while busy, standing by, or applying a reload. A test that
    /// drives a [`crate::clock::ManualClock`] sets the time `t` and waits until this is
    /// after `t`.
    pub settled: Option<DateTime<Utc>>,
}

impl BeatStatus {
    /// One line: `leader (epoch 3), 12 schedules, 340 fired, last nightly@...`.
    pub fn summary(&self) -> String {
        let role = if self.leader {
            format!("leader (epoch {})", self.epoch)
        } else {
            "standby".to_string()
        };
        let last = match &self.last_fire {
            Some((name, at)) => format!(", last {}", fire_id(name, *at)),
            None => String::new(),
        };
        format!(
            "{role}, {} schedules, {} fired{last}",
            self.schedules, self.fired
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BeatError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl BeatError {
    pub fn is_transient(&self) -> bool {
        match self {
            BeatError::Broker(e) => e.is_transient(),
        }
    }
}

/// What a reload changed, by schedule name.
struct Diff {
    added: Vec<String>,
    /// Changed settings (timing or anything else).
    changed: Vec<String>,
    removed: Vec<String>,
    /// Of `changed`: those whose timing changed.
    retimed: Vec<String>,
}

/// A schedule as the beat runs it.
struct Running {
    cfg: Arc<ScheduleConfig>,
    policy: Policy,
    /// When this beat installed the schedule (added at start or by a reload): with no record
    /// of a fire, ticks after it are owed (see [`BeatStore::arm`]).
    since: DateTime<Utc>,
}

/// Fires being sent on their own task ([`Beat::start_send`]).
struct InFlight {
    fires: Arc<Vec<Fire>>,
    task: tokio::task::JoinHandle<Result<Vec<FireOutcome>, BrokerError>>,
    /// The lease epoch it was sent under.
    epoch: u64,
}

struct Leadership {
    token: LeaderToken,
    /// Fire only before this instant: the lease is surely still ours until then (measured from
    /// when the claim was SENT, minus a margin for clock-rate differences).
    valid_until: Instant,
    next_renew: Instant,
}

pub struct Beat {
    store: Arc<dyn BeatStore>,
    clock: Arc<dyn Clock>,
    options: BeatOptions,
    config: Arc<Config>,
    agenda: Agenda<Arc<ScheduleConfig>>,
    /// By name; the agenda shares the name (one allocation per schedule).
    running: HashMap<Arc<str>, Running>,
    leader: Option<Leadership>,
    next_claim: Instant,
    /// Fires that hit a transient error: retried (the store dedupes) while still leader.
    pending: Vec<Fire>,
    status: watch::Sender<BeatStatus>,
    broker_down: bool,
}

impl Beat {
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn BeatStore>,
        clock: Arc<dyn Clock>,
        options: BeatOptions,
    ) -> Self {
        let (status, _) = watch::channel(BeatStatus::default());
        let mut beat = Beat {
            store,
            clock,
            options,
            config: Arc::new(Config::default()),
            agenda: Agenda::new(),
            running: HashMap::new(),
            leader: None,
            next_claim: Instant::now(),
            pending: Vec::new(),
            status,
            broker_down: false,
        };
        beat.install(config);
        beat
    }

    /// A receiver of status updates.
    pub fn status(&self) -> watch::Receiver<BeatStatus> {
        self.status.subscribe()
    }

    /// Runs until `shutdown`. Reloads (validated configurations, or the errors that rejected
    /// one) arrive on `reloads`.
    pub async fn run(
        mut self,
        shutdown: CancellationToken,
        mut reloads: mpsc::Receiver<reload::ReloadEvent>,
    ) -> Result<(), BeatError> {
        tracing::info!(
            beat = %self.options.beat_id,
            schedules = self.running.len(),
            lease_ttl = ?self.options.lease_ttl,
            "beat started"
        );
        // Record when the schedules were installed, unless a beat did before (see
        // `BeatStore::arm`); grouped by instant (all the same at start).
        let mut by_since: HashMap<DateTime<Utc>, Vec<String>> = HashMap::new();
        for (name, r) in &self.running {
            by_since.entry(r.since).or_default().push(name.to_string());
        }
        for (since, names) in by_since {
            if let Err(e) = self.store.arm(&names, since).await {
                tracing::warn!(error = %e, "cannot record the schedules' start; using this beat's own");
            }
        }
        let mut ready = false;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            // Pinged from the loop that does the work: a loop stuck anywhere (a hung store
            // call, a busy wave) stops the pings and systemd restarts the beat.
            if let Some(n) = &self.options.notifier {
                n.watchdog_tick();
            }
            self.upkeep_lease().await;
            if !ready {
                // Configuration loaded, broker connected, first claim answered.
                ready = true;
                if let Some(n) = &self.options.notifier {
                    n.ready(&self.status.borrow().summary());
                }
            }
            if self.is_firing() {
                self.fire_due().await;
            }
            let wall_wake = if self.is_firing() {
                if self.pending.is_empty() {
                    self.agenda.peek()
                } else {
                    Some(self.clock.now() + chrono::Duration::milliseconds(200))
                }
            } else {
                None
            };
            let settled = (self.is_firing() && self.pending.is_empty())
                .then(|| wall_wake.unwrap_or(DateTime::<Utc>::MAX_UTC));
            if self.status.borrow().settled != settled {
                self.status.send_modify(|s| s.settled = settled);
            }
            let mut mono_wake = match &self.leader {
                Some(l) => l.next_renew.min(l.valid_until),
                None => self.next_claim,
            };
            if let Some(every) = self
                .options
                .notifier
                .as_ref()
                .and_then(|n| n.watchdog_every())
            {
                mono_wake = mono_wake.min(Instant::now() + every);
            }
            let clock = self.clock.clone();
            let sleep_wall = async move {
                match wall_wake {
                    Some(t) => clock.sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep_wall => {}
                _ = tokio::time::sleep_until(mono_wake) => {}
                new = reloads.recv() => match new {
                    Some(reload::ReloadEvent::Changed(cfg)) => {
                        self.notify_reloading();
                        self.apply_reload(cfg).await;
                        self.notify_reloaded();
                    }
                    Some(reload::ReloadEvent::Rejected(errors)) => {
                        self.notify_reloading();
                        metrics::counter!(m::RELOADS, "result" => "rejected").increment(1);
                        let detail = errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n");
                        self.journal(vec![JournalEntry::new("reload_rejected", None, detail)]).await;
                        self.notify_reloaded();
                    }
                    None => {
                        // No reload source any more; keep running on the current config.
                        reloads = mpsc::channel(1).1;
                    }
                },
                _ = shutdown.cancelled() => break,
            }
        }
        if let Some(l) = self.leader.take() {
            match self.store.resign(&l.token.token).await {
                Ok(()) => tracing::info!("leader lease released"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not release the leader lease; it expires by itself")
                }
            }
            self.journal(vec![JournalEntry::new(
                "leader_lost",
                None,
                "beat stopped; lease released",
            )])
            .await;
        }
        tracing::info!("beat stopped");
        Ok(())
    }

    fn is_firing(&self) -> bool {
        self.leader
            .as_ref()
            .is_some_and(|l| Instant::now() < l.valid_until)
    }

    fn publish_status(&self) {
        self.status.send_modify(|s| {
            s.leader = self.is_firing();
            s.epoch = self.leader.as_ref().map_or(0, |l| l.token.epoch);
            s.schedules = self.running.len();
        });
        let s = self.status.borrow();
        metrics::gauge!(m::LEADER).set(if s.leader { 1.0 } else { 0.0 });
        metrics::gauge!(m::EPOCH).set(s.epoch as f64);
        metrics::gauge!(m::SCHEDULES).set(s.schedules as f64);
        if let Some(n) = &self.options.notifier {
            n.status(&s.summary());
        }
    }

    fn notify_reloading(&self) {
        if let Some(n) = &self.options.notifier {
            n.reloading();
        }
    }

    /// READY=1 again after a reload (applied or rejected), with the current status.
    fn notify_reloaded(&self) {
        if let Some(n) = &self.options.notifier {
            n.ready(&self.status.borrow().summary());
        }
    }

    /// Counts ticks the misfire policy dropped.
    fn count_misfires(&self, schedule: &str, n: u64) {
        self.status.send_modify(|s| s.misfired += n);
        if m::enabled() {
            metrics::counter!(m::MISFIRES, "schedule" => schedule.to_string()).increment(n);
        }
    }

    fn margin(&self) -> Duration {
        (self.options.lease_ttl / 10).min(Duration::from_secs(1))
    }

    /// Renews the lease when due, or tries to acquire it when standby.
    async fn upkeep_lease(&mut self) {
        let now = Instant::now();
        let due = match &self.leader {
            Some(l) => now >= l.next_renew || now >= l.valid_until,
            None => now >= self.next_claim,
        };
        if !due {
            return;
        }
        let ttl = self.options.lease_ttl;
        let token = self.options.beat_id.clone();
        let sent = Instant::now();
        match self.store.claim(&token, ttl).await {
            Ok(Claim::Renewed { epoch })
                if self.leader.as_ref().is_some_and(|l| l.token.epoch == epoch) =>
            {
                self.broker_up();
                let margin = self.margin();
                let l = self.leader.as_mut().expect("checked");
                l.valid_until = sent + ttl - margin;
                l.next_renew = sent + ttl / 3;
            }
            Ok(Claim::Renewed { epoch }) | Ok(Claim::Acquired { epoch }) => {
                self.broker_up();
                // A new acquisition (or a lease we held in a previous life): take over.
                self.leader = Some(Leadership {
                    token: LeaderToken { token, epoch },
                    valid_until: sent + ttl - self.margin(),
                    next_renew: sent + ttl / 3,
                });
                self.become_leader(epoch).await;
            }
            Ok(Claim::HeldByOther { ttl_left }) => {
                self.broker_up();
                if self.leader.take().is_some() {
                    self.lose_leadership("another beat holds the lease").await;
                }
                // Try again when the other lease would run out (or sooner, in case it is
                // released on shutdown), with jitter so standbys do not collide.
                let wait =
                    ttl_left.min(ttl / 3) + Duration::from_millis(rand::random_range(0..100));
                self.next_claim = Instant::now() + wait;
            }
            Err(e) => {
                self.broker_failed(&e);
                match &mut self.leader {
                    Some(l) if Instant::now() < l.valid_until => {
                        // Keep firing until the lease may have expired; retry soon.
                        l.next_renew = Instant::now() + Duration::from_millis(250).min(ttl / 10);
                    }
                    Some(_) => {
                        self.leader = None;
                        self.lose_leadership("could not renew the lease before it ran out")
                            .await;
                        self.next_claim = Instant::now() + Duration::from_millis(500);
                    }
                    None => {
                        self.next_claim =
                            Instant::now() + Duration::from_millis(rand::random_range(250..750));
                    }
                }
            }
        }
        self.publish_status();
    }

    fn broker_up(&mut self) {
        if self.broker_down {
            tracing::info!("broker reachable again");
            self.broker_down = false;
        }
    }

    fn broker_failed(&mut self, e: &BrokerError) {
        if !self.broker_down {
            tracing::warn!(error = %e, "broker unreachable; retrying");
            self.broker_down = true;
        }
    }

    async fn lose_leadership(&mut self, why: &str) {
        tracing::warn!(reason = why, "lost leadership; standing by");
        self.pending.clear();
        self.publish_status();
        self.journal(vec![JournalEntry::new("leader_lost", None, why)])
            .await;
    }

    /// Took the lease: rebuild the agenda from now and catch up what was missed.
    async fn become_leader(&mut self, epoch: u64) {
        tracing::info!(epoch, beat = %self.options.beat_id, "became leader");
        self.journal(vec![JournalEntry::new(
            "leader_acquired",
            None,
            format!("epoch {epoch}"),
        )])
        .await;
        let now = self.clock.now();
        let names: Vec<String> = self.running.keys().map(|k| k.to_string()).collect();
        let last = match self.store.last_fired(&names).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read last fires; giving the lease up");
                if let Some(l) = self.leader.take() {
                    let _ = self.store.resign(&l.token.token).await;
                }
                self.next_claim = Instant::now() + Duration::from_secs(1);
                return;
            }
        };
        // A schedule that never fired is owed its ticks since it was first armed (by any
        // beat, else by this one): the ticks due while a previous leader was dying, or
        // between loading the configuration and winning the lease, are caught up by policy.
        // (When the store answers but has no record, e.g. after it lost its data, the
        // schedule counts as brand new: nothing to catch up, rather than re-firing a tick
        // this or another beat may already have fired.)
        let armed = match self.store.armed(&names).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read when schedules were armed; using this beat's own");
                names
                    .iter()
                    .map(|n| Some(self.running[n.as_str()].since))
                    .collect()
            }
        };
        self.agenda = Agenda::with_capacity(names.len());
        let mut fires = Vec::new();
        let mut entries = Vec::new();
        for ((name, last), armed) in names.iter().zip(last).zip(armed) {
            let (key, r) = self
                .running
                .get_key_value(name.as_str())
                .expect("names come from running");
            self.catch_up(r, last, armed, now, &mut fires, &mut entries);
            self.agenda.upsert(key.clone(), r.cfg.clone(), now);
        }
        drop(names);
        if self.running.len() >= RELEASE_MEMORY_FROM {
            // The previous agenda and the names read above are gone.
            crate::memory::release_freed();
        }
        self.journal(entries).await;
        if !fires.is_empty() {
            // Sent by the loop right after (in waves, keeping the lease alive in between).
            tracing::info!(count = fires.len(), "catching up missed ticks");
            self.pending = fires;
        }
        self.publish_status();
    }

    /// Applies a schedule's misfire policy to the ticks it missed since the later of its last
    /// decided tick and when it was armed (on a takeover, or when a reload adds it to a
    /// leader): the ticks to fire go to `fires`, a journal entry for those dropped to
    /// `entries`.
    fn catch_up(
        &self,
        r: &Running,
        last: Option<DateTime<Utc>>,
        armed: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        fires: &mut Vec<Fire>,
        entries: &mut Vec<JournalEntry>,
    ) {
        let name = r.cfg.name.as_str();
        let reference = match (last, armed) {
            (Some(l), Some(a)) => Some(l.max(a)),
            (l, a) => l.or(a),
        };
        let plan = misfire::plan_catch_up(&r.cfg.timing, reference, now, r.policy);
        if plan.dropped > 0 {
            let mut e = JournalEntry::new(
                "misfired",
                Some(name),
                format!(
                    "{}{} missed tick(s) not fired (from {} to {}; misfire policy: grace {}, catch_up {})",
                    if plan.count_is_lower_bound {
                        "at least "
                    } else {
                        ""
                    },
                    plan.dropped,
                    plan.dropped_first
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_default(),
                    plan.dropped_last
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_default(),
                    humantime::format_duration(r.policy.grace),
                    r.cfg.misfire.catch_up.name(),
                ),
            );
            e.nominal = plan.dropped_last;
            tracing::warn!(schedule = %name, dropped = plan.dropped, "missed ticks dropped by misfire policy");
            entries.push(e);
            self.count_misfires(name, plan.dropped as u64);
        }
        for nominal in plan.fire {
            fires.push(self.build_fire(r, nominal, now, true));
        }
    }

    fn build_fire(
        &self,
        r: &Running,
        nominal: DateTime<Utc>,
        now: DateTime<Utc>,
        catch_up: bool,
    ) -> Fire {
        let cfg = &r.cfg;
        let id = fire_id(&cfg.name, nominal);
        let mut m = TaskMessage::new(&cfg.task, &cfg.queue)
            .with_priority(cfg.priority)
            .with_args(cfg.args.clone())
            .with_fire(&cfg.name, id);
        if let Some(k) = &cfg.kwargs {
            m = m.with_kwargs(k.clone());
        }
        m.enqueued_at = now;
        m.expires = match cfg.expires {
            // Superseded by the schedule's next tick after both the nominal instant and now
            // (a late catch-up fire must not be born expired).
            Expires::Auto => cfg.timing.next_after(nominal.max(now)),
            Expires::Never => None,
            Expires::After(d) => chrono::Duration::from_std(d).ok().map(|d| nominal + d),
        };
        if let Some(key) = &self.options.signing {
            // Last: the signature covers everything above.
            key.sign(&mut m);
        }
        Fire {
            schedule: cfg.name.clone(),
            nominal,
            message: m,
            overlap_skip: cfg.overlap == Overlap::Skip,
            catch_up,
        }
    }

    /// Between two waves of a big batch: pings the watchdog and renews the lease when due, so
    /// that firing 100,000s of ticks never outlasts the lease. False when the lease was lost
    /// (or changed hands and came back: what is left of the batch is then stale).
    async fn keep_alive_between_waves(&mut self) -> bool {
        if let Some(n) = &self.options.notifier {
            n.watchdog_tick();
        }
        let epoch = self.leader.as_ref().map(|l| l.token.epoch);
        self.upkeep_lease().await;
        self.is_firing() && self.leader.as_ref().map(|l| l.token.epoch) == epoch
    }

    /// Pops due ticks and fires them (steady state).
    async fn fire_due(&mut self) {
        if self.fire_waves().await >= RELEASE_MEMORY_FROM {
            // The waves' messages are gone (tens of MiB for 100,000 fires).
            crate::memory::release_freed();
        }
    }

    /// [`Beat::fire_due`]'s waves; returns how many fires were sent.
    async fn fire_waves(&mut self) -> usize {
        let mut sent = 0;
        // Fires left from before (a transient error, or a takeover's catch-up), in waves.
        let mut rest = std::mem::take(&mut self.pending);
        while !rest.is_empty() {
            let n = rest.len().min(self.options.wave_limit);
            let batch: Vec<Fire> = rest.drain(..n).collect();
            sent += batch.len();
            self.send_fires(batch).await;
            if !self.pending.is_empty() {
                // Failed again: retried later, followed by the rest.
                self.pending.append(&mut rest);
                return sent;
            }
            if !self.is_firing() || (!rest.is_empty() && !self.keep_alive_between_waves().await) {
                return sent;
            }
        }
        // Waves are pipelined: while one is in Redis (sent on its own task), the next is
        // built here and sent; then the older one's outcomes are accounted for and the lease
        // kept alive before a third is built. The first wave is small, so that Redis has
        // work while the next, full one is built.
        let mut in_flight: Option<InFlight> = None;
        let mut limit = self.options.wave_limit.min(FIRST_WAVE);
        loop {
            let now = self.clock.now();
            let running = &self.running;
            let due = self
                .agenda
                .pop_due_within(now, limit, |name| running.get(name).map(|r| r.policy.grace));
            if due.is_empty() {
                if let Some(f) = in_flight.take() {
                    self.finish_send(f).await;
                }
                return sent;
            }
            let full = due.len() == limit;
            limit = self.options.wave_limit;
            let mut fires = Vec::with_capacity(due.len());
            let mut late = Vec::new();
            for d in due {
                let Some(r) = self.running.get(&*d.name) else {
                    continue;
                };
                match &d.late {
                    None => fires.push(self.build_fire(r, d.nominal, now, false)),
                    // Late beyond grace: the whole run of such ticks is dropped as one
                    // decision (the agenda already moved past it).
                    Some(run) if run.count == 1 => {
                        let mut e = JournalEntry::new(
                            "misfired",
                            Some(&d.name),
                            format!(
                                "tick was {} late, beyond its grace of {}",
                                humantime::format_duration(misfire::lateness(d.nominal, now)),
                                humantime::format_duration(r.policy.grace)
                            ),
                        );
                        e.nominal = Some(d.nominal);
                        e.fire_id = Some(fire_id(&d.name, d.nominal));
                        tracing::warn!(schedule = %d.name, nominal = %d.nominal, "tick too late; dropped");
                        self.count_misfires(&d.name, 1);
                        late.push(e);
                    }
                    Some(run) => {
                        let mut e = JournalEntry::new(
                            "misfired",
                            Some(&d.name),
                            format!(
                                "{}{} missed tick(s) not fired (from {} to {}; late beyond their grace of {})",
                                if run.count_is_lower_bound {
                                    "at least "
                                } else {
                                    ""
                                },
                                run.count,
                                run.first.to_rfc3339(),
                                run.last.unwrap_or(run.resume_after).to_rfc3339(),
                                humantime::format_duration(r.policy.grace),
                            ),
                        );
                        e.nominal = Some(run.last.unwrap_or(run.first));
                        tracing::warn!(
                            schedule = %d.name,
                            dropped = run.count,
                            first = %run.first,
                            "ticks too late; dropped"
                        );
                        self.count_misfires(&d.name, run.count as u64);
                        late.push(e);
                    }
                }
            }
            if !late.is_empty() {
                self.journal(late).await;
            }
            // Sent at once: the previous wave may still be in Redis (each script call checks
            // the lease itself, and the store dedupes a retry).
            sent += fires.len();
            let next = self.start_send(fires);
            if let Some(f) = in_flight.take() {
                let epoch = f.epoch;
                self.finish_send(f).await;
                let same_lease = self.leader.as_ref().map(|l| l.token.epoch) == Some(epoch);
                if !self.pending.is_empty()
                    || !same_lease
                    || !self.is_firing()
                    || !self.keep_alive_between_waves().await
                {
                    // Stopping: the wave just sent is accounted for like any (kept for a
                    // retry on a transient failure, dropped with a lost lease).
                    if let Some(n) = next {
                        self.finish_send(n).await;
                    }
                    return sent;
                }
            }
            in_flight = next;
            if !full {
                if let Some(f) = in_flight.take() {
                    self.finish_send(f).await;
                }
                return sent;
            }
        }
    }

    /// Sends fires to the store and accounts for the outcomes.
    async fn send_fires(&mut self, fires: Vec<Fire>) {
        if let Some(f) = self.start_send(fires) {
            self.finish_send(f).await;
        }
    }

    /// Sends fires to the store on a task of their own (the caller goes on building the next
    /// wave meanwhile). `None` when there is nothing to send or no lease to send under.
    fn start_send(&self, fires: Vec<Fire>) -> Option<InFlight> {
        if fires.is_empty() {
            return None;
        }
        let token = self.leader.as_ref()?.token.clone();
        let epoch = token.epoch;
        let store = self.store.clone();
        let fires = Arc::new(fires);
        let sending = fires.clone();
        let task = tokio::spawn(async move { store.fire(&token, &sending).await });
        Some(InFlight { fires, task, epoch })
    }

    /// Waits for a send started by [`Beat::start_send`] and accounts for its outcomes.
    async fn finish_send(&mut self, f: InFlight) {
        let result = f.task.await.unwrap_or_else(|e| {
            // The store call panicked: a non-transient failure (the ticks are journaled as
            // misfired, not retried).
            Err(BrokerError::Backend(format!("fire task failed: {e}")))
        });
        let fires = Arc::try_unwrap(f.fires).unwrap_or_else(|shared| (*shared).clone());
        self.account(fires, result, f.epoch).await;
    }

    /// Accounts for the outcomes of a send made under lease `epoch`: status, logs, metrics;
    /// a transient failure keeps the fires for a retry (after those kept already).
    async fn account(
        &mut self,
        fires: Vec<Fire>,
        result: Result<Vec<FireOutcome>, BrokerError>,
        epoch: u64,
    ) {
        // Answers about a lease this beat no longer holds (lost, or lost and won again
        // meanwhile) change nothing about the current one.
        let current = self.leader.as_ref().map(|l| l.token.epoch) == Some(epoch);
        match result {
            Ok(outcomes) => {
                self.broker_up();
                let published = self.clock.now();
                let record = m::enabled();
                // One INFO line per fire, except in big waves (thousands of minute crons due
                // at :00), where per-fire lines go to DEBUG and INFO gets one summary.
                let each = fires.len() <= LOG_EACH_FIRE_UP_TO;
                let mut lost = false;
                let mut fired = 0u64;
                let mut skipped = 0u64;
                let mut last: Option<(String, DateTime<Utc>)> = None;
                for (f, o) in fires.iter().zip(outcomes) {
                    let fid = f.message.fire_id.as_deref().unwrap_or("");
                    match o {
                        FireOutcome::Fired => {
                            fired += 1;
                            macro_rules! fired {
                                ($level:ident) => {
                                    tracing::$level!(
                                        schedule = %f.schedule,
                                        nominal = %f.nominal.to_rfc3339(),
                                        fire_id = fid,
                                        id = %f.message.id,
                                        queue = %f.message.queue,
                                        catch_up = f.catch_up,
                                        "fired"
                                    )
                                };
                            }
                            if each {
                                fired!(info);
                            } else {
                                fired!(debug);
                            }
                            if last.as_ref().is_none_or(|(_, t)| f.nominal >= *t) {
                                last = Some((f.schedule.clone(), f.nominal));
                            }
                            if record {
                                let late = (published - f.nominal).num_microseconds().unwrap_or(0);
                                metrics::histogram!(m::FIRE_LATENESS)
                                    .record(late.max(0) as f64 / 1e6);
                                metrics::counter!(m::FIRES, "schedule" => f.schedule.clone())
                                    .increment(1);
                            }
                        }
                        FireOutcome::AlreadyFired => {
                            tracing::debug!(schedule = %f.schedule, fire_id = fid, "already fired")
                        }
                        FireOutcome::SkippedOverlap { running } => {
                            skipped += 1;
                            tracing::info!(
                                schedule = %f.schedule, fire_id = fid, running = %running,
                                "skipped: previous run still queued or running"
                            );
                            if record {
                                metrics::counter!(m::SKIPS, "schedule" => f.schedule.clone(), "reason" => "overlap").increment(1);
                            }
                        }
                        FireOutcome::Paused => {
                            skipped += 1;
                            tracing::info!(schedule = %f.schedule, fire_id = fid, "skipped: paused");
                            if record {
                                metrics::counter!(m::SKIPS, "schedule" => f.schedule.clone(), "reason" => "paused").increment(1);
                            }
                        }
                        FireOutcome::NotLeader => lost = true,
                    }
                }
                self.status.send_modify(|s| {
                    s.fired += fired;
                    s.skipped += skipped;
                    if last.is_some() {
                        s.last_fire = last;
                    }
                });
                if !each {
                    tracing::info!(
                        fired,
                        skipped,
                        batch = fires.len(),
                        first_nominal = %fires[0].nominal.to_rfc3339(),
                        "fired a wave (per-fire events at debug level)"
                    );
                }
                self.publish_status();
                if lost && current {
                    self.leader = None;
                    self.next_claim = Instant::now();
                    self.lose_leadership("the store says another beat leads")
                        .await;
                }
            }
            Err(e) if e.is_transient() => {
                // Ambiguous: some may have fired. Retrying is safe: the store dedupes the
                // ticks. Their messages go again under new ids (a store must never see a
                // message id twice: `BeatStore::fire`).
                self.broker_failed(&e);
                if current {
                    let signing = self.options.signing.as_deref();
                    self.pending.extend(fires.into_iter().map(|mut f| {
                        f.renew_id(signing);
                        f
                    }));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, count = fires.len(), "fire failed; ticks dropped");
                let entries = fires
                    .iter()
                    .map(|f| {
                        let mut j = JournalEntry::new(
                            "misfired",
                            Some(&f.schedule),
                            format!("fire failed: {e}"),
                        );
                        j.nominal = Some(f.nominal);
                        j
                    })
                    .collect();
                self.journal(entries).await;
            }
        }
    }

    async fn journal(&self, mut entries: Vec<JournalEntry>) {
        if entries.is_empty() {
            return;
        }
        for e in &mut entries {
            e.beat = self.options.beat_id.clone();
        }
        if let Err(e) = self.store.journal(&entries).await {
            tracing::debug!(error = %e, "journal write failed");
        }
    }

    fn policy_of(cfg: &ScheduleConfig, now: DateTime<Utc>) -> Policy {
        Policy {
            grace: cfg
                .misfire
                .grace
                .unwrap_or_else(|| misfire::default_grace(&cfg.timing, now)),
            catch_up: match cfg.misfire.catch_up {
                config::CatchUp::None => CatchUp::None,
                config::CatchUp::Latest => CatchUp::Latest,
                config::CatchUp::All => CatchUp::All {
                    max: cfg.misfire.max,
                },
            },
        }
    }

    /// Installs a configuration as a diff against the running one.
    fn install(&mut self, config: Arc<Config>) -> Diff {
        let now = self.clock.now();
        let (mut added, mut changed, mut removed) = (Vec::new(), Vec::new(), Vec::new());
        let mut retimed = Vec::new();
        let old: Vec<Arc<str>> = self.running.keys().cloned().collect();
        for name in old {
            let keep = config.schedules.get(&*name).is_some_and(|s| s.enabled);
            if !keep {
                self.running.remove(&name);
                self.agenda.remove(&name);
                removed.push(name.to_string());
            }
        }
        for (name, cfg) in &config.schedules {
            if !cfg.enabled {
                continue;
            }
            match self.running.get_key_value(name.as_str()) {
                Some((_, r)) if r.cfg.same_settings(cfg) => {}
                Some((key, r)) => {
                    let key = key.clone();
                    let timing_changed = r.cfg.timing != cfg.timing;
                    let cfg = cfg.clone();
                    let policy = Self::policy_of(&cfg, now);
                    if timing_changed {
                        self.agenda.upsert(key.clone(), cfg.clone(), now);
                    } else {
                        // Same ticks: only the settings the agenda holds change.
                        self.agenda.replace(name, cfg.clone());
                    }
                    // New timing: its ticks are owed from now on, not since the old one's.
                    let since = if timing_changed {
                        retimed.push(name.clone());
                        now
                    } else {
                        r.since
                    };
                    self.running.insert(key, Running { cfg, policy, since });
                    changed.push(name.clone());
                }
                None => {
                    let cfg = cfg.clone();
                    let policy = Self::policy_of(&cfg, now);
                    let key: Arc<str> = name.as_str().into();
                    self.agenda.upsert(key.clone(), cfg.clone(), now);
                    self.running.insert(
                        key,
                        Running {
                            cfg,
                            policy,
                            since: now,
                        },
                    );
                    added.push(name.clone());
                }
            }
        }
        // Fires waiting for a retry belong to schedules that may be gone now.
        self.pending
            .retain(|f| self.running.contains_key(f.schedule.as_str()));
        self.config = config;
        Diff {
            added,
            changed,
            removed,
            retimed,
        }
    }

    async fn apply_reload(&mut self, config: Arc<Config>) {
        let now = self.clock.now();
        let Diff {
            added,
            changed,
            removed,
            retimed,
        } = self.install(config);
        self.status.send_modify(|s| s.settled = None);
        if self.running.len() >= RELEASE_MEMORY_FROM {
            // The previous configuration (and the tree it was parsed from) is gone.
            crate::memory::release_freed();
        }
        // A removed schedule is disarmed: added back later, it is armed afresh and owed
        // ticks from then only, not those of the time it was absent (on this beat's next
        // takeover, or another beat's). Likewise a new timing is armed now: the next leader
        // must not take its ticks from before the reload for missed ones. (The last decided
        // tick stays: it refuses ticks decided already.) Best effort: a beat that misses
        // this falls back to the grace window of the last decided tick.
        let disarm: Vec<String> = removed.iter().chain(&retimed).cloned().collect();
        if !disarm.is_empty()
            && let Err(e) = self.store.disarm(&disarm).await
        {
            tracing::warn!(error = %e, "cannot disarm the removed or retimed schedules");
        }
        let arm: Vec<String> = added.iter().chain(&retimed).cloned().collect();
        if !arm.is_empty()
            && let Err(e) = self.store.arm(&arm, now).await
        {
            tracing::warn!(error = %e, "cannot record the added or retimed schedules' start");
        }
        if self.leader.is_some() && !added.is_empty() {
            self.catch_up_added(&added, now).await;
        }
        self.status.send_modify(|s| s.reloads += 1);
        metrics::counter!(m::RELOADS, "result" => "applied").increment(1);
        self.publish_status();
        let detail = format!(
            "added [{}], changed [{}], removed [{}]",
            added.join(", "),
            changed.join(", "),
            removed.join(", ")
        );
        tracing::info!(
            added = added.len(),
            changed = changed.len(),
            removed = removed.len(),
            "{}",
            format_args!("reload applied: {detail}")
        );
        self.journal(vec![JournalEntry::new("reload_applied", None, detail)])
            .await;
    }

    /// A leader catches up the schedules a reload added, as a takeover does: a schedule armed
    /// earlier by another beat (which reloaded first, then died before firing it) is owed
    /// its ticks since, by its misfire policy. (Armed just now, it is owed nothing.)
    async fn catch_up_added(&mut self, added: &[String], now: DateTime<Utc>) {
        let records = match self.store.last_fired(added).await {
            Ok(last) => self.store.armed(added).await.map(|armed| (last, armed)),
            Err(e) => Err(e),
        };
        let (last, armed) = match records {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the added schedules' records; not catching them up");
                return;
            }
        };
        let mut fires = Vec::new();
        let mut entries = Vec::new();
        for ((name, last), armed) in added.iter().zip(last).zip(armed) {
            if let Some(r) = self.running.get(name.as_str()) {
                self.catch_up(r, last, armed, now, &mut fires, &mut entries);
            }
        }
        self.journal(entries).await;
        if !fires.is_empty() {
            tracing::info!(count = fires.len(), "catching up ticks of added schedules");
            self.pending.extend(fires);
        }
    }

    /// The configuration currently running.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The next tick of a schedule as the agenda has it.
    pub fn next_of(&mut self, name: &str) -> Option<DateTime<Utc>> {
        self.agenda.next_of(name)
    }
}

/// The timing of a schedule, for messages.
pub fn describe(timing: &Timing) -> String {
    match timing {
        Timing::Cron(c) => format!("cron `{}` in {}", c.expr().source(), c.timezone().name()),
        Timing::Interval(i) => format!("every {}", humantime::format_duration(i.every())),
    }
}
