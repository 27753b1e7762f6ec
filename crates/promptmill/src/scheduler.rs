//! The live scheduler: takes planned rows, keeps up to `max_in_flight` requests going under
//! the limiter and the budget, retries what is transient, and journals every finished row
//! the moment it finishes.
//!
//! Two cancellation signals run through it, as in mini-redis's shutdown: `stop` ends
//! scheduling (Ctrl-C, budget reached, a fatal API error) while requests in flight finish;
//! `cancel` drops the requests in flight too (a second Ctrl-C, the grace period over, or
//! a fatal error where waiting cannot help).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cache::{self, Cache};
use crate::client::{Action, ApiError, Client, Completion, ErrorKind};
use crate::cost::{ModelPrice, Tier};
use crate::drive::retry::{RetryKind, RetryPolicy};
use crate::journal::{JournalError, JournalWriter, Record, Status, Unfinished};
use crate::limit::Limiter;
use crate::pipeline::ledger::{Cap, Charge, Ledger, Reservation};
use crate::pipeline::shared_budget::{SharedBudget, Verdict};
use crate::progress::Progress;
use crate::types::{Money, Usage};
use crate::watchdog::{Watchdog, WatchdogLimits};

/// A row ready to be sent.
#[derive(Debug)]
pub struct WorkItem {
    pub row: u64,
    pub id: String,
    pub hash: String,
    pub body: Value,
    /// Tokens the limiter charges before sending (prompt + max completion).
    pub limiter_tokens: u64,
    /// Worst-case cost reserved against the budget.
    pub worst_cost: Money,
    /// What an answer without usage is counted as (see [`UsageGuess`]).
    pub guess: UsageGuess,
    /// What the request is for.
    pub kind: Kind,
    /// The row's own model (`model.name_column`), priced from [`Scheduler::prices`];
    /// `None`: the kind's [`Profile`] price.
    pub model: Option<String>,
    /// A prefix group's primer: dropped once the item ends (answered, failed for good or
    /// dropped unsent), which releases the rest of its group (see [`crate::prime`]).
    pub primer: Option<std::sync::mpsc::Sender<()>>,
    /// The `prompt_cache_key`s of its prefix group, one chosen when each attempt is sent.
    pub cache_key: Option<Arc<crate::prime::KeyShards>>,
    /// Its prefix group's cache counts, which its answer's usage adds to.
    pub group: Option<Arc<crate::prime::Tally>>,
}

/// What a request is for: the row's answer, a rejected row's new attempt, or the judge's
/// verdict on an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// The row's answer.
    Answer,
    /// A rejected row's new attempt: the hash of the row's own request and the attempt's
    /// number (see [`Record::regen_of`]).
    Regen { of: String, attempt: u32 },
    /// The judge's verdict on the row's answer: priced and read with the scheduler's
    /// [`Scheduler::judge`] profile, and journaled under the judge's own identity.
    Judge,
    /// An `[[outputs]]` text for the row: plain text (no schema), priced at its model's
    /// price, journaled under the output's own identity.
    Output,
}

impl WorkItem {
    /// The work of sending a request the row loop planned.
    pub fn of(req: crate::pipeline::rows::Request, kind: Kind) -> WorkItem {
        WorkItem {
            model: req.model,
            row: req.row,
            id: req.id,
            hash: req.hash,
            body: req.body,
            limiter_tokens: req.limiter_tokens,
            worst_cost: req.worst_cost.unwrap_or(Money::ZERO),
            guess: UsageGuess {
                prompt_tokens: req.prompt_tokens,
                worst: req.worst,
            },
            kind,
            primer: None,
            cache_key: None,
            group: None,
        }
    }
}

/// How the answers to one kind of request are priced and read: the job's model, or the
/// judge's.
#[derive(Default)]
pub struct Profile {
    pub price: Option<ModelPrice>,
    /// The structured-output schema: answers that do not follow it are retried, and its
    /// top-level fields are stored in the record (see [`crate::schema`]).
    pub schema: Option<Value>,
    /// Counts answers that come without usage; without it they are charged the worst case.
    pub usage_counter: Option<UsageCounter>,
}

/// What a row's answer is counted as when the server sends no `usage`: never zero.
#[derive(Debug, Clone, Copy, Default)]
pub struct UsageGuess {
    /// The prompt's tokens as the estimate counted them.
    pub prompt_tokens: u64,
    /// The worst case reserved (prompt with its margin, plus every completion token
    /// allowed): what a model with no tokenizer of its own is charged.
    pub worst: Usage,
}

/// Counts the tokens of answers that came without usage, with the model's own tokenizer
/// (loaded on the first such answer only: most servers always send usage).
pub struct UsageCounter {
    model: String,
    exact: bool,
    counter: std::sync::OnceLock<crate::tokens::TokenCounter>,
}

impl UsageCounter {
    /// A counter for `model`; `exact` says whether its prompt counts are the provider's.
    pub fn new(model: &str, exact: bool) -> UsageCounter {
        UsageCounter {
            model: model.to_string(),
            exact,
            counter: std::sync::OnceLock::new(),
        }
    }

    /// The usage of an answer the server did not count: the prompt as the estimate counted
    /// it and the completion counted from the returned text, or, for a model without a
    /// tokenizer, the worst case reserved. Marked estimated either way.
    pub fn guess(&self, guess: &UsageGuess, choices: &[crate::client::Choice]) -> Usage {
        if !self.exact {
            return Usage {
                estimated: true,
                ..guess.worst
            };
        }
        let counter = self
            .counter
            .get_or_init(|| crate::tokens::TokenCounter::for_model(&self.model));
        let completion = choices
            .iter()
            .map(|c| counter.count_text(&c.text))
            .fold(0u64, u64::saturating_add);
        Usage {
            prompt_tokens: guess.prompt_tokens,
            completion_tokens: completion,
            estimated: true,
            ..Usage::default()
        }
    }
}

/// Counters of one run, shared by all requests.
#[derive(Debug, Default)]
pub struct RunStats {
    /// HTTP attempts sent.
    pub attempts: AtomicU64,
    /// Attempts that were retries.
    pub retries: AtomicU64,
    /// 429 rate-limit answers.
    pub rate_limited: AtomicU64,
    /// 5xx answers.
    pub server_errors: AtomicU64,
    /// Attempts that could not connect (or lost the connection).
    pub connection_errors: AtomicU64,
    /// Attempts that timed out.
    pub timeouts: AtomicU64,
    /// Other failed attempts (bad bodies, 4xx).
    pub other_errors: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    /// Tokens reported by the API in this run (prompt + completion).
    pub tokens: AtomicU64,
    /// Regeneration attempts that ended (a new answer, or a failure that kept the old one).
    pub regenerated: AtomicU64,
    /// Judge requests that ended (a verdict, or a failure).
    pub judged: AtomicU64,
    /// The rows those attempts were for.
    pub regenerated_rows: Mutex<std::collections::HashSet<u64>>,
    /// The prompt cache's share of the rows' answers (at the job's model) in this run:
    /// tokens read, written, and written for an hour.
    pub cache_read: AtomicU64,
    pub cache_write: AtomicU64,
    pub cache_write_1h: AtomicU64,
}

impl RunStats {
    /// Counts one ended regeneration attempt of `row`.
    fn regenerated(&self, row: u64) {
        self.regenerated.fetch_add(1, Relaxed);
        self.regenerated_rows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(row);
    }
}

/// Why scheduling ended.
#[derive(Debug, Clone, PartialEq)]
pub enum StopReason {
    /// Every planned row was sent and finished.
    Completed,
    /// The API said no for every row (bad key, no quota…); the message says what.
    Aborted(String),
    /// The next request could have crossed this budget cap.
    Budget(Cap),
    /// Ctrl-C or SIGTERM.
    Interrupted,
}

/// Everything a request task needs.
pub struct Scheduler {
    pub client: Client,
    pub limiter: Limiter,
    /// Every dollar reserved, settled and released goes through it.
    pub ledger: Arc<Ledger>,
    /// `budget.shared`: the total cap held in Redis with every other process on its key;
    /// each request reserves there too, after the local ledger.
    pub shared_budget: Option<SharedBudget>,
    pub journal: Mutex<JournalWriter>,
    /// How the rows' answers are priced and read.
    pub answer: Profile,
    /// How the judge's verdicts are priced and read ([`Kind::Judge`] items).
    pub judge: Profile,
    /// How `[[outputs]]` answers are read: plain text, priced by their model
    /// ([`WorkItem::model`]).
    pub plain: Profile,
    /// Where rows' own models (`model.name_column`) are priced.
    pub prices: std::borrow::Cow<'static, crate::cost::PriceTable>,
    pub tier: Tier,
    /// The live tier asked for (`model.service_tier`): answers that do not say which tier
    /// served them are priced at it.
    asked: Tier,
    /// With flex: how long a row may meet "resource unavailable" before it is sent at the
    /// standard tier (`model.flex_fallback_after_secs`).
    flex_fallback: Option<Duration>,
    /// How long to wait before each retry, and when to give a row up (see
    /// [`crate::drive::retry`]); its seed is random unless the caller sets one.
    pub retry: RetryPolicy,
    pub max_in_flight: u32,
    pub stats: RunStats,
    pub progress: Progress,
    /// Stop taking new rows.
    pub stop: CancellationToken,
    /// Drop requests in flight.
    pub cancel: CancellationToken,
    /// Where successful responses are also stored (`--cache`), if anywhere.
    pub cache: Option<Cache>,
    /// Stops the job when failed attempts say it cannot go on (endpoint down, only 429s).
    pub watchdog: Watchdog,
    abort_reason: Mutex<Option<String>>,
    interrupted: std::sync::atomic::AtomicBool,
}

impl Scheduler {
    /// A scheduler with fresh counters.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        limiter: Limiter,
        ledger: Arc<Ledger>,
        journal: JournalWriter,
        price: Option<ModelPrice>,
        tier: Tier,
        max_retries: u32,
        max_in_flight: u32,
        progress: Progress,
    ) -> Scheduler {
        Scheduler {
            client,
            limiter,
            ledger,
            shared_budget: None,
            journal: Mutex::new(journal),
            answer: Profile {
                price,
                ..Profile::default()
            },
            judge: Profile::default(),
            plain: Profile::default(),
            prices: std::borrow::Cow::Borrowed(crate::cost::PriceTable::builtin()),
            tier,
            asked: tier,
            flex_fallback: None,
            retry: RetryPolicy::new(max_retries, rand::random()),
            max_in_flight: max_in_flight.max(1),
            stats: RunStats::default(),
            progress,
            stop: CancellationToken::new(),
            cancel: CancellationToken::new(),
            cache: None,
            watchdog: Watchdog::new(WatchdogLimits {
                errors: 0,
                refused: None,
            }),
            abort_reason: Mutex::new(None),
            interrupted: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Also stores every successful response in `cache`.
    pub fn with_cache(mut self, cache: Option<Cache>) -> Scheduler {
        self.cache = cache;
        self
    }

    /// Asks for `asked` (a live tier: standard, flex or priority) and, with flex, falls back
    /// to the standard tier after `flex_fallback` of "resource unavailable" answers.
    pub fn with_service_tier(mut self, asked: Tier, flex_fallback: Option<Duration>) -> Scheduler {
        if self.tier != Tier::Batch {
            self.asked = asked;
            self.flex_fallback = flex_fallback.filter(|_| asked == Tier::Flex);
        }
        self
    }

    /// The tier answers are priced at when they do not name one.
    pub fn asked_tier(&self) -> Tier {
        self.asked
    }

    /// The tier a row's worst case is reserved at: priority when asked, else standard (or
    /// batch).
    pub fn reserve_tier(&self) -> Tier {
        match (self.tier, self.asked) {
            (Tier::Batch, _) => Tier::Batch,
            (_, Tier::Priority) => Tier::Priority,
            _ => Tier::Live,
        }
    }

    /// Marks the run as interrupted by a signal (the first one stops scheduling).
    pub fn interrupt(&self) {
        self.interrupted.store(true, Relaxed);
        self.stop.cancel();
    }

    /// Stops the job for a reason that no retry can fix; only the first reason is kept.
    /// Nothing new is sent, but the requests already in flight may have been answered (and
    /// billed), so they get the same grace as after Ctrl-C before they are dropped: an
    /// answer that arrives is kept, not paid for a second time on resume.
    fn abort(&self, e: &ApiError) {
        self.keep_first_reason(self.client.scrub(&describe_abort(e)));
        self.stop.cancel();
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ABORT_GRACE).await;
            cancel.cancel();
        });
    }

    /// Stops the job now (requests in flight are dropped, their rows stay pending) and
    /// says why; only the first reason is kept.
    fn stop_job(&self, reason: &str) {
        self.keep_first_reason(self.client.scrub(reason));
        self.stop.cancel();
        self.cancel.cancel();
    }

    /// Sends every item from `rx`; returns when all are finished or the run is stopped.
    pub async fn run(self: Arc<Self>, mut rx: mpsc::Receiver<WorkItem>) -> StopReason {
        let sem = Arc::new(Semaphore::new(self.max_in_flight as usize));
        let mut tasks = JoinSet::new();
        let mut budget_stop = None;
        'feed: loop {
            let item = tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                item = rx.recv() => match item { Some(i) => i, None => break },
            };
            let permit = tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                p = sem.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            // Reserve the worst case. If it does not fit, wait for requests in flight to
            // settle (they usually cost less than reserved); stop only when none are left.
            let reservation = loop {
                let cap = match self.ledger.reserve(item.worst_cost) {
                    Ok(r) => match self.reserve_shared(item.worst_cost).await {
                        Ok(true) => break r,
                        Ok(false) => {
                            self.ledger.release(r);
                            Cap::Total
                        }
                        Err(why) => {
                            self.ledger.release(r);
                            self.stop_job(&why);
                            break 'feed;
                        }
                    },
                    Err(cap) => cap,
                };
                if tasks.is_empty() {
                    budget_stop = Some(cap);
                    self.stop.cancel();
                    break 'feed;
                }
                tokio::select! {
                    _ = self.stop.cancelled() => break 'feed,
                    done = tasks.join_next() => self.joined(done),
                }
            };
            while let Some(done) = tasks.try_join_next() {
                self.joined(Some(done));
            }
            // The reservation is journaled before the request can be sent: if this process
            // is killed with it in flight, the next run counts its worst case as spent.
            let journaled = self.journal().reserve(item.row, self.priced(&item));
            let reservation = match journaled {
                Ok(id) => Held {
                    res: reservation,
                    id,
                },
                Err(e) => {
                    self.settle_shared(reservation.worst(), Charge::Nothing)
                        .await;
                    self.ledger.release(reservation);
                    self.journal_failed(e);
                    break;
                }
            };
            let me = self.clone();
            tasks.spawn(async move { me.process(item, permit, reservation).await });
        }
        while let Some(done) = tasks.join_next().await {
            self.joined(Some(done));
        }
        if let Some(reason) = self
            .abort_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return StopReason::Aborted(reason);
        }
        if let Some(cap) = budget_stop {
            return StopReason::Budget(cap);
        }
        if self.interrupted.load(Relaxed) {
            return StopReason::Interrupted;
        }
        StopReason::Completed
    }

    async fn process(&self, item: WorkItem, permit: OwnedSemaphorePermit, res: Held) {
        let _permit = permit;
        // Tokens paid for answers thrown away (invalid structured output): billed all the
        // same, so they outlive the attempts even when the run stops before the row ends.
        let mut wasted: Option<Usage> = None;
        let record = tokio::select! {
            biased;
            _ = self.cancel.cancelled() => None,
            r = self.attempts(&item, &mut wasted) => r,
        };
        let Some(mut record) = record else {
            self.unfinished(&item, wasted, res).await;
            return;
        };
        if item.kind == Kind::Judge {
            self.stats.judged.fetch_add(1, Relaxed);
        }
        if let Kind::Regen { of, attempt } = &item.kind {
            self.stats.regenerated(item.row);
            if record.status != Status::Ok {
                // A new attempt that failed keeps the row's last answer (and its check
                // results): what it cost is spent, and nothing else changes.
                let paid = match (record.usage, wasted) {
                    (Some(mut u), Some(w)) => {
                        u.add(&w);
                        Some(u)
                    }
                    (u, w) => u.or(w),
                };
                self.unfinished(&item, paid, res).await;
                return;
            }
            record.regen_of = Some(of.clone());
            record.regenerated = *attempt;
        }
        let ok = record.status == Status::Ok;
        if matches!(item.kind, Kind::Judge | Kind::Output) {
            // Not a row's answer: the rows are counted when their answers come.
        } else if ok {
            self.stats.succeeded.fetch_add(1, Relaxed);
        } else {
            self.stats.failed.fetch_add(1, Relaxed);
        }
        if let Some(u) = &record.usage {
            if let Some(t) = &item.group {
                t.add(u);
            }
            if matches!(item.kind, Kind::Answer | Kind::Regen { .. }) && item.model.is_none() {
                self.stats.cache_read.fetch_add(u.cached_tokens, Relaxed);
                self.stats
                    .cache_write
                    .fetch_add(u.cache_write_tokens, Relaxed);
                self.stats
                    .cache_write_1h
                    .fetch_add(u.cache_write_1h_tokens, Relaxed);
            }
        }
        let charge = Charge::of(record.usage.is_some(), record.cost_pico);
        let journaled = self.journal().append_settling(&record, Some(res.id));
        self.settle_shared(res.res.worst(), charge).await;
        self.pay(res.res, record.usage.as_ref(), charge);
        if let Err(e) = journaled {
            self.journal_failed(e);
            return;
        }
        if let (true, Some(c)) = (ok, &self.cache) {
            // The journal already holds the response; a cache that cannot be written costs
            // only a future saving, so it is reported and the run goes on.
            let entry = cache::Entry {
                hash: record.hash.clone(),
                choices: record.choices.clone(),
                usage: record.usage,
                fields: record.fields.clone(),
            };
            if let Err(e) = c.put(&entry) {
                tracing::warn!("{}: cannot store a response: {e}", c.dir().display());
            }
        }
        // A regenerated or judged row was counted when its first answer came.
        if item.kind == Kind::Answer {
            self.progress.row_done(ok);
        }
    }

    /// A row the run stopped before it ended: its reservation goes back, except what its
    /// thrown-away answers cost, which is spent and journaled (the row stays pending).
    async fn unfinished(&self, item: &WorkItem, wasted: Option<Usage>, res: Held) {
        let Some(usage) = wasted else {
            self.settle_shared(res.res.worst(), Charge::Nothing).await;
            self.ledger.release(res.res);
            if let Err(e) = self.journal().release(item.row, res.id) {
                self.journal_failed(e);
            }
            return;
        };
        let cost = self.cost(item, &usage, self.served(self.asked, None));
        let charge = Charge::of(true, cost.map(|c| c.0));
        self.settle_shared(res.res.worst(), charge).await;
        self.pay(res.res, Some(&usage), charge);
        let spend = Unfinished {
            row: item.row,
            id: item.id.clone(),
            hash: item.hash.clone(),
            usage,
            cost_pico: cost.map(|c| c.0),
        };
        if let Err(e) = self.journal().append_unfinished(&spend, Some(res.id)) {
            self.journal_failed(e);
        }
    }

    /// Records why the job stops, unless an earlier reason was recorded already.
    fn keep_first_reason(&self, reason: String) {
        let mut g = self.abort_reason.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(reason);
        }
    }

    /// A row's task ended. One that panicked (a bug: no input should cause it) stops the
    /// run as aborted instead of letting it report "completed" with the row silently
    /// pending; the row is sent again on resume.
    fn joined(&self, done: Option<Result<(), tokio::task::JoinError>>) {
        if let Some(Err(e)) = done {
            if e.is_panic() {
                self.keep_first_reason(
                    "internal error: a request task panicked (please report it); its row \
                     stays pending, run the same command again to resume"
                        .into(),
                );
                self.stop.cancel();
            }
        }
    }

    /// Reserves `worst` in the shared budget too, if there is one: true to send, false when
    /// every process together would cross the cap; `Err` stops the job (Redis failed and
    /// `on_shared_failure = "stop"`).
    async fn reserve_shared(&self, worst: Money) -> Result<bool, String> {
        let Some(b) = &self.shared_budget else {
            return Ok(true);
        };
        match b.reserve(worst).await? {
            Verdict::Reserved | Verdict::Local => Ok(true),
            Verdict::OverCap => Ok(false),
        }
    }

    /// Settles a reservation of `worst` in the shared budget, if there is one: what was paid
    /// (an unknown price stays at the worst case), or nothing.
    async fn settle_shared(&self, worst: Money, charge: Charge) {
        if let Some(b) = &self.shared_budget {
            let paid = match charge {
                Charge::Nothing => Some(Money::ZERO),
                Charge::Priced(m) => Some(m),
                Charge::Unpriced => None,
            };
            b.settle(worst, paid).await;
        }
    }

    /// Settles a reservation with what was paid, and counts the tokens.
    fn pay(&self, res: Reservation, usage: Option<&Usage>, charge: Charge) {
        self.ledger.settle(res, charge);
        if let Some(u) = usage {
            self.stats.tokens.fetch_add(u.total(), Relaxed);
        }
    }

    /// A worst case as the journal records it: None when the model has no price (then it
    /// is $0 only because nothing is known, and counts as unpriced if never settled).
    fn priced(&self, item: &WorkItem) -> Option<u64> {
        self.price(item).map(|_| item.worst_cost.0)
    }

    /// The price `item` is paid at: its row's own model's, or its kind's.
    fn price<'s>(&'s self, item: &'s WorkItem) -> Option<&'s ModelPrice> {
        match &item.model {
            Some(m) => self.prices.lookup(m),
            None => self.profile(item).price.as_ref(),
        }
    }

    /// How `item`'s answer is priced and read.
    fn profile(&self, item: &WorkItem) -> &Profile {
        match item.kind {
            Kind::Judge => &self.judge,
            Kind::Output => &self.plain,
            _ => &self.answer,
        }
    }

    /// What `usage` costs at the price of `item`'s model (None without a price).
    fn cost(&self, item: &WorkItem, usage: &Usage, tier: Tier) -> Option<Money> {
        Some(self.price(item)?.cost(usage, tier))
    }

    /// The tier an answer is billed at: batch in batch mode; else the tier the server says
    /// it served (`service_tier`), else the one asked for.
    fn served(&self, asked: Tier, said: Option<&str>) -> Tier {
        match (self.tier, said) {
            (Tier::Batch, _) => Tier::Batch,
            (_, Some(t)) => Tier::from_served(t),
            (_, None) => asked,
        }
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, JournalWriter> {
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the run: what is not journaled is not safe.
    fn journal_failed(&self, e: JournalError) {
        let mut g = self.abort_reason.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(format!("cannot write the journal: {e}"));
        }
        self.stop.cancel();
        self.cancel.cancel();
    }

    /// Tries one row until it succeeds, fails for good, or the job must stop (None). The
    /// usage of answers thrown away on the way is added to `wasted` (and to the record).
    async fn attempts(&self, item: &WorkItem, wasted: &mut Option<Usage>) -> Option<Record> {
        let mut rate_limit_retries = 0u32;
        let mut transient_retries = 0u32;
        let mut unavailable_retries = 0u32;
        let mut attempts = 0u32;
        // The tier this row asks for; a flex row that waited too long for capacity is sent
        // again at the standard tier, with this body.
        let mut asked = match item.kind {
            Kind::Judge => Tier::Live,
            _ => self.asked,
        };
        let mut standard_body: Option<Value> = None;
        let mut unavailable_since: Option<tokio::time::Instant> = None;
        loop {
            // Once the run is stopped (Ctrl-C), nothing new goes out: a row still waiting for
            // the limiter or for its next retry stays pending and is sent on resume.
            let charge = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return None,
                charge = self.limiter.acquire(item.limiter_tokens) => charge,
            };
            let charge = match charge {
                Ok(c) => c,
                Err(e) => {
                    self.stop_job(&format!("{e}; rows not done stay pending"));
                    return None;
                }
            };
            if self.cancel.is_cancelled() {
                return None;
            }
            attempts += 1;
            self.stats.attempts.fetch_add(1, Relaxed);
            if attempts > 1 {
                self.stats.retries.fetch_add(1, Relaxed);
                self.progress.retried();
            }
            let body = standard_body.as_ref().unwrap_or(&item.body);
            let keyed = item.cache_key.as_ref().map(|keys| {
                let mut b = body.clone();
                if let Some(o) = b.as_object_mut() {
                    let key = keys.key(tokio::time::Instant::now());
                    o.insert("prompt_cache_key".into(), Value::from(key));
                }
                b
            });
            let body = keyed.as_ref().unwrap_or(body);
            let err = match self.client.send(body).await {
                Ok(mut c) => {
                    let tier = self.served(asked, c.service_tier.as_deref());
                    self.watchdog.success();
                    self.limiter.learn(&c.rate);
                    match &c.usage {
                        Some(u) => self.limiter.settle(charge, u.total()),
                        // No usage: the answer was paid for all the same. Count it
                        // ourselves and label it, so it is never settled at $0.
                        None => c.usage = Some(self.guess_usage(item, &c.choices)),
                    }
                    if let Some(why) = &c.unusable {
                        // A refusal, a content filter, fewer variants than asked: whole and
                        // billed, but nothing to keep. The row fails with the reason and its
                        // cost; `--retry-failed` sends it again.
                        let why = self.client.scrub(why);
                        let failed = Record::failed(
                            item.row,
                            item.id.clone(),
                            item.hash.clone(),
                            attempts,
                            why,
                        );
                        return Some(self.paid(item, failed, add_usage(c.usage, *wasted), tier));
                    }
                    match self.post_process(item, c, *wasted) {
                        Ok((c, fields)) => {
                            return Some(self.success(item, c, attempts, fields, tier))
                        }
                        Err((e, paid)) => {
                            *wasted = paid;
                            e
                        }
                    }
                }
                Err(e) => e,
            };
            let unavailable = err.kind == ErrorKind::ResourceUnavailable;
            if !unavailable {
                // Flex's "no capacity" says nothing about our rate: its headers are not
                // learned from.
                self.limiter.learn(&err.rate);
            }
            tracing::debug!(row = item.row, attempt = attempts, "attempt failed: {err}");
            self.count_failure(err.kind);
            if let Some(why) = self.watchdog.failure(&err, tokio::time::Instant::now()) {
                self.stop_job(&why);
                return None;
            }
            match err.action {
                Action::AbortJob => {
                    self.abort(&err);
                    return None;
                }
                Action::FailRow => {
                    return Some(self.paid(
                        item,
                        self.failure(item, &err, attempts),
                        *wasted,
                        asked,
                    ))
                }
                Action::Retry => {}
            }
            if let (true, Some(after)) = (unavailable && asked == Tier::Flex, self.flex_fallback) {
                let now = tokio::time::Instant::now();
                let since = *unavailable_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= after {
                    tracing::info!(
                        row = item.row,
                        "flex had no capacity for {after:?}: sending at the standard tier"
                    );
                    let mut body = item.body.clone();
                    if let Some(o) = body.as_object_mut() {
                        o.insert("service_tier".into(), Value::from("default"));
                    }
                    standard_body = Some(body);
                    asked = Tier::Live;
                    continue;
                }
            }
            let (kind, attempt) = match err.kind {
                ErrorKind::RateLimited => {
                    rate_limit_retries += 1;
                    (RetryKind::RateLimited, rate_limit_retries)
                }
                ErrorKind::ResourceUnavailable => {
                    unavailable_retries += 1;
                    (RetryKind::Unavailable, unavailable_retries)
                }
                _ => {
                    transient_retries += 1;
                    (RetryKind::Transient, transient_retries)
                }
            };
            let Some(delay) = self
                .retry
                .next_delay(item.row, kind, attempt, err.retry_after)
            else {
                return Some(self.paid(item, self.failure(item, &err, attempts), *wasted, asked));
            };
            if kind == RetryKind::RateLimited {
                self.limiter.rate_limited(charge, &err.message);
                // One 429 slows everyone: the server's wait (or a doubling guess) becomes
                // a shared cooldown; this row's own wait adds jitter on top of it.
                self.limiter
                    .cool_down(RetryPolicy::cooldown(attempt, err.retry_after));
            }
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// The usage of an answer that came without one (see [`UsageCounter::guess`]).
    fn guess_usage(&self, item: &WorkItem, choices: &[crate::client::Choice]) -> Usage {
        match &self.profile(item).usage_counter {
            Some(c) => c.guess(&item.guess, choices),
            None => Usage {
                estimated: true,
                ..item.guess.worst
            },
        }
    }

    /// Counts a failed attempt by kind, for the summary and the progress line.
    fn count_failure(&self, kind: ErrorKind) {
        let counter = match kind {
            ErrorKind::RateLimited => &self.stats.rate_limited,
            ErrorKind::Server => &self.stats.server_errors,
            ErrorKind::Connection => &self.stats.connection_errors,
            ErrorKind::Timeout => &self.stats.timeouts,
            _ => &self.stats.other_errors,
        };
        counter.fetch_add(1, Relaxed);
        self.progress.attempt_failed(kind);
    }

    /// The structured-output hook: with a schema, the answer must parse and validate (else
    /// a retryable error, or a row failure when it was cut off at max_tokens). Usage of
    /// rejected answers is carried in the error's second half so it is still billed.
    #[allow(clippy::type_complexity)]
    fn post_process(
        &self,
        item: &WorkItem,
        mut c: Completion,
        wasted: Option<Usage>,
    ) -> Result<(Completion, Option<Map<String, Value>>), (ApiError, Option<Usage>)> {
        c.usage = add_usage(c.usage, wasted);
        let Some(schema) = &self.profile(item).schema else {
            return Ok((c, None));
        };
        match crate::schema::structure(schema, &c.choices) {
            Ok(fields) => Ok((c, Some(fields))),
            Err(e) => {
                let mut err = ApiError::transport(ErrorKind::BadResponse, e.to_string());
                if e == crate::schema::StructuredError::Truncated {
                    err.action = Action::FailRow;
                }
                Err((err, c.usage))
            }
        }
    }

    /// Adds the usage and cost of rejected answers to a failure record.
    fn paid(&self, item: &WorkItem, mut r: Record, wasted: Option<Usage>, tier: Tier) -> Record {
        if let Some(u) = wasted {
            r.cost_pico = self.cost(item, &u, tier).map(|m| m.0);
            r.usage = Some(u);
        }
        r
    }

    fn success(
        &self,
        item: &WorkItem,
        c: Completion,
        attempts: u32,
        fields: Option<Map<String, Value>>,
        tier: Tier,
    ) -> Record {
        let cost = c
            .usage
            .as_ref()
            .and_then(|u| self.cost(item, u, tier))
            .map(|m| m.0);
        Record {
            row: item.row,
            id: item.id.clone(),
            hash: item.hash.clone(),
            status: Status::Ok,
            choices: c.choices,
            usage: c.usage,
            cost_pico: cost,
            attempts,
            error: None,
            cached: false,
            batch: self.tier == Tier::Batch,
            fields,
            shared_with: None,
            regen_of: None,
            regenerated: 0,
        }
    }

    fn failure(&self, item: &WorkItem, err: &ApiError, attempts: u32) -> Record {
        let what = if err.action == Action::Retry {
            format!("gave up after {attempts} attempts: {err}")
        } else {
            err.to_string()
        };
        Record::failed(
            item.row,
            item.id.clone(),
            item.hash.clone(),
            attempts,
            self.client.scrub(&what),
        )
    }
}

/// A reservation held by a request in flight, and the id its journal line has.
struct Held {
    res: Reservation,
    id: u64,
}

fn add_usage(a: Option<Usage>, b: Option<Usage>) -> Option<Usage> {
    match (a, b) {
        (Some(mut a), Some(b)) => {
            a.add(&b);
            Some(a)
        }
        (a, b) => a.or(b),
    }
}

/// One line saying why the job stopped and what to do.
/// How long requests in flight may still finish after the API refused the job.
const ABORT_GRACE: Duration = Duration::from_secs(5);

fn describe_abort(e: &ApiError) -> String {
    let hint = match e.kind {
        ErrorKind::Auth => "check the API key (and that it may use this model)",
        ErrorKind::InsufficientQuota => {
            "the account is out of quota or credit; retrying cannot help"
        }
        ErrorKind::NotFound => "check the model name and api.base_url",
        ErrorKind::Redirect => "nothing was sent to the redirect's address",
        _ => "",
    };
    if hint.is_empty() {
        format!("the API refused the job: {e}")
    } else {
        format!("the API refused the job: {e} ({hint})")
    }
}
