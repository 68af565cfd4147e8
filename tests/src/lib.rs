//! The adapters under one trait, for the cross-crate scenarios in `tests/scenarios.rs`.
//!
//! Each [`Adapter`] runs its statements through the ORM's ordinary path (diesel's
//! `RunQueryDsl` on `db.get()`, SeaORM's `ConnectionTrait`) and returns the number of the
//! server that ran them (PostgreSQL's port, MariaDB's `@@server_id`: see [`Backend`]), so a
//! scenario can tell the primary from a replica.
#![forbid(unsafe_code)]

mod backend;
mod mariadb;
pub mod store_hunt;

use std::marker::PhantomData;

use diesel::expression::SqlLiteral;
use diesel::query_builder::SqlQuery;
use diesel::sql_types::Integer;
use diesel_async::methods::LoadQuery;
use diesel_async::{AsyncMysqlConnection, AsyncPgConnection};
use pindb_core::{Config, Router, RouterMode};
use pindb_diesel::bb8::{Driver, PinDbConnection};
use pindb_diesel::r2d2::Driver as SyncDriver;
use pindb_testkit::{Cluster, SharedReplay, TestSchema};

pub use backend::{Backend, MariaDb, Postgres, Servers, WorldOf};
pub use mariadb::MariaDbWorld;
pub use pindb_testkit::{address, with_address};

/// The table the writes go to on PostgreSQL; `{schema}` stands for the test's schema. Its
/// `port` column defaults to the port of the server that runs the `INSERT`.
pub const SETUP_SQL: &str = "CREATE TABLE {schema}.items \
    (id serial PRIMARY KEY, port int NOT NULL DEFAULT current_setting('port')::int)";

/// Why a statement did not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The strict router's refusal, recognised with the adapter's `is_unpinned_write`.
    UnpinnedWrite,
    /// pindb's `PinDbError::Unreachable`, recognised with the adapter's `routing_error`: the
    /// error's text.
    Unreachable(String),
    /// pindb's `PinDbError::NoPrimary` (a set given as hosts has no primary now; retryable):
    /// the error's text.
    NoPrimary(String),
    /// Any other error, as text.
    Other(String),
}

/// The number of the server that ran a statement ([`Backend`]), or why it did not run.
pub type Outcome = Result<i32, Failure>;

/// One pindb adapter, seen by the scenarios.
// The futures are awaited in place, on one task: no `Send` bound is needed.
#[allow(async_fn_in_trait)]
pub trait Adapter: Sized {
    /// The name failures are reported under (the scenario table adds the database's).
    const NAME: &'static str;
    /// The database it runs on: its statements and its world.
    type Backend: Backend;
    /// Builds the adapter's pools from `config`.
    async fn open(config: Config) -> Self {
        Self::from_router(Router::new(config).expect("a valid config")).await
    }
    /// Builds the adapter's pools for a router built by the caller (a store of its own...).
    async fn from_router(router: Router) -> Self;
    /// The adapter's router (pins and guards).
    fn router(&self) -> &Router;
    /// A `SELECT` of [`Backend::SERVER`].
    async fn read(&self) -> Outcome;
    /// [`Backend::INSERT`], or the ORM's own insert into `items` returning `port`.
    async fn write(&self) -> Outcome;
    /// The same insert inside a transaction.
    async fn transaction_write(&self) -> Outcome;
    /// [`Backend::SLOW_INSERT`] (or what the adapter can run of it): an insert that runs for
    /// 0.5 s on the server, returning `port`.
    async fn slow_write(&self) -> Outcome {
        self.port_of_sql(<Self::Backend as Backend>::SLOW_INSERT)
            .await
    }
    /// Any statement returning one row with an integer column `port`, as raw SQL through the
    /// ORM (`diesel::sql_query`, SeaORM's `query_one_raw`).
    async fn port_of_sql(&self, sql: &str) -> Outcome;
    /// The same on the pool of `alias`, chosen explicitly (`Hint::alias`, SeaORM's
    /// `connection(alias)`): no routing decision on the statement.
    async fn port_of_sql_on(&self, alias: &str, sql: &str) -> Outcome;
}

mod items {
    diesel::table! {
        items (id) {
            id -> Integer,
            port -> Integer,
        }
    }

    pub(crate) fn failure(e: diesel::result::Error) -> super::Failure {
        match pindb_diesel::routing_error(&e) {
            _ if pindb_diesel::is_unpinned_write(&e) => super::Failure::UnpinnedWrite,
            Some(pindb_diesel::Error::Routing(u)) if u.is_unreachable() => {
                super::Failure::Unreachable(u.to_string())
            }
            Some(pindb_diesel::Error::Routing(u)) if u.is_retryable() => {
                super::Failure::NoPrimary(u.to_string())
            }
            _ => super::Failure::Other(e.to_string()),
        }
    }

    #[derive(diesel::QueryableByName)]
    pub(crate) struct Port {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        pub(crate) port: i32,
    }
}

/// `sql`'s `port`, on any diesel-async connection (routed or pooled, of either database).
async fn sql_port<Conn>(conn: &mut Conn, sql: &str) -> diesel::QueryResult<i32>
where
    Conn: diesel_async::AsyncConnectionCore + Send,
    SqlQuery: LoadQuery<'static, Conn, items::Port>,
{
    use diesel_async::RunQueryDsl;
    let row: items::Port = diesel::sql_query(sql).get_result(conn).await?;
    Ok(row.port)
}

/// diesel-async over bb8: `pindb_diesel::bb8::PinDb<C>`, `C` the connection type of the
/// database ([`DieselAsync`], [`DieselAsyncMariaDb`]).
pub struct DieselAsyncOn<C: Driver>(pindb_diesel::bb8::PinDb<C>);

/// diesel-async on PostgreSQL.
pub type DieselAsync = DieselAsyncOn<AsyncPgConnection>;

/// diesel-async on MariaDB.
pub type DieselAsyncMariaDb = DieselAsyncOn<AsyncMysqlConnection>;

impl<C: Driver> std::fmt::Debug for DieselAsyncOn<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DieselAsyncOn").field(&self.0).finish()
    }
}

/// What the adapter does the same on every database; each `Adapter` impl delegates here.
impl<C: Driver> DieselAsyncOn<C> {
    fn with_router(router: Router) -> Self {
        DieselAsyncOn(pindb_diesel::bb8::PinDb::with_router(router).expect("bb8 PinDb"))
    }

    /// A typed `SELECT` of `server` (a [`Backend::SERVER`]).
    async fn select(&self, server: &str) -> Outcome
    where
        diesel::dsl::select<SqlLiteral<Integer>>: LoadQuery<'static, PinDbConnection<C>, i32>,
    {
        use diesel_async::RunQueryDsl;
        let query = diesel::select(diesel::dsl::sql::<Integer>(server));
        query
            .get_result(&mut self.0.get())
            .await
            .map_err(items::failure)
    }

    async fn port_of(&self, sql: &str) -> Outcome
    where
        SqlQuery: LoadQuery<'static, PinDbConnection<C>, items::Port>,
    {
        sql_port(&mut self.0.get(), sql)
            .await
            .map_err(items::failure)
    }

    async fn port_of_on(&self, alias: &str, sql: &str) -> Outcome
    where
        SqlQuery: LoadQuery<'static, C, items::Port>,
    {
        let mut conn = self
            .0
            .read_with(&pindb_core::Hint::alias(alias))
            .await
            .map_err(|e| Failure::Other(e.to_string()))?;
        sql_port(&mut *conn, sql).await.map_err(items::failure)
    }
}

impl Adapter for DieselAsync {
    const NAME: &'static str = "diesel-async (bb8)";
    type Backend = Postgres;

    async fn from_router(router: Router) -> Self {
        Self::with_router(router)
    }

    fn router(&self) -> &Router {
        self.0.router()
    }

    async fn read(&self) -> Outcome {
        self.select(Postgres::SERVER).await
    }

    // diesel's own insert: its typed path is the one applications use.
    async fn write(&self) -> Outcome {
        use diesel_async::RunQueryDsl;
        let insert = diesel::insert_into(items::items::table).default_values();
        let insert = insert.returning(items::items::port);
        insert
            .get_result(&mut self.0.get())
            .await
            .map_err(items::failure)
    }

    async fn transaction_write(&self) -> Outcome {
        use diesel_async::{AsyncConnection, RunQueryDsl};
        let mut conn = self.0.get();
        conn.transaction(async |conn| {
            let insert = diesel::insert_into(items::items::table).default_values();
            insert.returning(items::items::port).get_result(conn).await
        })
        .await
        .map_err(items::failure)
    }

    async fn port_of_sql(&self, sql: &str) -> Outcome {
        self.port_of(sql).await
    }

    async fn port_of_sql_on(&self, alias: &str, sql: &str) -> Outcome {
        self.port_of_on(alias, sql).await
    }
}

impl Adapter for DieselAsyncMariaDb {
    const NAME: &'static str = "diesel-async (bb8)";
    type Backend = MariaDb;

    async fn from_router(router: Router) -> Self {
        Self::with_router(router)
    }

    fn router(&self) -> &Router {
        self.0.router()
    }

    async fn read(&self) -> Outcome {
        self.select(MariaDb::SERVER).await
    }

    // diesel's MySQL backend has no `RETURNING`: the insert is raw SQL.
    async fn write(&self) -> Outcome {
        self.port_of(MariaDb::INSERT).await
    }

    async fn transaction_write(&self) -> Outcome {
        use diesel_async::AsyncConnection;
        let mut conn = self.0.get();
        conn.transaction(async |conn| sql_port(conn, MariaDb::INSERT).await)
            .await
            .map_err(items::failure)
    }

    async fn port_of_sql(&self, sql: &str) -> Outcome {
        self.port_of(sql).await
    }

    async fn port_of_sql_on(&self, alias: &str, sql: &str) -> Outcome {
        self.port_of_on(alias, sql).await
    }
}

/// Sync diesel over r2d2: `pindb_diesel::r2d2::PinDb<C>`, called from
/// `pindb_core::spawn_blocking` so the pinning context follows; `C` the connection type of
/// the database ([`DieselSync`], [`DieselSyncMariaDb`]).
pub struct DieselSyncOn<C: SyncDriver>(pindb_diesel::r2d2::PinDb<C>);

/// Sync diesel on PostgreSQL.
pub type DieselSync = DieselSyncOn<diesel::PgConnection>;

/// Sync diesel on MariaDB.
pub type DieselSyncMariaDb = DieselSyncOn<diesel::MysqlConnection>;

impl<C: SyncDriver> std::fmt::Debug for DieselSyncOn<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DieselSyncOn").field(&self.0).finish()
    }
}

/// What the adapter does the same on every database; each `Adapter` impl delegates here.
impl<C: SyncDriver> DieselSyncOn<C> {
    fn with_router(router: Router) -> Self {
        DieselSyncOn(pindb_diesel::r2d2::PinDb::with_router(router).expect("r2d2 PinDb"))
    }

    /// Runs `f` on a blocking thread that re-entered the current context.
    async fn blocking<F>(&self, f: F) -> Outcome
    where
        F: FnOnce(&mut pindb_diesel::r2d2::PinDbConnection<C>) -> diesel::QueryResult<i32>,
        F: Send + 'static,
    {
        let db = self.0.clone();
        pindb_core::spawn_blocking(move || f(&mut db.get()))
            .await
            .expect("the blocking closure panicked")
            .map_err(items::failure)
    }

    /// A typed `SELECT` of `server` (a [`Backend::SERVER`]).
    async fn select(&self, server: &'static str) -> Outcome
    where
        for<'a> diesel::dsl::select<SqlLiteral<Integer>>:
            diesel::query_dsl::LoadQuery<'a, pindb_diesel::r2d2::PinDbConnection<C>, i32>,
    {
        use diesel::RunQueryDsl;
        self.blocking(move |conn| {
            diesel::select(diesel::dsl::sql::<Integer>(server)).get_result(conn)
        })
        .await
    }

    async fn port_of(&self, sql: &str) -> Outcome
    where
        for<'a> SqlQuery:
            diesel::query_dsl::LoadQuery<'a, pindb_diesel::r2d2::PinDbConnection<C>, items::Port>,
    {
        use diesel::RunQueryDsl;
        let sql = sql.to_owned();
        self.blocking(move |conn| {
            let row: items::Port = diesel::sql_query(sql).get_result(conn)?;
            Ok(row.port)
        })
        .await
    }

    async fn port_of_on(&self, alias: &str, sql: &str) -> Outcome
    where
        for<'a> SqlQuery: diesel::query_dsl::LoadQuery<'a, C, items::Port>,
    {
        use diesel::RunQueryDsl;
        let (db, alias, sql) = (self.0.clone(), alias.to_owned(), sql.to_owned());
        pindb_core::spawn_blocking(move || {
            let mut conn = db
                .read_with(&pindb_core::Hint::alias(&alias))
                .map_err(|e| Failure::Other(e.to_string()))?;
            let row: items::Port = diesel::sql_query(sql)
                .get_result(&mut *conn)
                .map_err(items::failure)?;
            Ok(row.port)
        })
        .await
        .expect("the blocking closure panicked")
    }
}

impl Adapter for DieselSync {
    const NAME: &'static str = "sync diesel (r2d2)";
    type Backend = Postgres;

    async fn from_router(router: Router) -> Self {
        Self::with_router(router)
    }

    fn router(&self) -> &Router {
        self.0.router()
    }

    async fn read(&self) -> Outcome {
        self.select(Postgres::SERVER).await
    }

    async fn write(&self) -> Outcome {
        use diesel::RunQueryDsl;
        self.blocking(|conn| {
            let insert = diesel::insert_into(items::items::table).default_values();
            insert.returning(items::items::port).get_result(conn)
        })
        .await
    }

    async fn transaction_write(&self) -> Outcome {
        use diesel::{Connection, RunQueryDsl};
        self.blocking(|conn| {
            conn.transaction(|conn| {
                let insert = diesel::insert_into(items::items::table).default_values();
                insert.returning(items::items::port).get_result(conn)
            })
        })
        .await
    }

    async fn port_of_sql(&self, sql: &str) -> Outcome {
        self.port_of(sql).await
    }

    async fn port_of_sql_on(&self, alias: &str, sql: &str) -> Outcome {
        self.port_of_on(alias, sql).await
    }
}

/// One row into `items` through sync diesel on MariaDB, and the `server_id` it was written
/// with. Not [`MariaDb::INSERT`]: libmariadb prepares `INSERT .. RETURNING` without result
/// metadata, and diesel's sync driver then fails it ("No metadata exists"). `LAST_INSERT_ID()`
/// is a write for pindb, so the second statement follows the insert to its server.
fn sync_insert(
    conn: &mut pindb_diesel::r2d2::PinDbConnection<diesel::MysqlConnection>,
) -> diesel::QueryResult<i32> {
    sync_insert_with(conn, "INSERT INTO items () VALUES ()")
}

/// [`sync_insert`] with `insert` (its statement, without `RETURNING`).
fn sync_insert_with(
    conn: &mut pindb_diesel::r2d2::PinDbConnection<diesel::MysqlConnection>,
    insert: &str,
) -> diesel::QueryResult<i32> {
    use diesel::RunQueryDsl;
    diesel::sql_query(insert).execute(conn)?;
    let row: items::Port = diesel::sql_query(
        "SELECT CAST(server_id AS SIGNED) AS port FROM items WHERE id = LAST_INSERT_ID()",
    )
    .get_result(conn)?;
    Ok(row.port)
}

impl Adapter for DieselSyncMariaDb {
    const NAME: &'static str = "sync diesel (r2d2)";
    type Backend = MariaDb;

    async fn from_router(router: Router) -> Self {
        Self::with_router(router)
    }

    fn router(&self) -> &Router {
        self.0.router()
    }

    async fn read(&self) -> Outcome {
        self.select(MariaDb::SERVER).await
    }

    async fn write(&self) -> Outcome {
        self.blocking(sync_insert).await
    }

    async fn transaction_write(&self) -> Outcome {
        use diesel::Connection;
        self.blocking(|conn| conn.transaction(sync_insert)).await
    }

    // `SLOW_INSERT` without its `RETURNING` (see `sync_insert`): the cut, if any, falls on the
    // insert.
    async fn slow_write(&self) -> Outcome {
        let insert = MariaDb::SLOW_INSERT
            .split(" RETURNING")
            .next()
            .unwrap_or_default();
        self.blocking(move |conn| sync_insert_with(conn, insert))
            .await
    }

    async fn port_of_sql(&self, sql: &str) -> Outcome {
        self.port_of(sql).await
    }

    async fn port_of_sql_on(&self, alias: &str, sql: &str) -> Outcome {
        self.port_of_on(alias, sql).await
    }
}

/// SeaORM: `pindb_seaorm::PinDb`, the same type on either database; `B` says which, for the
/// statements ([`SeaOrm`], [`SeaOrmMariaDb`]).
#[derive(Debug)]
pub struct SeaOrmOn<B>(pindb_seaorm::PinDb, PhantomData<B>);

/// SeaORM on PostgreSQL.
pub type SeaOrm = SeaOrmOn<Postgres>;

/// SeaORM on MariaDB.
pub type SeaOrmMariaDb = SeaOrmOn<MariaDb>;

/// `sql`'s `port`, through `db` (the routed connection, a pool, a transaction), in its own
/// database's dialect.
async fn sea_port<C: sea_orm::ConnectionTrait>(db: &C, sql: &str) -> Result<i32, sea_orm::DbErr> {
    let statement = sea_orm::Statement::from_string(db.get_database_backend(), sql);
    let row = db.query_one_raw(statement).await?;
    row.ok_or_else(|| sea_orm::DbErr::RecordNotFound(sql.to_owned()))?
        .try_get("", "port")
}

fn sea_failure(e: sea_orm::DbErr) -> Failure {
    match pindb_seaorm::routing_error(&e) {
        _ if pindb_seaorm::is_unpinned_write(&e) => Failure::UnpinnedWrite,
        Some(pindb_seaorm::Error::Routing(u)) if u.is_unreachable() => {
            Failure::Unreachable(u.to_string())
        }
        Some(pindb_seaorm::Error::Routing(u)) if u.is_retryable() => {
            Failure::NoPrimary(u.to_string())
        }
        _ => Failure::Other(e.to_string()),
    }
}

impl<B: Backend> Adapter for SeaOrmOn<B> {
    const NAME: &'static str = "SeaORM";
    type Backend = B;

    async fn from_router(router: Router) -> Self {
        let db = pindb_seaorm::PinDb::from_router(router).await;
        SeaOrmOn(db.expect("SeaORM PinDb"), PhantomData)
    }

    fn router(&self) -> &Router {
        self.0.router()
    }

    async fn read(&self) -> Outcome {
        self.port_of_sql(&format!("SELECT {} AS port", B::SERVER))
            .await
    }

    async fn write(&self) -> Outcome {
        self.port_of_sql(B::INSERT).await
    }

    async fn transaction_write(&self) -> Outcome {
        use sea_orm::{TransactionError, TransactionTrait};
        let result = self
            .0
            .transaction::<_, i32, sea_orm::DbErr>(|txn| Box::pin(sea_port(txn, B::INSERT)))
            .await;
        result.map_err(|e| match e {
            TransactionError::Connection(e) | TransactionError::Transaction(e) => sea_failure(e),
        })
    }

    async fn port_of_sql(&self, sql: &str) -> Outcome {
        sea_port(&self.0, sql).await.map_err(sea_failure)
    }

    async fn port_of_sql_on(&self, alias: &str, sql: &str) -> Outcome {
        let conn = self.0.connection_now(alias).map_err(sea_failure)?;
        sea_port(&conn, sql).await.map_err(sea_failure)
    }
}

/// The PostgreSQL world: a fresh schema with the `items` table, the servers' ports, and the
/// shared replay lock (no test pauses or stops a replica meanwhile).
#[allow(missing_debug_implementations)] // holds clients that do not implement Debug
pub struct World {
    /// The dev cluster.
    pub cluster: Cluster,
    /// This test's schema.
    pub schema: TestSchema,
    /// A connection to the primary.
    pub primary: tokio_postgres::Client,
    /// The primary's port.
    pub master: i32,
    /// The replicas' ports.
    pub replicas: [i32; 2],
    path: Path,
    _shared: SharedReplay,
}

/// How the adapters reach the cluster.
enum Path {
    /// Each server directly.
    Direct,
    /// The dev cluster's PgBouncer in session mode.
    PgBouncer,
    /// The primary directly, both standbys behind one round-robin endpoint (`servers`).
    Endpoint(pindb_testkit::Proxy),
}

/// The port of the server behind `client`.
pub async fn port_of(client: &tokio_postgres::Client) -> i32 {
    let row = client.query_one("SELECT current_setting('port')::int", &[]);
    row.await.expect("reading a server's port").get(0)
}

impl World {
    /// Sets up the schema and reads the servers' ports.
    pub async fn new() -> World {
        let cluster = Cluster::from_env();
        let shared = cluster.shared().await;
        let schema = cluster.fresh_schema().await;
        let primary = cluster.primary().await;
        // Reads never touch the table, so replicas need not have replayed it.
        let setup = SETUP_SQL.replace("{schema}", &schema.name);
        primary.batch_execute(&setup).await.expect("creating items");
        let master = port_of(&primary).await;
        let replicas = [
            port_of(&cluster.replica(1).await).await,
            port_of(&cluster.replica(2).await).await,
        ];
        assert!(
            !replicas.contains(&master) && replicas[0] != replicas[1],
            "servers are told apart by port: master {master}, replicas {replicas:?}"
        );
        World {
            cluster,
            schema,
            primary,
            master,
            replicas,
            path: Path::Direct,
            _shared: shared,
        }
    }

    /// [`World::new`], with both standbys behind one round-robin reader endpoint (the
    /// testkit's proxy), declared with `servers`.
    pub async fn through_endpoint() -> World {
        let mut w = World::new().await;
        let (r1, r2) = (
            address(w.cluster.replica_url(1)),
            address(w.cluster.replica_url(2)),
        );
        w.path = Path::Endpoint(pindb_testkit::Proxy::round_robin(&[&r1, &r2]).await);
        w
    }

    /// The world through the dev cluster's PgBouncer in session mode. PgBouncer refuses the
    /// `search_path` startup option the other worlds use, so this one connects as the role
    /// `pindb_pooled`, whose own search path is its schema (`scripts/cluster up` makes both):
    /// one such world at a time, its `items` emptied first.
    pub async fn through_pgbouncer() -> World {
        let cluster = Cluster::from_env();
        let shared = cluster.shared().await;
        let as_pooled = |url: &str| url.replacen("://pindb@", "://pindb_pooled@", 1);
        let primary = pindb_testkit::connect(&as_pooled(&cluster.primary_url)).await;
        // Held as long as this connection: one pooled world at a time, whatever the process.
        primary
            .execute("SELECT pg_advisory_lock(hashtext('pindb_pooled'))", &[])
            .await
            .expect("the pooled world's lock");
        let setup = SETUP_SQL.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS");
        primary
            .batch_execute(&setup.replace("{schema}", "pindb_pooled"))
            .await
            .expect("creating pindb_pooled.items (does `scripts/cluster up` make the role?)");
        primary
            .batch_execute("TRUNCATE pindb_pooled.items")
            .await
            .expect("emptying items");
        let master = port_of(&primary).await;
        let replicas = [
            port_of(&cluster.replica(1).await).await,
            port_of(&cluster.replica(2).await).await,
        ];
        World {
            cluster,
            schema: TestSchema::for_tests("pindb_pooled"),
            primary,
            master,
            replicas,
            path: Path::PgBouncer,
            _shared: shared,
        }
    }

    /// The cluster as one set, in this schema, with `router` mode (`None`: disabled).
    pub fn config(&self, router: Option<RouterMode>) -> Config {
        let url = |base: &str| self.schema.url(base);
        let config = match &self.path {
            Path::Direct => Config::single_set(
                url(&self.cluster.primary_url),
                self.cluster.replica_urls.iter().map(|r| url(r)),
            ),
            Path::PgBouncer => {
                let pooled = |node| {
                    let url = self.cluster.pooled_url(node, true);
                    url.replacen("://pindb@", "://pindb_pooled@", 1)
                };
                Config::single_set(pooled(0), [pooled(1), pooled(2)])
            }
            Path::Endpoint(endpoint) => {
                let r1 = address(self.cluster.replica_url(1));
                let through = self
                    .cluster
                    .replica_url(1)
                    .replace(&r1, &format!("127.0.0.1:{}", endpoint.port()));
                let mut config =
                    Config::single_set(url(&self.cluster.primary_url), Vec::<String>::new());
                let replica = pindb_core::DatabaseSettings {
                    servers: vec![r1, address(self.cluster.replica_url(2))],
                    ..pindb_core::DatabaseSettings::from_url(url(&through))
                };
                config.sets.insert("default".to_owned(), vec![replica]);
                config
            }
        };
        backend::routed(config, router)
    }

    /// Rows in `items`, on the primary.
    pub async fn rows(&self) -> i64 {
        Servers::count(self, "items").await
    }

    /// Drops the schema.
    pub async fn finish(self) {
        drop(self.primary);
        if !matches!(self.path, Path::PgBouncer) {
            self.schema.drop().await;
        }
    }
}

impl Servers for World {
    async fn fresh() -> World {
        World::new().await
    }

    fn schema(&self) -> &str {
        &self.schema.name
    }

    fn url(&self, node: usize) -> String {
        match node {
            0 => self.schema.url(&self.cluster.primary_url),
            n => self.schema.url(self.cluster.replica_url(n)),
        }
    }

    async fn setup(&self, sql: &str) {
        let sql = sql.replace("{schema}", &self.schema.name);
        self.primary.batch_execute(&sql).await.expect(&sql);
        self.cluster.sync_replicas().await;
    }

    async fn count(&self, table: &str) -> i64 {
        let sql = format!("SELECT count(*) FROM {}.{table}", self.schema.name);
        self.primary.query_one(&sql, &[]).await.expect(&sql).get(0)
    }

    fn master(&self) -> i32 {
        self.master
    }

    fn replicas(&self) -> [i32; 2] {
        self.replicas
    }

    fn config(&self, router: Option<RouterMode>) -> Config {
        World::config(self, router)
    }

    async fn finish(self) {
        World::finish(self).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let pg = "postgres://pindb:pw@127.0.0.1:25433/pindb?options=-c%20search_path%3Ds";
        assert_eq!(address(pg), "127.0.0.1:25433");
        assert_eq!(
            with_address(pg, "127.0.0.1:1"),
            "postgres://pindb:pw@127.0.0.1:1/pindb?options=-c%20search_path%3Ds"
        );
        let mariadb = "mysql://pindb:p@ss@127.0.0.1:25491/scenarios_1";
        assert_eq!(address(mariadb), "127.0.0.1:25491");
        assert_eq!(
            with_address(mariadb, "127.0.0.1:4242"),
            "mysql://pindb:p@ss@127.0.0.1:4242/scenarios_1"
        );
    }
}
