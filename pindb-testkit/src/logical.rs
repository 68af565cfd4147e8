//! The logical subscriber of the dev cluster: its subscription `pindb_sub` to the primary's
//! publication `pindb_pub` of `logical.notes` (`logical.audit` exists on both and is not
//! published), disabling and enabling it, and waiting for it to apply.

use std::time::{Duration, Instant};

use pindb_core::Lsn;
use tokio_postgres::{Client, NoTls};

use crate::cluster::{connect, Cluster, REPLICATION_TIMEOUT};

/// Advisory lock key that keeps tests which disable the subscription apart from tests that
/// need it applying.
const SUBSCRIPTION_LOCK: i64 = 0x7069_6e64_6202;

/// The subscription's name on the logical subscriber.
pub const SUBSCRIPTION: &str = "pindb_sub";

/// The primary's publication the subscription follows.
pub const PUBLICATION: &str = "pindb_pub";

impl Cluster {
    /// A connection to the logical subscriber.
    pub async fn logical(&self) -> Client {
        connect(&self.logical_url).await
    }

    /// Exclusive control of the subscription: waits until no other test uses it, then lets
    /// this test disable and enable it. Dropping it enables it again.
    pub async fn subscription_exclusive(&self) -> SubscriptionControl {
        let lock = self.primary().await;
        lock.execute("SELECT pg_advisory_lock($1)", &[&SUBSCRIPTION_LOCK])
            .await
            .unwrap_or_else(|e| panic!("taking the subscription lock failed: {e:?}"));
        let control = SubscriptionControl {
            url: self.logical_url.clone(),
            primary_url: self.primary_url.clone(),
            disabled: false,
            republish: false,
            _lock: lock,
        };
        // A test that died holding it must not leave the next one without replication.
        control.set_enabled(true).await;
        control
    }

    /// Shared use with the subscription applying: waits while another test has it disabled.
    pub async fn subscription_shared(&self) -> Client {
        let lock = self.primary().await;
        lock.execute("SELECT pg_advisory_lock_shared($1)", &[&SUBSCRIPTION_LOCK])
            .await
            .unwrap_or_else(|e| panic!("taking the shared subscription lock failed: {e:?}"));
        lock
    }

    /// Waits until the subscription has confirmed `lsn` (its slot's `confirmed_flush_lsn` on
    /// the primary): every transaction committed before it is applied on the subscriber.
    pub async fn wait_for_apply(&self, lsn: Lsn) {
        let primary = self.primary().await;
        let target = lsn.to_string();
        let deadline = Instant::now() + REPLICATION_TIMEOUT;
        loop {
            let row = primary
                .query_one(
                    "SELECT coalesce(bool_and(confirmed_flush_lsn >= $1::text::pg_lsn), false) \
                     FROM pg_replication_slots WHERE slot_name = $2",
                    &[&target, &SUBSCRIPTION],
                )
                .await
                .unwrap_or_else(|e| panic!("reading the subscription slot failed: {e:?}"));
            if row.get::<_, bool>(0) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the logical subscriber did not confirm {lsn} within {REPLICATION_TIMEOUT:?}; \
                 check `scripts/cluster status`"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Exclusive control of the subscription; see [`Cluster::subscription_exclusive`].
pub struct SubscriptionControl {
    url: String,
    primary_url: String,
    disabled: bool,
    /// The publication was altered: put it back to `logical.notes` alone.
    republish: bool,
    // Last field: released after `Drop::drop` enabled the subscription again.
    _lock: Client,
}

impl SubscriptionControl {
    /// `ALTER SUBSCRIPTION pindb_sub DISABLE`: the subscriber applies nothing until enabled.
    pub async fn disable(&mut self) {
        self.set_enabled(false).await;
        self.disabled = true;
    }

    /// `ALTER SUBSCRIPTION pindb_sub ENABLE`.
    pub async fn enable(&mut self) {
        self.set_enabled(true).await;
        self.disabled = false;
    }

    async fn set_enabled(&self, enabled: bool) {
        set_enabled(&self.url, enabled).await;
    }

    /// `ALTER PUBLICATION pindb_pub <change>` on the primary (`ADD TABLE logical.audit`,
    /// `SET TABLE logical.notes WHERE (..)`). The standard publication is restored when this
    /// is dropped, even by a failing test.
    pub async fn alter_publication(&mut self, change: &str) {
        self.republish = true;
        as_superuser(&self.primary_url)
            .await
            .batch_execute(&format!("ALTER PUBLICATION {PUBLICATION} {change}"))
            .await
            .unwrap_or_else(|e| panic!("ALTER PUBLICATION {PUBLICATION} {change} failed: {e:?}"));
    }
}

/// Puts the publication back to the dev cluster's standard one.
async fn republish(primary_url: &str) {
    as_superuser(primary_url)
        .await
        .batch_execute(&format!(
            "ALTER PUBLICATION {PUBLICATION} SET TABLE logical.notes"
        ))
        .await
        .unwrap_or_else(|e| panic!("restoring the publication {PUBLICATION} failed: {e:?}"));
}

/// A connection to the server at `url` as the superuser `postgres` (the dev cluster trusts
/// loopback): only a superuser alters a subscription or the publication in PostgreSQL 15.
pub async fn as_superuser(url: &str) -> Client {
    let mut config: tokio_postgres::Config = url
        .parse()
        .unwrap_or_else(|e| panic!("the URL {url} does not parse: {e}"));
    config.user("postgres");
    let (client, connection) = config.connect(NoTls).await.unwrap_or_else(|e| {
        panic!("cannot connect to {url} as postgres: {e}; run `scripts/cluster up`")
    });
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Enables or disables the subscription on the subscriber at `url`.
async fn set_enabled(url: &str, enabled: bool) {
    let client = as_superuser(url).await;
    let verb = if enabled { "ENABLE" } else { "DISABLE" };
    client
        .batch_execute(&format!("ALTER SUBSCRIPTION {SUBSCRIPTION} {verb}"))
        .await
        .unwrap_or_else(|e| panic!("ALTER SUBSCRIPTION {SUBSCRIPTION} {verb} failed: {e:?}"));
}

impl Drop for SubscriptionControl {
    fn drop(&mut self) {
        if !self.disabled && !self.republish {
            return;
        }
        let (url, primary_url) = (self.url.clone(), self.primary_url.clone());
        let (enable, republish_it) = (self.disabled, self.republish);
        let restored = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime builds");
            rt.block_on(async {
                if republish_it {
                    republish(&primary_url).await;
                }
                if enable {
                    set_enabled(&url, true).await;
                }
            })
        })
        .join();
        if restored.is_err() && !std::thread::panicking() {
            panic!("could not restore the subscription {SUBSCRIPTION} / publication {PUBLICATION}");
        }
    }
}

impl std::fmt::Debug for SubscriptionControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionControl")
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}
