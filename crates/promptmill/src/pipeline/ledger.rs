//! The ledger: the one place money is added up.
//!
//! Before a request is sent its worst case (prompt tokens plus `max_tokens` of output) is
//! reserved; a request that could push the spend past a cap is never started. When its
//! answer comes back the reservation is settled with what the usage says it cost; when it
//! ends unanswered the reservation is released. What earlier runs spent on the same endpoint
//! (read from the journal, including the worst case of requests that were in flight when a
//! run was killed) counts against the cumulative cap; only this run's spend counts against
//! the per-run cap.
//!
//! A cost the price table cannot give is never added as `$0`: it is counted as unpriced, so
//! every total that includes it is unknown. [`Tally`] is the only type that adds [`Money`];
//! the budget cap, the progress line, the output totals, the journal's spend and the summary
//! all read tallies.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::types::Money;

/// What one answer cost, as far as the ledger is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// Nothing was paid (no answer, or answered from the cache).
    Nothing,
    /// Paid, at this price.
    Priced(Money),
    /// Paid, at a price nobody knows (the model has no price).
    Unpriced,
}

impl Charge {
    /// The charge of a journaled answer: `paid` says whether it was billed (it has usage and
    /// was not served from the cache), `cost_pico` what it cost if the price is known.
    pub fn of(paid: bool, cost_pico: Option<u64>) -> Charge {
        match (paid, cost_pico) {
            (false, _) => Charge::Nothing,
            (true, Some(c)) => Charge::Priced(Money(c)),
            (true, None) => Charge::Unpriced,
        }
    }
}

/// Money added up: what priced answers cost, and how many answers had no price.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// The sum of every priced charge.
    pub priced: Money,
    /// Charges whose price is unknown: while any, the real total is unknown.
    pub unpriced: u64,
}

impl Tally {
    /// What was added to this tally since it was `before`.
    pub fn since(&self, before: Tally) -> Tally {
        Tally {
            priced: self.priced.saturating_sub(before.priced),
            unpriced: self.unpriced.saturating_sub(before.unpriced),
        }
    }

    /// Adds one charge.
    pub fn add(&mut self, c: Charge) {
        match c {
            Charge::Nothing => {}
            Charge::Priced(m) => self.priced = self.priced.saturating_add(m),
            Charge::Unpriced => self.unpriced += 1,
        }
    }

    /// Adds another tally.
    pub fn merge(&mut self, other: Tally) {
        self.priced = self.priced.saturating_add(other.priced);
        self.unpriced += other.unpriced;
    }

    /// The sum of two tallies.
    pub fn plus(mut self, other: Tally) -> Tally {
        self.merge(other);
        self
    }

    /// The total, or None when some charge has no price.
    pub fn known(&self) -> Option<Money> {
        (self.unpriced == 0).then_some(self.priced)
    }
}

/// The spending caps of a job (see `[budget]` in the job file).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Everything spent on this endpoint by every run of the job, this one included.
    pub total: Option<Money>,
    /// What this run alone may spend.
    pub per_run: Option<Money>,
}

impl Caps {
    /// The caps of a job's `[budget]` section.
    pub fn of(budget: &crate::config::BudgetConfig) -> Caps {
        Caps {
            total: budget.total_cap().map(Money::from_usd),
            per_run: budget.max_usd_per_run.map(Money::from_usd),
        }
    }

    /// Whether any cap is set.
    pub fn any(&self) -> bool {
        self.total.is_some() || self.per_run.is_some()
    }
}

/// Which cap refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// `budget.max_usd_total` (or `budget.max_usd`).
    Total,
    /// `budget.max_usd_per_run`.
    PerRun,
}

/// Money spent and reserved by one run, against its caps.
#[derive(Debug)]
pub struct Ledger {
    caps: Caps,
    before: Tally,
    state: Mutex<State>,
}

#[derive(Debug, Default, Clone, Copy)]
struct State {
    run: Tally,
    reserved: Money,
}

/// A reservation held by one request in flight.
#[derive(Debug)]
#[must_use = "a reservation must be settled or released"]
pub struct Reservation(Money);

impl Reservation {
    /// The worst case reserved.
    pub fn worst(&self) -> Money {
        self.0
    }
}

impl Ledger {
    /// A ledger for one run: `before` is what earlier runs spent on the same endpoint.
    pub fn new(caps: Caps, before: Tally) -> Ledger {
        Ledger {
            caps,
            before,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock still holds consistent numbers: every change is one assignment.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `worst` more fits under both caps, given what is spent and reserved.
    fn check(&self, s: &State, worst: Money) -> Result<(), Cap> {
        let run = s
            .run
            .priced
            .saturating_add(s.reserved)
            .saturating_add(worst);
        if let Some(cap) = self.caps.per_run {
            if run > cap {
                return Err(Cap::PerRun);
            }
        }
        if let Some(cap) = self.caps.total {
            if self.before.priced.saturating_add(run) > cap {
                return Err(Cap::Total);
            }
        }
        Ok(())
    }

    /// Reserves `worst` if it fits under both caps; otherwise says which cap refused it.
    pub fn reserve(&self, worst: Money) -> Result<Reservation, Cap> {
        let mut s = self.lock();
        self.check(&s, worst)?;
        s.reserved = s.reserved.saturating_add(worst);
        Ok(Reservation(worst))
    }

    /// Whether `worst` more could be spent now (for work whose cost is known only later,
    /// such as a batch round), without reserving it.
    pub fn fits(&self, worst: Money) -> Result<(), Cap> {
        let s = self.lock();
        self.check(&s, worst)
    }

    /// Replaces a reservation with what the request really cost.
    pub fn settle(&self, r: Reservation, charge: Charge) {
        let mut s = self.lock();
        s.reserved = s.reserved.saturating_sub(r.0);
        s.run.add(charge);
    }

    /// Gives a reservation back unspent.
    pub fn release(&self, r: Reservation) {
        self.settle(r, Charge::Nothing);
    }

    /// Adds a charge that had no reservation (a batch answer collected).
    pub fn record(&self, charge: Charge) {
        self.lock().run.add(charge);
    }

    /// What earlier runs spent on this endpoint.
    pub fn before(&self) -> Tally {
        self.before
    }

    /// What this run spent.
    pub fn this_run(&self) -> Tally {
        self.lock().run
    }

    /// Everything spent on this endpoint, this run included.
    pub fn total(&self) -> Tally {
        self.before.plus(self.this_run())
    }

    /// The caps.
    pub fn caps(&self) -> Caps {
        self.caps
    }
}

/// What a journal says was spent, per ledger (see [`ledger_of`]), with
/// the reservations no answer has settled yet.
///
/// Lines written before endpoints were recorded belong to no endpoint; they count against
/// every endpoint's caps, as they did when there was only one ledger.
#[derive(Debug, Default, Clone)]
pub struct Spent {
    by_endpoint: BTreeMap<String, Tally>,
    /// Lines with no endpoint.
    unlabelled: Tally,
    /// Reservations not settled, by id: their endpoint and worst case (None: unpriced).
    open: HashMap<u64, (Option<String>, Option<Money>)>,
}

impl Spent {
    /// Adds a paid answer journaled for `endpoint`.
    pub fn charge(&mut self, endpoint: Option<&str>, c: Charge) {
        if c == Charge::Nothing {
            return;
        }
        match endpoint {
            Some(e) => match self.by_endpoint.get_mut(e) {
                Some(t) => t.add(c),
                None => {
                    let mut t = Tally::default();
                    t.add(c);
                    self.by_endpoint.insert(e.to_string(), t);
                }
            },
            None => self.unlabelled.add(c),
        }
    }

    /// A request journaled as reserved (`id` is where its line starts in the journal).
    pub fn reserved(&mut self, id: u64, endpoint: Option<&str>, worst: Option<Money>) {
        self.open.insert(id, (endpoint.map(str::to_string), worst));
    }

    /// The reservation `id` was settled (by an answer, a spend, or a release).
    pub fn settled(&mut self, id: u64) {
        self.open.remove(&id);
    }

    /// What counts against `endpoint`'s caps: its answers, unlabelled ones, and the worst
    /// case of every reservation never settled (a run killed with requests in flight).
    pub fn on(&self, endpoint: &str) -> Tally {
        let mut t = self.unlabelled;
        if let Some(e) = self.by_endpoint.get(endpoint) {
            t.merge(*e);
        }
        t.merge(self.unsettled(endpoint));
        t
    }

    /// The worst case of the reservations on `endpoint` (or unlabelled) never settled.
    pub fn unsettled(&self, endpoint: &str) -> Tally {
        let mut t = Tally::default();
        for (e, worst) in self.open.values() {
            if e.as_deref().is_none_or(|e| e == endpoint) {
                t.add(worst.map_or(Charge::Unpriced, Charge::Priced));
            }
        }
        t
    }

    /// The reservations not settled: id, endpoint and worst case (None: unpriced).
    pub fn open_reservations(&self) -> Vec<(u64, Option<String>, Option<Money>)> {
        let mut v: Vec<_> = self
            .open
            .iter()
            .map(|(id, (ep, worst))| (*id, ep.clone(), *worst))
            .collect();
        v.sort_by_key(|r| r.0);
        v
    }

    /// Everything spent on every endpoint, unsettled reservations included.
    pub fn everywhere(&self) -> Tally {
        let mut t = self.unlabelled;
        for e in self.by_endpoint.values() {
            t.merge(*e);
        }
        for (_, worst) in self.open.values() {
            t.add(worst.map_or(Charge::Unpriced, Charge::Priced));
        }
        t
    }
}

/// Which ledger a run's spend goes to: `mock` for the built-in mock API (`--mock`), `api`
/// for everything else. Mock spend never counts against a real cap; every real base URL
/// shares one ledger, since a cap is about one account's money and a changed base URL
/// (a proxy, a regional endpoint) is often the same account.
pub fn ledger_of(mock: bool) -> &'static str {
    if mock {
        "mock"
    } else {
        "api"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total_cap(cap: u64) -> Caps {
        Caps {
            total: Some(Money(cap)),
            per_run: None,
        }
    }

    fn spent(m: u64) -> Tally {
        Tally {
            priced: Money(m),
            unpriced: 0,
        }
    }

    #[test]
    fn never_reserves_past_the_cap() {
        let b = Ledger::new(total_cap(100), spent(10));
        let r1 = b.reserve(Money(50)).unwrap();
        let r2 = b.reserve(Money(40)).unwrap();
        assert_eq!(b.reserve(Money(1)).unwrap_err(), Cap::Total);
        b.settle(r1, Charge::Priced(Money(20))); // spent 30, reserved 40
        let r3 = b.reserve(Money(30)).unwrap();
        assert!(b.reserve(Money(1)).is_err());
        b.release(r2);
        b.release(r3);
        assert_eq!(b.total(), spent(30));
        assert_eq!(b.this_run(), spent(20));
        assert_eq!(b.before(), spent(10));
        assert!(b.reserve(Money(70)).is_ok());
    }

    #[test]
    fn no_cap_means_no_limit() {
        let b = Ledger::new(Caps::default(), Tally::default());
        assert!(b.reserve(Money(u64::MAX / 2)).is_ok());
    }

    #[test]
    fn the_per_run_cap_ignores_earlier_runs_and_the_total_cap_does_not() {
        let caps = Caps {
            total: Some(Money(1000)),
            per_run: Some(Money(100)),
        };
        let b = Ledger::new(caps, spent(850));
        let r = b.reserve(Money(100)).unwrap();
        assert_eq!(b.reserve(Money(1)).unwrap_err(), Cap::PerRun);
        b.settle(r, Charge::Priced(Money(60)));
        assert_eq!(b.fits(Money(40)), Ok(()));
        assert_eq!(b.fits(Money(41)), Err(Cap::PerRun));
        let b = Ledger::new(caps, spent(950));
        assert_eq!(b.reserve(Money(51)).unwrap_err(), Cap::Total);
        assert!(b.reserve(Money(50)).is_ok());
    }

    #[test]
    fn an_unknown_price_makes_the_total_unknown_never_zero() {
        let b = Ledger::new(Caps::default(), spent(5));
        let r = b.reserve(Money::ZERO).unwrap();
        b.settle(r, Charge::Unpriced);
        b.record(Charge::Priced(Money(7)));
        b.record(Charge::Nothing);
        assert_eq!(b.this_run().unpriced, 1);
        assert_eq!(b.this_run().priced, Money(7));
        assert_eq!(b.total().known(), None);
        assert_eq!(spent(12).known(), Some(Money(12)));
        assert_eq!(Charge::of(false, Some(3)), Charge::Nothing);
        assert_eq!(Charge::of(true, None), Charge::Unpriced);
        assert_eq!(Charge::of(true, Some(3)), Charge::Priced(Money(3)));
    }

    #[test]
    fn spend_is_kept_per_endpoint_and_open_reservations_count_their_worst_case() {
        let mut s = Spent::default();
        s.charge(Some("mock:"), Charge::Priced(Money(70)));
        s.charge(Some("http://a"), Charge::Priced(Money(3)));
        s.charge(Some("http://a"), Charge::Nothing);
        s.reserved(10, Some("http://a"), Some(Money(20)));
        s.reserved(20, Some("http://a"), Some(Money(30)));
        s.reserved(30, Some("mock:"), Some(Money(1)));
        s.settled(10);
        assert_eq!(s.on("http://a"), spent(3 + 30));
        assert_eq!(s.on("mock:"), spent(71));
        assert_eq!(s.on("http://b"), spent(0));
        s.charge(None, Charge::Priced(Money(5)));
        assert_eq!(
            s.on("http://b"),
            spent(5),
            "unlabelled spend counts everywhere"
        );
        assert_eq!(s.everywhere(), spent(70 + 3 + 30 + 1 + 5));
        s.reserved(40, Some("http://b"), None);
        assert_eq!(s.on("http://b").known(), None);
    }
}
