//! The databases the adapters run on, and what the scenario table needs of a world on each.
//!
//! An adapter's statements say which server ran them with a number: PostgreSQL's port (each
//! server of the dev cluster listens on its own), MariaDB's `@@server_id` (`scripts/mariadb`
//! numbers the master 1, the replicas 2 and 3).

use pindb_core::{Config, RouterMode};

use crate::{MariaDbWorld, World};

/// A database the adapters run on: how a statement names the server that ran it, and the world
/// the scenarios set up on it.
pub trait Backend {
    /// The database's name, for messages.
    const NAME: &'static str;
    /// What the server's number is, for messages.
    const NUMBER: &'static str;
    /// An integer expression: the number of the server that evaluates it.
    const SERVER: &'static str;
    /// One row into the world's `items`, returning as `port` the number of the server that
    /// ran the insert.
    const INSERT: &'static str;
    /// [`Backend::INSERT`] taking 0.5 s on the server: a write long enough to be cut while it
    /// runs.
    const SLOW_INSERT: &'static str;
    /// Its world.
    type World: Servers;
}

/// PostgreSQL: servers told apart by port; the world is [`World`].
#[derive(Debug)]
pub struct Postgres;

impl Backend for Postgres {
    const NAME: &'static str = "PostgreSQL";
    const NUMBER: &'static str = "port";
    const SERVER: &'static str = "current_setting('port')::int";
    const INSERT: &'static str = "INSERT INTO items DEFAULT VALUES RETURNING port";
    const SLOW_INSERT: &'static str = "INSERT INTO items SELECT FROM pg_sleep(0.5) RETURNING port";
    type World = World;
}

/// MariaDB: servers told apart by `@@server_id`; the world is [`MariaDbWorld`].
#[derive(Debug)]
pub struct MariaDb;

impl Backend for MariaDb {
    const NAME: &'static str = "MariaDB";
    const NUMBER: &'static str = "server_id";
    // Signed: `@@server_id` is unsigned, which sqlx will not decode as an `i32`.
    const SERVER: &'static str = "CAST(@@server_id AS SIGNED)";
    const INSERT: &'static str = "INSERT INTO items () VALUES () RETURNING server_id AS port";
    const SLOW_INSERT: &'static str =
        "INSERT INTO items (server_id) VALUES (@@server_id + SLEEP(0.5)) RETURNING server_id AS port";
    type World = MariaDbWorld;
}

/// The world of adapter `A`'s database.
pub type WorldOf<A> = <<A as crate::Adapter>::Backend as Backend>::World;

/// A world as the scenario table sees it, whatever the database: the number each server
/// answers with, a config reaching them, and the rows written on the primary; and for tests
/// that build their own config (a server behind a proxy, a master nothing listens for) each
/// server's URL, and setup of their own.
// The futures are awaited in place, on one task: no `Send` bound is needed.
#[allow(async_fn_in_trait)]
pub trait Servers: Sized {
    /// A fresh world on the dev cluster's set of this database, each server reached directly.
    async fn fresh() -> Self;
    /// The world's schema (PostgreSQL) or database (MariaDB): what `{schema}` stands for in
    /// [`Servers::setup`], and the qualifier of the objects it made.
    fn schema(&self) -> &str;
    /// The URL of node `node` (0: the primary, 1 or 2: a replica), directly, in the world's
    /// schema or database; [`crate::with_address`] points it elsewhere.
    fn url(&self, node: usize) -> String;
    /// Runs `sql` (statements; `{schema}` replaced by [`Servers::schema`]) on the primary as
    /// the world's maker (PostgreSQL: the application user; MariaDB: the admin, the only one
    /// that may make a function with a binary log), then waits until both replicas replayed
    /// it.
    async fn setup(&self, sql: &str);
    /// Rows in the world's table `table`, on the primary.
    async fn count(&self, table: &str) -> i64;
    /// The primary's number.
    fn master(&self) -> i32;
    /// The replicas' numbers.
    fn replicas(&self) -> [i32; 2];
    /// The cluster as one set, with `router` mode (`None`: disabled).
    fn config(&self, router: Option<RouterMode>) -> Config;
    /// Rows in `items`, on the primary.
    async fn rows(&self) -> i64 {
        self.count("items").await
    }
    /// Drops what the world made.
    async fn finish(self);
}

/// `config` with `router` mode (`None`: disabled, with the strict router, so that a scenario
/// shows nothing is refused).
pub(crate) fn routed(mut config: Config, router: Option<RouterMode>) -> Config {
    config.router = router.unwrap_or(RouterMode::Strict);
    config.enabled = router.is_some();
    config
}
