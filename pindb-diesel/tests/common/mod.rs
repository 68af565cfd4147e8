//! What both the async and the sync routing tests share: the `notes` table and a per-test
//! world on the dev cluster.
#![allow(dead_code)] // each test binary uses its own part

use diesel::prelude::*;
use pindb_core::{Config, RouterMode};
use pindb_testkit::{Cluster, ReplayControl, TestSchema};

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

/// One test's world: its schema with a `notes` table holding one row ("old"), replicas caught
/// up, exclusive control of replay.
pub struct World {
    pub cluster: Cluster,
    pub schema: TestSchema,
    pub control: ReplayControl,
}

impl World {
    pub async fn new() -> World {
        let cluster = Cluster::from_env();
        let control = cluster.exclusive().await;
        let schema = cluster.fresh_schema().await;
        cluster
            .primary()
            .await
            .batch_execute(&format!(
                "CREATE TABLE {s}.notes (id serial PRIMARY KEY, author text NOT NULL, body text NOT NULL);
                 INSERT INTO {s}.notes (author, body) VALUES ('alice', 'old');",
                s = schema.name
            ))
            .await
            .unwrap();
        cluster.sync_replicas().await;
        World {
            cluster,
            schema,
            control,
        }
    }

    /// A config over the primary and the given replicas (1-based), in this test's schema.
    pub fn config(&self, mode: RouterMode, replicas: &[usize]) -> Config {
        let mut config = Config::single_set(
            self.schema.url(&self.cluster.primary_url),
            replicas
                .iter()
                .map(|&n| self.schema.url(self.cluster.replica_url(n))),
        );
        config.router = mode;
        config
    }

    /// Pauses replay on replica `n`, then writes a "new" row on the primary that the replica
    /// has received but not replayed.
    pub async fn make_stale(&mut self, n: usize) {
        self.control.pause(n).await;
        self.cluster
            .primary()
            .await
            .batch_execute(&format!(
                "INSERT INTO {}.notes (author, body) VALUES ('alice', 'new')",
                self.schema.name
            ))
            .await
            .unwrap();
        let lsn = self.cluster.primary_lsn().await;
        self.cluster.wait_for_receive(n, lsn).await;
    }

    pub async fn primary_bodies(&self) -> Vec<String> {
        self.cluster
            .primary()
            .await
            .query(
                &format!("SELECT body FROM {}.notes ORDER BY id", self.schema.name),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    pub async fn finish(self) {
        drop(self.control);
        self.schema.drop().await;
    }
}
