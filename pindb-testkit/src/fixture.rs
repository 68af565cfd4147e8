//! Ready-made worlds: [`Fixture`] for an integration test, [`bench_users`] for the benchmarks.

use crate::cluster::Cluster;
use crate::replay::ReplayControl;
use crate::schema::TestSchema;

/// One integration test's world: a fresh schema set up by `setup_sql`, replicas caught up, and
/// exclusive control of replay (so pausing a replica cannot disturb another test).
///
/// In `setup_sql` and the other SQL given to it, `{schema}` stands for the schema name.
#[derive(Debug)]
pub struct Fixture {
    /// The cluster.
    pub cluster: Cluster,
    /// This test's schema.
    pub schema: TestSchema,
    /// Replay control, held for the whole test.
    pub control: ReplayControl,
}

impl Fixture {
    /// Creates the schema, runs `setup_sql` on the primary and waits for both replicas.
    pub async fn new(setup_sql: &str) -> Fixture {
        let cluster = Cluster::from_env();
        let control = cluster.exclusive().await;
        let schema = cluster.fresh_schema().await;
        let fixture = Fixture {
            cluster,
            schema,
            control,
        };
        fixture.on_primary(setup_sql).await;
        fixture.cluster.sync_replicas().await;
        fixture
    }

    /// A pindb config over the primary and the given replicas (1 and/or 2), in this schema.
    pub fn config(&self, mode: pindb_core::RouterMode, replicas: &[usize]) -> pindb_core::Config {
        let mut config = pindb_core::Config::single_set(
            self.schema.url(&self.cluster.primary_url),
            replicas
                .iter()
                .map(|&n| self.schema.url(self.cluster.replica_url(n))),
        );
        config.router = mode;
        config
    }

    /// Runs SQL on the primary directly.
    pub async fn on_primary(&self, sql: &str) {
        let sql = sql.replace("{schema}", &self.schema.name);
        self.cluster
            .primary()
            .await
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// Pauses replay on replica `n`, then runs `sql` on the primary and waits until the
    /// replica has received (not replayed) it: from now on the replica is provably stale.
    pub async fn write_unseen_by(&mut self, n: usize, sql: &str) {
        self.control.pause(n).await;
        self.on_primary(sql).await;
        let lsn = self.cluster.primary_lsn().await;
        self.cluster.wait_for_receive(n, lsn).await;
    }

    /// The first column of `sql`'s rows, as text, read on the primary.
    pub async fn primary_column(&self, sql: &str) -> Vec<String> {
        let sql = sql.replace("{schema}", &self.schema.name);
        self.cluster
            .primary()
            .await
            .simple_query(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect()
    }

    /// Resumes replay and drops the schema.
    pub async fn finish(self) {
        drop(self.control);
        self.schema.drop().await;
    }
}

/// The benchmarks' set-up, the same for every adapter: [`bench_users`], a strict config of
/// the primary and replica 1 in that schema, and replica 1's URL in it (the plain side of
/// each comparison).
#[derive(Debug)]
pub struct BenchSet {
    /// The schema with `bench_users`; drop it at the end.
    pub schema: TestSchema,
    /// The primary and replica 1, strict router.
    pub config: pindb_core::Config,
    /// Replica 1, in the schema.
    pub replica_url: String,
}

/// See [`BenchSet`].
pub async fn bench_set(cluster: &Cluster) -> BenchSet {
    let schema = bench_users(cluster).await;
    let replica_url = schema.url(cluster.replica_url(1));
    let mut config =
        pindb_core::Config::single_set(schema.url(&cluster.primary_url), [replica_url.clone()]);
    config.router = pindb_core::RouterMode::Strict;
    BenchSet {
        schema,
        config,
        replica_url,
    }
}

/// Creates a schema with a `bench_users (id int primary key, name text)` table of 1,000 rows
/// and waits for both replicas: the benchmarks' common data set.
pub async fn bench_users(cluster: &Cluster) -> TestSchema {
    let schema = cluster.fresh_schema().await;
    cluster
        .primary()
        .await
        .batch_execute(&format!(
            "CREATE TABLE {s}.bench_users (id int PRIMARY KEY, name text NOT NULL);
             INSERT INTO {s}.bench_users SELECT g, 'user ' || g FROM generate_series(1, 1000) g;",
            s = schema.name
        ))
        .await
        .unwrap_or_else(|e| panic!("creating bench_users failed: {e:?}"));
    cluster.sync_replicas().await;
    schema
}
