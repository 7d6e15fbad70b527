//! Which accounts have their state in memory. Every account is known from start-up (id, JID,
//! device id, identity), but its own keys (one-time prekeys, signed prekeys) and its directory
//! (device lists, trust decisions) are loaded from the database on first use and dropped again,
//! least recently used first, once all of them together hold more than [`MAX_RESIDENT_ROWS`]
//! rows. So start-up and memory do not grow with the accounts and sessions of the database, only
//! with those in use (a gateway's ten thousand accounts, a million sessions).

use std::collections::HashMap;

/// Rows (one-time prekeys, devices, trust decisions, identity changes) of the accounts whose
/// state is in memory, at most, before the idlest are dropped: about 75 MiB, some 1,500
/// accounts of a hundred contact devices and two prekey pools each.
pub const MAX_RESIDENT_ROWS: usize = 500_000;

/// The accounts whose state is in memory: when each was last used, and how many rows it holds.
#[derive(Debug, Default)]
pub struct Resident {
    /// Account id → (tick of its last use, rows).
    accounts: HashMap<i64, (u64, usize)>,
    tick: u64,
    rows: usize,
}

impl Resident {
    /// The account was used now.
    pub fn touch(&mut self, account_id: i64) {
        self.tick += 1;
        if let Some((used, _)) = self.accounts.get_mut(&account_id) {
            *used = self.tick;
        }
    }

    /// `rows` more of the account's rows were loaded (now).
    pub fn add(&mut self, account_id: i64, rows: usize) {
        self.tick += 1;
        let entry = self.accounts.entry(account_id).or_default();
        *entry = (self.tick, entry.1 + rows);
        self.rows += rows;
    }

    /// The account's state left memory.
    pub fn remove(&mut self, account_id: i64) {
        if let Some((_, rows)) = self.accounts.remove(&account_id) {
            self.rows -= rows;
        }
    }

    /// Rows in memory.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Whether the accounts in memory hold more than the bound.
    pub fn over(&self) -> bool {
        self.rows > MAX_RESIDENT_ROWS
    }

    /// The least recently used accounts whose state, dropped, brings the rows down to three
    /// quarters of the bound (some may be in use: the caller skips those).
    pub fn idlest(&self) -> Vec<i64> {
        let target = MAX_RESIDENT_ROWS * 3 / 4;
        let mut by_age: Vec<(u64, i64, usize)> = self
            .accounts
            .iter()
            .map(|(id, (used, rows))| (*used, *id, *rows))
            .collect();
        by_age.sort_unstable();
        let mut rows = self.rows;
        by_age
            .into_iter()
            .take_while(|(_, _, r)| {
                let go = rows > target;
                rows = rows.saturating_sub(*r);
                go
            })
            .map(|(_, id, _)| id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idlest_go_first_down_to_three_quarters() {
        let mut r = Resident::default();
        let each = MAX_RESIDENT_ROWS / 4;
        for id in 1..=5 {
            r.add(id, each);
        }
        assert!(r.over());
        // Account 1 was used last: 2, 3 go (5 quarters down to 3).
        r.touch(1);
        assert_eq!(r.idlest(), vec![2, 3]);
        r.remove(2);
        r.remove(3);
        assert_eq!(r.rows(), 3 * each);
        assert!(!r.over());
        assert!(r.idlest().is_empty());
        // Loading more of an account counts it as used; one row over three quarters takes
        // another account.
        r.add(4, 1);
        r.add(5, each);
        assert_eq!(r.idlest(), vec![1, 4]);
    }
}
