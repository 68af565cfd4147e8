//! The adapters under one trait, for the cross-crate scenarios in `tests/scenarios.rs`.
//!
//! Each [`Adapter`] runs its statements through the ORM's ordinary path (diesel's
//! `RunQueryDsl` on `db.get()`, SeaORM's `ConnectionTrait`) and returns the port of the server
//! that ran them (`current_setting('port')`), so a scenario can tell the primary from a replica.
#![forbid(unsafe_code)]

pub mod store_hunt;

use pindb_core::{Config, Router, RouterMode};
use pindb_testkit::{Cluster, SharedReplay, TestSchema};

/// The table the writes go to; `{schema}` stands for the test's schema. Its `port` column
/// defaults to the port of the server that runs the `INSERT`.
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

/// The port of the server that ran a statement, or why it did not run.
pub type Outcome = Result<i32, Failure>;

/// One pindb adapter, seen by the scenarios.
// The futures are awaited in place, on one task: no `Send` bound is needed.
#[allow(async_fn_in_trait)]
pub trait Adapter: Sized {
    /// The name failures are reported under.
    const NAME: &'static str;
    /// Builds the adapter's pools from `config`.
    async fn open(config: Config) -> Self {
        Self::from_router(Router::new(config).expect("a valid config")).await
    }
    /// Builds the adapter's pools for a router built by the caller (a store of its own...).
    async fn from_router(router: Router) -> Self;
    /// The adapter's router (pins and guards).
    fn router(&self) -> &Router;
    /// `SELECT current_setting('port')`.
    async fn read(&self) -> Outcome;
    /// `INSERT INTO items DEFAULT VALUES RETURNING port`.
    async fn write(&self) -> Outcome;
    /// The same insert inside a transaction.
    async fn transaction_write(&self) -> Outcome;
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

    pub(crate) fn server_port() -> diesel::expression::SqlLiteral<diesel::sql_types::Integer> {
        diesel::dsl::sql("current_setting('port')::int")
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

/// diesel-async over bb8: `pindb_diesel::bb8::PinDb`.
#[derive(Debug)]
pub struct DieselAsync(pindb_diesel::bb8::PinDb);

impl Adapter for DieselAsync {
    const NAME: &'static str = "diesel-async (bb8)";

    async fn from_router(router: Router) -> Self {
        DieselAsync(pindb_diesel::bb8::PinDb::from_router(router).expect("bb8 PinDb"))
    }

    fn router(&self) -> &Router {
        self.0.router()
    }

    async fn read(&self) -> Outcome {
        use diesel_async::RunQueryDsl;
        let query = diesel::select(items::server_port());
        query
            .get_result(&mut self.0.get())
            .await
            .map_err(items::failure)
    }

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
        use diesel_async::RunQueryDsl;
        let row: diesel::QueryResult<items::Port> =
            diesel::sql_query(sql).get_result(&mut self.0.get()).await;
        row.map(|r| r.port).map_err(items::failure)
    }

    async fn port_of_sql_on(&self, alias: &str, sql: &str) -> Outcome {
        use diesel_async::RunQueryDsl;
        let mut conn = self
            .0
            .read_with(&pindb_core::Hint::alias(alias))
            .await
            .map_err(|e| Failure::Other(e.to_string()))?;
        let row: diesel::QueryResult<items::Port> =
            diesel::sql_query(sql).get_result(&mut *conn).await;
        row.map(|r| r.port).map_err(items::failure)
    }
}

/// Sync diesel over r2d2: `pindb_diesel::r2d2::PinDb`, called from
/// `pindb_core::spawn_blocking` so the pinning context follows.
#[derive(Debug)]
pub struct DieselSync(pindb_diesel::r2d2::PinDb);

impl DieselSync {
    /// Runs `f` on a blocking thread that re-entered the current context.
    async fn blocking<F>(&self, f: F) -> Outcome
    where
        F: FnOnce(&mut pindb_diesel::r2d2::PinDbConnection) -> diesel::QueryResult<i32>,
        F: Send + 'static,
    {
        let db = self.0.clone();
        pindb_core::spawn_blocking(move || f(&mut db.get()))
            .await
            .expect("the blocking closure panicked")
            .map_err(items::failure)
    }
}

impl Adapter for DieselSync {
    const NAME: &'static str = "sync diesel (r2d2)";

    async fn from_router(router: Router) -> Self {
        DieselSync(pindb_diesel::r2d2::PinDb::from_router(router).expect("r2d2 PinDb"))
    }

    fn router(&self) -> &Router {
        self.0.router()
    }

    async fn read(&self) -> Outcome {
        use diesel::RunQueryDsl;
        self.blocking(|conn| diesel::select(items::server_port()).get_result(conn))
            .await
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
        use diesel::RunQueryDsl;
        let sql = sql.to_owned();
        self.blocking(move |conn| {
            let row: items::Port = diesel::sql_query(sql).get_result(conn)?;
            Ok(row.port)
        })
        .await
    }

    async fn port_of_sql_on(&self, alias: &str, sql: &str) -> Outcome {
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

/// SeaORM: `pindb_seaorm::PinDb`.
#[derive(Debug)]
pub struct SeaOrm(pindb_seaorm::PinDb);

const SEA_READ: &str = "SELECT current_setting('port')::int AS port";
const SEA_INSERT: &str = "INSERT INTO items DEFAULT VALUES RETURNING port";

async fn sea_port<C: sea_orm::ConnectionTrait>(db: &C, sql: &str) -> Result<i32, sea_orm::DbErr> {
    let statement = sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, sql);
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

impl Adapter for SeaOrm {
    const NAME: &'static str = "SeaORM";

    async fn from_router(router: Router) -> Self {
        SeaOrm(
            pindb_seaorm::PinDb::from_router(router)
                .await
                .expect("SeaORM PinDb"),
        )
    }

    fn router(&self) -> &Router {
        self.0.router()
    }

    async fn read(&self) -> Outcome {
        sea_port(&self.0, SEA_READ).await.map_err(sea_failure)
    }

    async fn write(&self) -> Outcome {
        sea_port(&self.0, SEA_INSERT).await.map_err(sea_failure)
    }

    async fn transaction_write(&self) -> Outcome {
        use sea_orm::{TransactionError, TransactionTrait};
        let result = self
            .0
            .transaction::<_, i32, sea_orm::DbErr>(|txn| Box::pin(sea_port(txn, SEA_INSERT)))
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

/// A fresh schema with the `items` table, the servers' ports, and the shared replay lock (no
/// test pauses or stops a replica meanwhile).
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

/// `host:port` of a URL.
fn address(url: &str) -> String {
    let tail = url.rsplit('@').next().unwrap_or_default();
    tail.split('/').next().unwrap_or_default().to_owned()
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
        let mut config = match &self.path {
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
        config.router = router.unwrap_or(RouterMode::Strict);
        config.enabled = router.is_some();
        config
    }

    /// Rows in `items`, on the primary.
    pub async fn rows(&self) -> i64 {
        let sql = format!("SELECT count(*) FROM {}.items", self.schema.name);
        self.primary.query_one(&sql, &[]).await.expect(&sql).get(0)
    }

    /// Drops the schema.
    pub async fn finish(self) {
        drop(self.primary);
        if !matches!(self.path, Path::PgBouncer) {
            self.schema.drop().await;
        }
    }
}
