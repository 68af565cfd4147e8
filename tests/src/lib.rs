//! The adapters under one trait, for the cross-crate scenarios in `tests/scenarios.rs`.
//!
//! Each [`Adapter`] runs its statements through the ORM's ordinary path (diesel's
//! `RunQueryDsl` on `db.get()`, SeaORM's `ConnectionTrait`) and returns the port of the server
//! that ran them (`current_setting('port')`), so a scenario can tell the primary from a replica.
#![forbid(unsafe_code)]

use pindb_core::{Config, Router};

/// The table the writes go to; `{schema}` stands for the test's schema. Its `port` column
/// defaults to the port of the server that runs the `INSERT`.
pub const SETUP_SQL: &str = "CREATE TABLE {schema}.items \
    (id serial PRIMARY KEY, port int NOT NULL DEFAULT current_setting('port')::int)";

/// Why a statement did not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The strict router's refusal, recognised with the adapter's `is_unpinned_write`.
    UnpinnedWrite,
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
    async fn open(config: Config) -> Self;
    /// The adapter's router (pins and guards).
    fn router(&self) -> &Router;
    /// `SELECT current_setting('port')`.
    async fn read(&self) -> Outcome;
    /// `INSERT INTO items DEFAULT VALUES RETURNING port`.
    async fn write(&self) -> Outcome;
    /// The same insert inside a transaction.
    async fn transaction_write(&self) -> Outcome;
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
        if pindb_diesel::is_unpinned_write(&e) {
            super::Failure::UnpinnedWrite
        } else {
            super::Failure::Other(e.to_string())
        }
    }
}

/// diesel-async over bb8: `pindb_diesel::bb8::PinDb`.
#[derive(Debug)]
pub struct DieselAsync(pindb_diesel::bb8::PinDb);

impl Adapter for DieselAsync {
    const NAME: &'static str = "diesel-async (bb8)";

    async fn open(config: Config) -> Self {
        DieselAsync(pindb_diesel::bb8::PinDb::new(config).expect("bb8 PinDb"))
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

    async fn open(config: Config) -> Self {
        DieselSync(pindb_diesel::r2d2::PinDb::new(config).expect("r2d2 PinDb"))
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
    if pindb_seaorm::is_unpinned_write(&e) {
        Failure::UnpinnedWrite
    } else {
        Failure::Other(e.to_string())
    }
}

impl Adapter for SeaOrm {
    const NAME: &'static str = "SeaORM";

    async fn open(config: Config) -> Self {
        SeaOrm(
            pindb_seaorm::PinDb::connect(config)
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
}
