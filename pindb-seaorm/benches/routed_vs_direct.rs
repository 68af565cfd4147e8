#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API

//! `find_by_id` through the routed connection vs. through a plain `DatabaseConnection` to the
//! same replica, same pool size, same run. Needs the dev cluster (`scripts/cluster up`).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use pindb_seaorm::PinDb;
use pindb_testkit::Cluster;
use sea_orm::entity::prelude::*;
use sea_orm::{ConnectOptions, Database};

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

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let cluster = Cluster::from_env();
    let (schema, routed, plain) = rt.block_on(async {
        let pindb_testkit::BenchSet {
            schema,
            config,
            replica_url,
        } = pindb_testkit::bench_set(&cluster).await;
        let routed = PinDb::connect(config).await.unwrap();
        let mut opts = ConnectOptions::new(replica_url);
        opts.max_connections(10).sqlx_logging(false);
        let plain = Database::connect(opts).await.unwrap();
        (schema, routed, plain)
    });

    let mut g = c.benchmark_group("find_by_id");
    g.bench_function("plain_database_connection", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                bench_user::Entity::find_by_id(42)
                    .one(&plain)
                    .await
                    .unwrap(),
            )
        })
    });
    g.bench_function("routed", |b| {
        b.to_async(&rt).iter(|| {
            pindb_core::scope(async {
                black_box(
                    bench_user::Entity::find_by_id(42)
                        .one(&routed)
                        .await
                        .unwrap(),
                )
            })
        })
    });
    g.finish();
    rt.block_on(schema.drop());
}

criterion_group!(benches, bench);
criterion_main!(benches);
