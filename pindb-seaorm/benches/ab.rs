#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! Interleaved A/B, SeaORM: `find_by_id` through `pindb_seaorm::PinDb` in a pinning context
//! vs. a plain `DatabaseConnection` to the same replica. Needs the dev cluster
//! (`scripts/cluster up`). `cargo bench -p pindb-seaorm --bench ab`; with `--features mariadb`
//! the same on the cluster's MariaDB set too. `PINDB_AB_PROFILE=plain|routed` runs one side
//! alone for `PINDB_AB_SECONDS` (10) and prints its queries, for a profiler
//! (`scripts/instructions seaorm`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use pindb_seaorm::PinDb;
use pindb_testkit::ab::{interleave, report};
use pindb_testkit::Cluster;
use sea_orm::entity::prelude::*;
use sea_orm::{ConnectOptions, Database, DatabaseConnection};

mod bench_user {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "bench_users")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub name: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

const BATCH: u32 = 200;

async fn plain(db: &DatabaseConnection) -> Duration {
    let start = Instant::now();
    for _ in 0..BATCH {
        black_box(bench_user::Entity::find_by_id(42).one(db).await.unwrap());
    }
    start.elapsed()
}

async fn routed(db: &PinDb) -> Duration {
    let start = Instant::now();
    for _ in 0..BATCH {
        pindb_core::scope(async {
            black_box(bench_user::Entity::find_by_id(42).one(db).await.unwrap());
        })
        .await;
    }
    start.elapsed()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cluster = Cluster::from_env();
        let pindb_testkit::BenchSet {
            schema,
            config,
            replica_url,
        } = pindb_testkit::bench_set(&cluster).await;
        let db = PinDb::connect(config).await.unwrap();
        let mut opts = ConnectOptions::new(replica_url);
        opts.max_connections(10).sqlx_logging(false);
        let direct = Database::connect(opts).await.unwrap();
        plain(&direct).await;
        routed(&db).await;
        if let Ok(side) = std::env::var("PINDB_AB_PROFILE") {
            profile(&side, &direct, &db).await;
            schema.drop().await;
            return;
        }
        let (p, r) = interleave(BATCH, || plain(&direct), || routed(&db)).await;
        report("SeaORM find_by_id", &p, &r);
        schema.drop().await;
        #[cfg(feature = "mariadb")]
        mariadb().await;
    });
}

/// One side alone for `PINDB_AB_SECONDS`, in batches: what a profiler divides by.
async fn profile(side: &str, direct: &DatabaseConnection, db: &PinDb) {
    let seconds: u64 = std::env::var("PINDB_AB_SECONDS").map_or(10, |s| {
        s.parse()
            .unwrap_or_else(|e| panic!("PINDB_AB_SECONDS={s}: {e}"))
    });
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut queries = 0u64;
    while Instant::now() < end {
        match side {
            "plain" => plain(direct).await,
            "routed" => routed(db).await,
            other => panic!("PINDB_AB_PROFILE={other}: expected plain or routed"),
        };
        queries += u64::from(BATCH);
    }
    println!("{side}: {queries} queries");
}

/// The same A/B on the MariaDB set's first replica.
#[cfg(feature = "mariadb")]
async fn mariadb() {
    let cluster = pindb_testkit::MariaDbCluster::from_env();
    cluster.bench_users();
    let config = pindb_core::Config::single_set(cluster.master_url(), [cluster.replica_url(1)]);
    let db = PinDb::connect(config).await.unwrap();
    db.router().start_monitor().await.unwrap();
    let mut opts = ConnectOptions::new(cluster.replica_url(1));
    opts.max_connections(10).sqlx_logging(false);
    let direct = Database::connect(opts).await.unwrap();
    plain(&direct).await;
    routed(&db).await;
    let (p, r) = interleave(BATCH, || plain(&direct), || routed(&db)).await;
    report("SeaORM find_by_id on MariaDB", &p, &r);
}
