//! What both the async and the sync routing tests share: the `notes` table and a per-test
//! world on the dev cluster.
#![allow(dead_code)] // each test binary uses its own part

use diesel::prelude::*;
use pindb_core::{Config, RouterMode};
use pindb_testkit::Fixture;

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
