//! The dispatcher: claims due outbox messages with a lease, delivers each (a signed webhook, or an
//! email through the configured mailer), records every attempt and reschedules or settles it.
//! Any number of dispatchers (processes) share one database: a claim leases rows to one of them
//! (`FOR UPDATE SKIP LOCKED` on PostgreSQL, the single writer on SQLite), and a lease that
//! expires — its dispatcher died mid-send — makes the row due again. It wakes when a commit
//! wrote messages in this process, and polls every second for the rest (other processes,
//! retries coming due).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rand::Rng;

use super::email::{render, MailError, MailSettings, Mailer};
use super::ssrf::check_url;
use super::webhook::{self, Attempt};
use crate::domain::notifications::{email_retry_after, webhook_retry_after, DISABLE_AFTER_DAYS};
use crate::store::outbox::{wakeup, AttemptDone, MessageRow, NextStep};
use crate::store::Store;

/// Longer than any one delivery (15 s timeout) by a wide margin: a live dispatcher never loses
/// its lease mid-send, a dead one's rows come back within a minute.
pub const LEASE: Duration = Duration::from_secs(60);
/// The most one send (a webhook, or a mail through the mailer: lettre's own per-command timeout
/// is 60 s) may take: half the lease, so a live dispatcher never sends under an expired lease.
/// Running out is a transient failure, retried on the schedule.
pub const SEND_LIMIT: Duration = Duration::from_secs(LEASE.as_secs() / 2);
const BATCH: i64 = 32;
const POLL: Duration = Duration::from_secs(1);

pub struct Dispatcher {
    store: Arc<dyn Store>,
    client: reqwest::Client,
    production: bool,
    allow_private: bool,
    schedule: Vec<Duration>,
    mailer: Arc<dyn Mailer>,
    mail: MailSettings,
    owner: String,
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        production: bool,
        allow_private: bool,
        schedule: Vec<Duration>,
        mailer: Arc<dyn Mailer>,
        mail: MailSettings,
    ) -> anyhow::Result<Dispatcher> {
        Ok(Dispatcher {
            store,
            client: webhook::client(allow_private)?,
            production,
            allow_private,
            schedule,
            mailer,
            mail,
            owner: crate::domain::account::new_id("dsp"),
        })
    }

    /// Runs until `stop` says so; the batch in hand is finished first (its leases would expire anyway).
    pub fn spawn(self, mut stop: tokio::sync::watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        let this = Arc::new(self);
        tokio::spawn(async move {
            tracing::info!(owner = %this.owner, "outbox dispatcher started");
            loop {
                if *stop.borrow() {
                    break;
                }
                // Registered before the claim, so a commit between the claim and the wait still wakes us.
                let woken = wakeup().notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                let claimed = match this.run_once().await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(error = %e, "outbox: cannot claim messages");
                        0
                    }
                };
                if claimed as i64 == BATCH {
                    continue;
                }
                tokio::select! {
                    _ = &mut woken => {}
                    _ = tokio::time::sleep(POLL) => {}
                    _ = stop.changed() => {}
                }
            }
            tracing::info!(owner = %this.owner, "outbox dispatcher stopped");
        })
    }

    /// Claims a batch of due messages and delivers them side by side; how many were claimed.
    pub async fn run_once(self: &Arc<Self>) -> anyhow::Result<usize> {
        let now = Utc::now();
        let lease_until = now + chrono::Duration::from_std(LEASE)?;
        let rows = self.store.claim_outbox(&self.owner, now, lease_until, BATCH).await?;
        let n = rows.len();
        let jobs = rows.into_iter().map(|row| {
            let this = self.clone();
            async move { this.deliver(row).await }
        });
        futures_util::future::join_all(jobs).await;
        Ok(n)
    }

    async fn deliver(&self, row: MessageRow) {
        let result = match row.kind.as_str() {
            "webhook" => self.send_webhook(&row).await,
            "email" => self.send_email(&row).await,
            other => Err(anyhow::anyhow!("unknown message kind {other}")),
        };
        if let Err(e) = result {
            tracing::warn!(message = %row.id, error = %e, "outbox: cannot record a delivery attempt; the lease will expire and it is tried again");
        }
    }

    async fn send_webhook(&self, row: &MessageRow) -> anyhow::Result<()> {
        let now = Utc::now();
        let endpoint = self.store.endpoint(&row.recipient).await?;
        if endpoint.as_ref().is_some_and(|e| e.disabled) {
            // Not sent, not failed: held until the endpoint is enabled again.
            self.store.hold_message(&row.id, &self.owner).await?;
            return Ok(());
        }
        let attempt = match &endpoint {
            None => Attempt::refused("the endpoint no longer exists".to_owned()),
            Some(e) if e.disabled => Attempt::refused("the endpoint is disabled".to_owned()),
            Some(e) => match check_url(&e.url, self.production, self.allow_private) {
                Err(why) => Attempt::refused(format!("refused: {why}")),
                Ok(url) => {
                    let started = std::time::Instant::now();
                    let secrets = e.signing_secrets(now);
                    let sending = webhook::deliver(&self.client, &url, &row.id, &row.payload, &secrets);
                    match tokio::time::timeout(SEND_LIMIT, sending).await {
                        Ok(attempt) => attempt,
                        Err(_) => Attempt {
                            status_code: None,
                            error: Some(format!("timed out after {} s", SEND_LIMIT.as_secs())),
                            response: None,
                            duration: started.elapsed(),
                        },
                    }
                }
            },
        };
        let next = if attempt.delivered() {
            NextStep::Delivered
        } else if endpoint.as_ref().is_none_or(|e| e.disabled) {
            NextStep::Failed
        } else {
            let failed = u32::try_from(row.attempts + 1).unwrap_or(u32::MAX);
            match webhook_retry_after(&self.schedule, failed, rand::thread_rng().gen()) {
                Some(wait) => NextStep::RetryAt(Utc::now() + chrono::Duration::from_std(wait)?),
                None => NextStep::Failed,
            }
        };
        if let Some(e) = &attempt.error {
            tracing::info!(message = %row.id, endpoint = %row.recipient, error = %e, next = ?next, "webhook attempt failed");
        }
        self.finish(row, &attempt, next).await?;
        if !attempt.delivered() {
            if let Some(e) = endpoint.filter(|e| !e.disabled) {
                let before = Utc::now() - chrono::Duration::days(DISABLE_AFTER_DAYS);
                if self.store.disable_failing_endpoint(&e.id, before, Utc::now()).await? {
                    tracing::warn!(endpoint = %e.id, "webhook endpoint disabled: every delivery failed for 5 days; admins emailed");
                }
            }
        }
        Ok(())
    }

    async fn send_email(&self, row: &MessageRow) -> anyhow::Result<()> {
        let data: serde_json::Value = serde_json::from_str(&row.payload)?;
        let started = std::time::Instant::now();
        let (attempt, permanent) = match render(&row.event_type, &data, &self.mail) {
            None => (Attempt::refused(format!("no mail template for {}", row.event_type)), true),
            Some(mail) => {
                // The row's id makes the Message-ID: a retry after a lost reply is the same mail.
                let mail = mail.with_id(&row.id);
                let sent = tokio::time::timeout(SEND_LIMIT, self.mailer.send(&mail)).await;
                let (error, permanent) = match sent {
                    Err(_) => (Some(format!("transient: timed out after {} s", SEND_LIMIT.as_secs())), false),
                    Ok(Ok(())) => (None, false),
                    Ok(Err(MailError::Transient(e))) => (Some(format!("transient: {e}")), false),
                    Ok(Err(MailError::Permanent(e))) => (Some(format!("permanent: {e}")), true),
                };
                (Attempt { status_code: None, error, response: None, duration: started.elapsed() }, permanent)
            }
        };
        let next = if attempt.error.is_none() {
            NextStep::Delivered
        } else if permanent {
            NextStep::Failed
        } else {
            let failed = u32::try_from(row.attempts + 1).unwrap_or(u32::MAX);
            match email_retry_after(failed, Utc::now() - row.created_at, rand::thread_rng().gen()) {
                Some(wait) => NextStep::RetryAt(Utc::now() + chrono::Duration::from_std(wait)?),
                None => NextStep::Failed,
            }
        };
        self.finish(row, &attempt, next).await
    }

    async fn finish(&self, row: &MessageRow, attempt: &Attempt, next: NextStep) -> anyhow::Result<()> {
        let done = AttemptDone {
            message_id: row.id.clone(),
            lease_owner: self.owner.clone(),
            at: Utc::now(),
            status_code: attempt.status_code.map(i64::from),
            error: attempt.error.clone(),
            response: attempt.response.clone(),
            duration_ms: i64::try_from(attempt.duration.as_millis()).unwrap_or(i64::MAX),
            next,
        };
        if !self.store.finish_attempt(&done).await? {
            tracing::warn!(message = %row.id, "outbox: the lease was lost before the attempt was recorded");
        }
        Ok(())
    }
}
