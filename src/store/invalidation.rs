//! Invalidations of the read view (`view.rs`) noted inside a transaction by a helper that has no
//! store at hand (a grant reconciled, a credit balance moved, on the Stripe event path), carried
//! out on the store's own view once that transaction is over.
//!
//! The users are collected PER TRANSACTION: `pool::transaction!` runs its body inside
//! [`collecting`] (a task-local list, so only what this body noted is in it), and once the body
//! has returned (it commits itself, or rolled back) the store invalidates each collected user in
//! its own view. Invalidating before the commit would let a reader cache the pre-commit rows with
//! nothing invalidating after; invalidating after a rollback only costs a needless read.
//!
//! A writer that runs one transaction outside `transaction!` (the batch writer's group commit)
//! does the same: `let (result, users) = collecting(body).await;` then, after its commit,
//! `view.invalidate(u)` for each user (or [`scoped`], which does both). This file names no
//! view (`.ci/acyclic.py`): the store hands its own.
//!
//! Outside any scope there is no commit to wait for: [`changed_in_transaction`] then does nothing
//! but say so (a panic in debug builds, so a test finds the path; a warning once in release). That
//! is a bug, yet still bounded: entitlement entries are never used past `view::MAX_AGE`, and the
//! rows a revocation changes (users, token families) are notified by PostgreSQL's triggers and
//! also live `MAX_AGE` at most on SQLite, so the change shows within 500 ms instead of at once.

use std::cell::RefCell;
use std::collections::HashSet;
use std::future::Future;
use std::sync::Once;

tokio::task_local! {
    /// Users whose rows the running transaction changed.
    static NOTED: RefCell<HashSet<String>>;
}

/// Runs `fut` (one transaction's body) collecting the users it notes with
/// [`changed_in_transaction`]; they are returned, to be invalidated once the transaction is over
/// (committed or rolled back), never before.
pub async fn collecting<F: Future>(fut: F) -> (F::Output, Vec<String>) {
    let (output, noted) = NOTED
        .scope(RefCell::new(HashSet::new()), async {
            let output = fut.await;
            (output, NOTED.with(|n| std::mem::take(&mut *n.borrow_mut())))
        })
        .await;
    (output, noted.into_iter().collect())
}

/// [`collecting`], then `forget` each user noted: what `transaction!` does with its store's own
/// view (`|u| self.view.invalidate(u)`).
pub async fn scoped<F: Future>(forget: impl Fn(&str), fut: F) -> F::Output {
    let (output, noted) = collecting(fut).await;
    for user in &noted {
        forget(user);
    }
    output
}

/// Inside a transaction (a [`collecting`] scope): the user's rows change; their entries go once
/// it is over.
pub(crate) fn changed_in_transaction(user_id: &str) {
    let noted = NOTED.try_with(|n| {
        n.borrow_mut().insert(user_id.to_owned());
    });
    if noted.is_err() {
        debug_assert!(false, "invalidation::changed_in_transaction outside a `collecting` scope");
        static WARNED: Once = Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                "a read-view invalidation was noted outside a transaction scope; the change shows within 500 ms instead of at once"
            );
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_scope_returns_only_its_own_users_once() {
        let ((), noted) = collecting(async {
            changed_in_transaction("usr_a");
            changed_in_transaction("usr_a");
            let ((), inner) = collecting(async { changed_in_transaction("usr_b") }).await;
            assert_eq!(inner, ["usr_b"]);
        })
        .await;
        assert_eq!(noted, ["usr_a"]);
    }
}
