//! What both the async and the sync routing tests share: the `notes` table and a per-test
//! world on the dev cluster.
#![allow(dead_code)] // each test binary uses its own part

use diesel::prelude::*;
use diesel::sql_types::BigInt;
use pindb_core::{Config, Hint, Operation, Router, RouterMode};
use pindb_testkit::Fixture;

diesel::table! {
    ledger (id) {
        id -> Integer,
        entry -> Text,
    }
}

diesel::table! {
    notes (id) {
        id -> Integer,
        author -> Text,
        body -> Text,
    }
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Identifiable, AsChangeset)]
#[diesel(table_name = notes)]
pub struct Note {
    pub id: i32,
    pub author: String,
    pub body: String,
}

#[derive(Insertable)]
#[diesel(table_name = notes)]
pub struct NewNote<'a> {
    pub author: &'a str,
    pub body: &'a str,
}

/// One test's world: a `notes` table holding one row ("old"), replicas caught up.
pub struct World(pub Fixture);

impl std::ops::Deref for World {
    type Target = Fixture;
    fn deref(&self) -> &Fixture {
        &self.0
    }
}

impl std::ops::DerefMut for World {
    fn deref_mut(&mut self) -> &mut Fixture {
        &mut self.0
    }
}

impl World {
    pub async fn new() -> World {
        World(
            Fixture::new(
                "CREATE TABLE {schema}.notes (id serial PRIMARY KEY, author text NOT NULL, body text NOT NULL);
                 INSERT INTO {schema}.notes (author, body) VALUES ('alice', 'old');",
            )
            .await,
        )
    }

    pub fn config(&self, mode: RouterMode, replicas: &[usize]) -> Config {
        self.0.config(mode, replicas)
    }

    /// Replica `n` stops replaying, then a "new" row is written that it has not replayed.
    pub async fn make_stale(&mut self, n: usize) {
        self.0
            .write_unseen_by(
                n,
                "INSERT INTO {schema}.notes (author, body) VALUES ('alice', 'new')",
            )
            .await;
    }

    pub async fn primary_bodies(&self) -> Vec<String> {
        self.0
            .primary_column("SELECT body FROM {schema}.notes ORDER BY id")
            .await
    }

    pub async fn finish(self) {
        self.0.finish().await;
    }
}

/// A config whose pools (master and replicas) hold at most `size` connections.
pub fn sized(
    w: &World,
    mode: RouterMode,
    replicas: &[usize],
    size: u32,
    timeout_ms: u64,
) -> Config {
    let mut config = w.config(mode, replicas);
    let master = config.masters.get_mut("default").unwrap();
    master.max_size = Some(size);
    master.connect_timeout_ms = Some(timeout_ms);
    config
}

#[derive(QueryableByName)]
pub struct Count {
    #[diesel(sql_type = BigInt)]
    pub n: i64,
}

/// Two sets on two primaries: `default` (the cluster's primary) and `books` (the stranger),
/// with a delegate that sends the `ledger` table to `books`. Both primaries have a `ledger`
/// table, so a row on the wrong one would land silently.
pub async fn two_primaries(w: &World, mode: RouterMode) -> (Router, tokio_postgres::Client) {
    w.on_primary("CREATE TABLE {schema}.ledger (id serial PRIMARY KEY, entry text NOT NULL)")
        .await;
    let stranger = pindb_testkit::connect(&w.cluster.stranger_url).await;
    stranger
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {s}; \
             CREATE TABLE {s}.ledger (id serial PRIMARY KEY, entry text NOT NULL)",
            s = w.schema.name
        ))
        .await
        .unwrap();
    let toml = format!(
        r#"
        router = "{mode}"
        [masters.default]
        url = "{p}"
        [masters.books]
        url = "{b}"
        [sets]
        default = [{{ url = "{r1}" }}]
        books = []
        "#,
        mode = match mode {
            RouterMode::Strict => "strict",
            _ => "greedy",
        },
        p = w.schema.url(&w.cluster.primary_url),
        b = w.schema.url(&w.cluster.stranger_url),
        r1 = w.schema.url(w.cluster.replica_url(1)),
    );
    let delegate = |hint: &Hint, _: Operation| hint.tables.contains(&"ledger").then_some("books");
    let router = Router::builder(Config::from_toml_str(&toml).unwrap())
        .delegate(delegate)
        .build()
        .unwrap();
    (router, stranger)
}

pub async fn entries(client: &tokio_postgres::Client, schema: &str) -> Vec<String> {
    client
        .query(
            &format!("SELECT entry FROM {schema}.ledger ORDER BY id"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}
