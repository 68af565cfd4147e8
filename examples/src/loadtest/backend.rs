//! The backend seam: which database set a run goes to ([`Target`]: the PostgreSQL fixture or
//! the MariaDB set), and the routed handle the users share ([`Db`]). What differs per
//! backend is only here, in `mariadb.rs`, and in the matches of `run.rs` and `user.rs`
//! (the SQL, write positions, replica positions, making lag, the master's CPU).

use diesel_async::AsyncMysqlConnection;
use pindb_core::{Config, PinDbError, Router, RouterMode};
use pindb_diesel::bb8::PinDb;
use pindb_testkit::Fixture;
use serde::Serialize;

use super::mariadb::{MariaDbSet, Routed};
use super::user::SCHEMA_SQL;

/// The database the load test runs against.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// The dev cluster's PostgreSQL primary and its two streaming replicas (positions: LSNs).
    #[default]
    Postgres,
    /// The dev cluster's MariaDB primary and its two GTID replicas (positions: the sequence
    /// numbers of the replication domain).
    Mariadb,
}

impl Backend {
    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Mariadb => "mariadb",
        }
    }
}

/// Where the runs go: a fresh table on one backend's set, replicas caught up, and exclusive
/// control of their replay (PostgreSQL) or SQL threads (MariaDB) while it lives. Call
/// [`Target::finish`] at the end.
#[derive(Debug)]
pub enum Target {
    /// A fresh schema with the load test's table ([`SCHEMA_SQL`]).
    Postgres(Box<Fixture>),
    /// A fresh table in the MariaDB set's database.
    MariaDb(MariaDbSet),
}

impl Target {
    /// The set of `backend`, prepared.
    pub async fn new(backend: Backend) -> Target {
        match backend {
            Backend::Postgres => Target::Postgres(Box::new(Fixture::new(SCHEMA_SQL).await)),
            Backend::Mariadb => Target::MariaDb(MariaDbSet::new().await),
        }
    }

    /// Which backend.
    pub fn backend(&self) -> Backend {
        match self {
            Target::Postgres(_) => Backend::Postgres,
            Target::MariaDb(_) => Backend::Mariadb,
        }
    }

    /// A greedy config over the master and both replicas.
    pub(super) fn config(&self) -> Config {
        match self {
            Target::Postgres(f) => f.config(RouterMode::Greedy, &[1, 2]),
            Target::MariaDb(m) => {
                let mut config = Config::single_set(
                    m.cluster.master_url(),
                    [m.cluster.replica_url(1), m.cluster.replica_url(2)],
                );
                config.router = RouterMode::Greedy;
                config
            }
        }
    }

    /// The routed handle over `router` for this backend's connections.
    pub(super) fn pindb(&self, router: Router) -> Result<Db, PinDbError> {
        let config = |e: pindb_diesel::Error| PinDbError::Config {
            alias: None,
            problem: e.to_string(),
        };
        Ok(match self {
            Target::Postgres(_) => Db::Postgres(PinDb::from_router(router).map_err(config)?),
            Target::MariaDb(m) => Db::MariaDb(
                m.routed(PinDb::<AsyncMysqlConnection>::with_router(router).map_err(config)?),
            ),
        })
    }

    /// Gives replay (or apply) back to every replica and drops the table.
    pub async fn finish(self) {
        match self {
            Target::Postgres(f) => f.finish().await,
            Target::MariaDb(m) => m.finish().await,
        }
    }
}

/// pindb's diesel-async handle over the set, for either backend. Cheap to clone.
#[derive(Clone)]
pub(super) enum Db {
    Postgres(PinDb),
    MariaDb(Routed),
}

impl Db {
    /// The router.
    pub(super) fn router(&self) -> &Router {
        match self {
            Db::Postgres(db) => db.router(),
            Db::MariaDb(m) => m.db.router(),
        }
    }
}
