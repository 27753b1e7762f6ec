//! The hard spending cap. Before a request is sent its worst case (prompt tokens plus
//! `max_tokens` of output) is reserved; when usage comes back the reservation is replaced by
//! the real cost. A request that could push spent + reserved over the cap is never started.

use std::sync::Mutex;

use crate::types::Money;

/// Money spent and reserved against an optional cap.
#[derive(Debug)]
pub struct Budget {
    cap: Option<Money>,
    state: Mutex<State>,
}

#[derive(Debug, Default, Clone, Copy)]
struct State {
    spent: Money,
    reserved: Money,
}

/// A reservation held by one request in flight.
#[derive(Debug)]
#[must_use = "a reservation must be settled or released"]
pub struct Reservation(Money);

impl Budget {
    /// A budget with `already_spent` (by earlier runs of the same job) counted against `cap`.
    pub fn new(cap: Option<Money>, already_spent: Money) -> Budget {
        Budget {
            cap,
            state: Mutex::new(State {
                spent: already_spent,
                reserved: Money::ZERO,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves `worst` if spent + reserved + worst stays within the cap.
    pub fn reserve(&self, worst: Money) -> Option<Reservation> {
        let mut s = self.lock();
        if let Some(cap) = self.cap {
            if s.spent.saturating_add(s.reserved).saturating_add(worst) > cap {
                return None;
            }
        }
        s.reserved = s.reserved.saturating_add(worst);
        Some(Reservation(worst))
    }

    /// Replaces a reservation with what the request really cost.
    pub fn settle(&self, r: Reservation, actual: Money) {
        let mut s = self.lock();
        s.reserved = s.reserved.saturating_sub(r.0);
        s.spent = s.spent.saturating_add(actual);
    }

    /// Gives a reservation back unspent.
    pub fn release(&self, r: Reservation) {
        self.settle(r, Money::ZERO);
    }

    /// Money spent so far (including earlier runs).
    pub fn spent(&self) -> Money {
        self.lock().spent
    }

    /// The cap, if any.
    pub fn cap(&self) -> Option<Money> {
        self.cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_reserves_past_the_cap() {
        let b = Budget::new(Some(Money(100)), Money(10));
        let r1 = b.reserve(Money(50)).unwrap();
        let r2 = b.reserve(Money(40)).unwrap();
        assert!(b.reserve(Money(1)).is_none());
        b.settle(r1, Money(20)); // spent 30, reserved 40
        let r3 = b.reserve(Money(30)).unwrap();
        assert!(b.reserve(Money(1)).is_none());
        b.release(r2);
        b.release(r3);
        assert_eq!(b.spent(), Money(30));
        assert!(b.reserve(Money(70)).is_some());
    }

    #[test]
    fn no_cap_means_no_limit() {
        let b = Budget::new(None, Money::ZERO);
        assert!(b.reserve(Money(u64::MAX / 2)).is_some());
    }
}
