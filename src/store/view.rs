//! The read view: per user, what an authenticated read needs (the user row, the rows of their
//! token families, the inputs of their entitlements), kept in memory so that a bearer request
//! costs no query. It is a leaf: it holds rows, it never reads the database itself.
//!
//! When an entry may be used (README "Sessions, tokens and logout"):
//! - every write that changes a user, a family, a grant or a credit balance invalidates the user's
//!   entry in this process right after its commit (the store's methods call [`View::invalidate`];
//!   helpers that only see a transaction call `invalidation.rs::changed_in_transaction`, which
//!   the transaction's own scope carries out once it is over), so what a user sees after their
//!   own write is fresh at once;
//! - a reader takes a [`Ticket`] before its database read and its row is kept only if no
//!   invalidation of that user (and no flush) happened since (the read/invalidate race);
//! - on PostgreSQL a change of a user or a token family (what revocation rests on) is also
//!   notified (triggers → `pg_notify('tollgate_changes', user id)`), and `store/changes.rs`
//!   invalidates on receipt. Such an entry is trusted past [`MAX_AGE`] only while the channel is
//!   known live: a heartbeat this process sent less than [`LIVE_FOR`] ago came back
//!   (notifications arrive in commit order, so every change committed before it was received).
//!   On (re)connection the whole view is flushed. Grants and credit balances are not notified
//!   (a NOTIFY takes a cluster-wide lock at commit, and they change on every granting webhook):
//!   entitlement entries are used only while younger than [`MAX_AGE`], channel or not;
//! - otherwise (SQLite, where another process may write the same file; or the channel down) an
//!   entry is used only while younger than [`MAX_AGE`]: a database read at least twice a second
//!   per user, so a change made elsewhere is seen within a second.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::accounts::FamilyRow;
use super::payments::GrantRow;
use crate::domain::account::User;

/// An entry not vouched for by a live channel is used for this long after its read began.
pub const MAX_AGE: Duration = Duration::from_millis(500);
/// The channel counts as live while a heartbeat sent less than this long ago came back.
pub const LIVE_FOR: Duration = Duration::from_millis(700);
/// How often the PostgreSQL feed sends itself a heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(200);
/// Users held at most (then an arbitrary one of the shard is evicted).
pub const CAPACITY: usize = 50_000;

const SHARDS: usize = 64;
/// Invalidation generations: more buckets than shards, so an invalidation rarely costs another
/// user's reader its insert.
const BUCKETS: usize = SHARDS * 64;
/// Token families remembered per user (a user rarely has more live ones).
const FAMILIES_PER_USER: usize = 32;
/// What a heartbeat's payload starts with (user ids start with `usr_`).
const HEARTBEAT: &str = "hb:";

/// The raw inputs of a user's entitlements: their active grants and credit balance. Effective
/// access is computed from them with the time of each read, so expiry stays exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntitlementInputs {
    pub active: Vec<GrantRow>,
    pub credit_balance: i64,
}

/// Taken before a database read: the row read may be kept only if nothing changed since.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    bucket: usize,
    generation: u64,
    epoch: u64,
    live: bool,
    at: Instant,
}

struct Slot<T> {
    value: T,
    /// When the read that produced it began.
    at: Instant,
    epoch: u64,
    /// The channel was live when the read began.
    live: bool,
}

impl<T: Clone> Slot<T> {
    fn new(value: T, t: &Ticket) -> Slot<T> {
        Slot { value, at: t.at, epoch: t.epoch, live: t.live }
    }
}

#[derive(Default)]
struct Entry {
    // Shared, so a hit hands out a pointer instead of copying the row (and its strings).
    user: Option<Slot<Arc<User>>>,
    families: HashMap<String, Slot<Arc<FamilyRow>>>,
    entitlements: Option<Slot<Arc<EntitlementInputs>>>,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ViewStats {
    pub hits: u64,
    pub misses: u64,
    /// The notification channel is live now (always false on SQLite).
    pub live: bool,
}

struct Inner {
    shards: Vec<Mutex<HashMap<String, Entry>>>,
    generations: Vec<AtomicU64>,
    /// Moves on at every flush: entries of an older epoch are never used.
    epoch: AtomicU64,
    per_shard: usize,
    hasher: RandomState,
    origin: Instant,
    /// Whether a notification channel feeds this view (PostgreSQL).
    fed: AtomicBool,
    /// Nanoseconds after `origin` until which the channel counts as live (0: not live).
    live_until: AtomicU64,
    /// Tells this view's heartbeats from other instances'.
    nonce: u64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Inner {
    fn bucket(&self, user_id: &str) -> usize {
        // The remainder is below BUCKETS: the cast cannot truncate.
        (self.hasher.hash_one(user_id) % BUCKETS as u64) as usize
    }

    fn shard(&self, bucket: usize) -> MutexGuard<'_, HashMap<String, Entry>> {
        lock(&self.shards[bucket % SHARDS])
    }
}

impl Inner {
    fn forget(&self, user_id: &str) {
        let bucket = self.bucket(user_id);
        let mut shard = self.shard(bucket);
        self.generations[bucket].fetch_add(1, Ordering::AcqRel);
        shard.remove(user_id);
    }
}

/// One per store (so one per application: two applications in one process keep two views).
#[derive(Clone)]
pub struct View {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl View {
    pub fn new(capacity: usize) -> View {
        let inner = Arc::new(Inner {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            generations: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(0),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            origin: Instant::now(),
            fed: AtomicBool::new(false),
            live_until: AtomicU64::new(0),
            nonce: rand::random(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        });
        View { inner }
    }

    fn bucket(&self, user_id: &str) -> usize {
        self.inner.bucket(user_id)
    }

    fn shard(&self, bucket: usize) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.inner.shard(bucket)
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.inner.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether the notification channel is known live now.
    pub fn is_live(&self) -> bool {
        self.inner.fed.load(Ordering::Acquire) && self.nanos(Instant::now()) < self.inner.live_until.load(Ordering::Acquire)
    }

    /// Before a database read of the user's rows.
    pub fn ticket(&self, user_id: &str) -> Ticket {
        let bucket = self.bucket(user_id);
        Ticket {
            bucket,
            generation: self.inner.generations[bucket].load(Ordering::Acquire),
            epoch: self.inner.epoch.load(Ordering::Acquire),
            live: self.is_live(),
            at: Instant::now(),
        }
    }

    fn usable<T>(&self, slot: &Slot<T>, epoch: u64, now: Instant, live: bool) -> bool {
        slot.epoch == epoch && (now.saturating_duration_since(slot.at) < MAX_AGE || (slot.live && live))
    }

    /// Reads one part of the user's entry, if it may be used now.
    fn get<T: Clone>(&self, user_id: &str, part: impl FnOnce(&Entry) -> Option<&Slot<T>>) -> Option<T> {
        let (epoch, now, live) = (self.inner.epoch.load(Ordering::Acquire), Instant::now(), self.is_live());
        let found = {
            let shard = self.shard(self.bucket(user_id));
            shard.get(user_id).and_then(part).filter(|s| self.usable(s, epoch, now, live)).map(|s| s.value.clone())
        };
        let counter = if found.is_some() { &self.inner.hits } else { &self.inner.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Writes one part of the user's entry, unless the user was invalidated (or the view
    /// flushed) since `t` was taken.
    fn put(&self, user_id: &str, t: &Ticket, write: impl FnOnce(&mut Entry)) {
        let mut shard = self.shard(t.bucket);
        if self.inner.generations[t.bucket].load(Ordering::Acquire) != t.generation
            || self.inner.epoch.load(Ordering::Acquire) != t.epoch
        {
            return;
        }
        if !shard.contains_key(user_id) && shard.len() >= self.inner.per_shard {
            if let Some(victim) = shard.keys().next().cloned() {
                shard.remove(&victim);
            }
        }
        write(shard.entry(user_id.to_owned()).or_default());
    }

    pub fn user(&self, user_id: &str) -> Option<Arc<User>> {
        self.get(user_id, |e| e.user.as_ref())
    }

    pub fn put_user(&self, t: &Ticket, user: &Arc<User>) {
        self.put(&user.id, t, |e| e.user = Some(Slot::new(user.clone(), t)));
    }

    /// A family of `user_id` (the user its access token names).
    pub fn family(&self, user_id: &str, family_id: &str) -> Option<Arc<FamilyRow>> {
        self.get(user_id, |e| e.families.get(family_id))
    }

    /// Keeps a family's row under the user it belongs to (a row of another user is not kept).
    pub fn put_family(&self, t: &Ticket, user_id: &str, family_id: &str, row: &Arc<FamilyRow>) {
        if row.user_id != user_id {
            return;
        }
        self.put(user_id, t, |e| {
            if e.families.len() >= FAMILIES_PER_USER && !e.families.contains_key(family_id) {
                e.families.clear();
            }
            e.families.insert(family_id.to_owned(), Slot::new(row.clone(), t));
        });
    }

    pub fn entitlements(&self, user_id: &str) -> Option<Arc<EntitlementInputs>> {
        self.get(user_id, |e| e.entitlements.as_ref())
    }

    /// Kept for [`MAX_AGE`] only, whatever the channel says: grants and credit balances are not
    /// notified (their writes are frequent, and a NOTIFY serialises commits cluster-wide), so
    /// only this process's own invalidations reach them.
    pub fn put_entitlements(&self, t: &Ticket, user_id: &str, inputs: &Arc<EntitlementInputs>) {
        let slot = Slot { live: false, ..Slot::new(inputs.clone(), t) };
        self.put(user_id, t, |e| e.entitlements = Some(slot));
    }

    /// Forgets everything held for the user; a read that began before is not kept either.
    pub fn invalidate(&self, user_id: &str) {
        self.inner.forget(user_id);
    }

    /// Forgets everything (entries of the old epoch are dropped as they are met or evicted).
    pub fn flush(&self) {
        self.inner.epoch.fetch_add(1, Ordering::AcqRel);
    }

    pub fn stats(&self) -> ViewStats {
        ViewStats {
            hits: self.inner.hits.load(Ordering::Relaxed),
            misses: self.inner.misses.load(Ordering::Relaxed),
            live: self.is_live(),
        }
    }

    // The notification channel's side (store/changes.rs).

    /// The channel is (again) listening: what was missed while it was not is unknown, so
    /// everything held is dropped.
    pub fn channel_connected(&self) {
        self.inner.fed.store(true, Ordering::Release);
        self.flush();
    }

    /// The channel is down: entries are used only while young, until a heartbeat comes back.
    pub fn channel_lost(&self) {
        self.inner.live_until.store(0, Ordering::Release);
        self.flush();
    }

    /// The payload of a heartbeat sent now.
    pub fn heartbeat(&self) -> String {
        format!("{HEARTBEAT}{:x}:{}", self.inner.nonce, self.nanos(Instant::now()))
    }

    /// A notification: a user id (invalidated) or a heartbeat (this view's own: the channel is
    /// live until `LIVE_FOR` after it was sent; another instance's: nothing).
    pub fn notified(&self, payload: &str) {
        let Some(beat) = payload.strip_prefix(HEARTBEAT) else {
            self.invalidate(payload);
            return;
        };
        let Some((nonce, sent)) = beat.split_once(':') else { return };
        if u64::from_str_radix(nonce, 16).ok() != Some(self.inner.nonce) {
            return;
        }
        if let Ok(sent) = sent.parse::<u64>() {
            let until = sent.saturating_add(u64::try_from(LIVE_FOR.as_nanos()).unwrap_or(u64::MAX));
            self.inner.live_until.fetch_max(until, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::domain::account::Role;
    use crate::store::invalidation;

    fn user(id: &str, disabled: bool) -> Arc<User> {
        Arc::new(User {
            id: id.to_owned(),
            email: format!("{id}@example.com"),
            name: None,
            password_hash: "h".to_owned(),
            role: Role::User,
            disabled,
            created_at: Utc::now(),
            password_changed_at: Utc::now(),
            credential_epoch: 0,
        })
    }

    #[test]
    fn a_read_that_began_before_an_invalidation_is_not_kept() {
        let view = View::new(100);
        // A reader notes the generation, reads the old row from the database…
        let ticket = view.ticket("usr_a");
        let stale = user("usr_a", false);
        // …meanwhile a writer commits (disables the user) and invalidates…
        view.invalidate("usr_a");
        // …then the reader tries to keep what it read: refused.
        view.put_user(&ticket, &stale);
        assert!(view.user("usr_a").is_none());
        // A read that began after the invalidation is kept.
        let ticket = view.ticket("usr_a");
        view.put_user(&ticket, &user("usr_a", true));
        assert!(view.user("usr_a").is_some_and(|u| u.disabled));
    }

    #[test]
    fn an_invalidation_drops_every_part_and_a_flush_drops_every_user() {
        let view = View::new(100);
        let t = view.ticket("usr_a");
        view.put_user(&t, &user("usr_a", false));
        let family = Arc::new(FamilyRow { user_id: "usr_a".to_owned(), credential_epoch: 0, revoked: false });
        view.put_family(&t, "usr_a", "fam_1", &family);
        view.put_entitlements(&t, "usr_a", &Arc::new(EntitlementInputs { active: vec![], credit_balance: 5 }));
        assert_eq!(view.family("usr_a", "fam_1"), Some(family.clone()));
        view.invalidate("usr_a");
        assert!(view.user("usr_a").is_none() && view.family("usr_a", "fam_1").is_none());
        assert!(view.entitlements("usr_a").is_none());

        let t = view.ticket("usr_b");
        view.put_user(&t, &user("usr_b", false));
        view.flush();
        assert!(view.user("usr_b").is_none());
        // A read begun before the flush is not kept after it.
        view.put_user(&t, &user("usr_b", false));
        assert!(view.user("usr_b").is_none());
    }

    #[test]
    fn a_family_of_another_user_is_not_kept_under_this_one() {
        let view = View::new(100);
        let t = view.ticket("usr_a");
        view.put_family(
            &t,
            "usr_a",
            "fam_1",
            &Arc::new(FamilyRow { user_id: "usr_b".to_owned(), credential_epoch: 0, revoked: false }),
        );
        assert!(view.family("usr_a", "fam_1").is_none());
    }

    #[test]
    fn without_a_live_channel_an_entry_ages_out() {
        let view = View::new(100);
        let mut t = view.ticket("usr_a");
        t.at -= MAX_AGE;
        view.put_user(&t, &user("usr_a", false));
        assert!(view.user("usr_a").is_none());
    }

    #[test]
    fn a_live_channel_vouches_for_old_entries_and_stops_when_its_heartbeats_do() {
        let view = View::new(100);
        view.channel_connected();
        view.notified(&view.heartbeat());
        assert!(view.is_live());
        let mut t = view.ticket("usr_a");
        assert!(t.live);
        t.at -= MAX_AGE * 2;
        view.put_user(&t, &user("usr_a", false));
        assert!(view.user("usr_a").is_some());
        // Another instance's heartbeat proves nothing about ours.
        view.channel_lost();
        view.notified(&format!("{HEARTBEAT}{:x}:{}", view.inner.nonce ^ 1, view.nanos(Instant::now())));
        assert!(!view.is_live());
    }

    #[test]
    fn a_live_channel_does_not_vouch_for_entitlements() {
        let view = View::new(100);
        view.channel_connected();
        view.notified(&view.heartbeat());
        let mut t = view.ticket("usr_a");
        assert!(t.live);
        t.at -= MAX_AGE * 2;
        view.put_entitlements(&t, "usr_a", &Arc::new(EntitlementInputs { active: vec![], credit_balance: 5 }));
        assert!(view.entitlements("usr_a").is_none(), "grants and balances are not notified: 500 ms at most");
        view.put_user(&t, &user("usr_a", false));
        assert!(view.user("usr_a").is_some(), "users are");
    }

    /// The reviewer's case: a user is noted, an unrelated transaction commits meanwhile, a reader
    /// then reads the still-uncommitted (old) row and keeps it; the real commit must drop it.
    #[tokio::test]
    async fn an_unrelated_commit_does_not_invalidate_a_user_before_their_own_transaction_commits() {
        let view = View::new(100);
        let (noted_tx, noted_rx) = tokio::sync::oneshot::channel();
        let (reader_done_tx, reader_done_rx) = tokio::sync::oneshot::channel::<()>();
        let writer = {
            let view = view.clone();
            tokio::spawn(async move {
                invalidation::scoped(|u| view.invalidate(u), async {
                    invalidation::changed_in_transaction("usr_u");
                    noted_tx.send(()).unwrap();
                    // The transaction is still open while the others run.
                    reader_done_rx.await.unwrap();
                })
                .await;
            })
        };
        noted_rx.await.unwrap();
        // An unrelated transaction of another task commits.
        let other = view.clone();
        tokio::spawn(async move {
            invalidation::scoped(|u| other.invalidate(u), async { invalidation::changed_in_transaction("usr_other") }).await
        })
        .await
        .unwrap();
        // A reader reads the old (pre-commit) row and keeps it.
        let t = view.ticket("usr_u");
        view.put_entitlements(&t, "usr_u", &Arc::new(EntitlementInputs { active: vec![], credit_balance: 0 }));
        assert!(view.entitlements("usr_u").is_some(), "kept until the writer's commit");
        reader_done_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), writer).await.unwrap().unwrap();
        assert!(view.entitlements("usr_u").is_none(), "the writer's commit drops what was read before it");
    }

    #[test]
    fn a_full_view_evicts() {
        let view = View::new(SHARDS);
        for i in 0..(SHARDS * 10) {
            let id = format!("usr_{i}");
            let t = view.ticket(&id);
            view.put_user(&t, &user(&id, false));
        }
        let held: usize = view.inner.shards.iter().map(|s| lock(s).len()).sum();
        assert!(held <= SHARDS, "{held}");
    }
}
