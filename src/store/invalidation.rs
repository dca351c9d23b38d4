//! Invalidations of the read view (`view.rs`) noted inside a transaction by a helper that has no
//! store at hand (a grant reconciled, a credit balance moved, on the Stripe event path), carried
//! out after the commit by `outbox::wake_after_commit`, which every such commit already runs.
//!
//! This is process-wide state: every view of the process (one, except in the tests, which run
//! several applications in one process) forgets the users noted. An extra invalidation is
//! harmless; a missed one is not, and the noted users are only cleared after the views forgot
//! them. A transaction that rolls back only costs a needless invalidation.

use std::sync::{Mutex, MutexGuard, PoisonError, Weak};

/// What can forget a user (a view).
pub(crate) trait Forget: Send + Sync {
    fn forget(&self, user_id: &str);
}

/// Every view of this process.
static VIEWS: Mutex<Vec<Weak<dyn Forget>>> = Mutex::new(Vec::new());
/// Users changed by transactions whose commit has not run [`after_commit`] yet.
static PENDING: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn register(view: Weak<dyn Forget>) {
    let mut views = lock(&VIEWS);
    views.retain(|v| v.strong_count() > 0);
    views.push(view);
}

/// Inside a transaction: the user's rows change; their entries go once it commits.
pub(crate) fn changed_in_transaction(user_id: &str) {
    let mut pending = lock(&PENDING);
    if !pending.iter().any(|u| u == user_id) {
        pending.push(user_id.to_owned());
    }
}

/// After a commit: every view forgets the users noted since the last one.
pub(crate) fn after_commit() {
    let pending = std::mem::take(&mut *lock(&PENDING));
    if pending.is_empty() {
        return;
    }
    let views: Vec<_> = lock(&VIEWS).iter().filter_map(Weak::upgrade).collect();
    for view in views {
        for user in &pending {
            view.forget(user);
        }
    }
}
