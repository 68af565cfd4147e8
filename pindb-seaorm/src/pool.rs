//! The sqlx pool of one database, as SeaORM's `DatabaseConnection`: its settings from the
//! config, the read-only startup parameter of replicas that would accept writes, and the hooks
//! of write pools ([`crate::unsent`]) and of servers behind a reader endpoint
//! ([`crate::server`]).

use pindb_core::adapter::Database;
use sea_orm::{DatabaseConnection, DbErr};

use crate::{server, unsent};

/// The pool of one database (a runtime replica's: of its host now), built without waiting:
/// no connection until first use, so a server that is down at start-up does not stop the
/// application.
pub(crate) fn pool(db: &Database) -> Result<DatabaseConnection, DbErr> {
    match db.backend {
        #[cfg(feature = "mariadb")]
        pindb_core::adapter::Backend::MariaDb => mariadb_pool(db),
        _ => postgres_pool(db),
    }
}

/// A MariaDB database's pool: pindb-core refuses, for MariaDB sets, what needs a startup
/// parameter (read-only replicas that would accept writes), so only the write pools' hooks
/// and the server search of a server behind a reader endpoint are added.
#[cfg(feature = "mariadb")]
fn mariadb_pool(db: &Database) -> Result<DatabaseConnection, DbErr> {
    use sea_orm::sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
    use sea_orm::sqlx::ConnectOptions as _;
    let options: MySqlConnectOptions = db
        .url()
        .parse()
        .map_err(|e| DbErr::Custom(format!("`{}`: {e}", db.alias)))?;
    let options = options.disable_statement_logging();
    let mut pool = MySqlPoolOptions::new()
        .max_connections(db.pool.max_size)
        .acquire_timeout(db.pool.connect_timeout);
    if !db.is_replica() {
        pool = unsent::tell_when_handed_out(pool);
    }
    pool = server::keep_only_its_server(pool, db);
    if let Some(min) = db.pool.min_idle {
        pool = pool.min_connections(min);
    }
    Ok(sea_orm::SqlxMySqlConnector::from_sqlx_mysql_pool(
        pool.connect_lazy_with(options),
    ))
}

fn postgres_pool(db: &Database) -> Result<DatabaseConnection, DbErr> {
    use sea_orm::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use sea_orm::sqlx::ConnectOptions as _;
    let options: PgConnectOptions = db
        .url()
        .parse()
        .map_err(|e| DbErr::Custom(format!("`{}`: {e}", db.alias)))?;
    let mut options = options.disable_statement_logging();
    if db.read_only {
        // A replica that would accept writes (logical, emulated): opened read-only by a
        // startup parameter, no session state a pooler could hand on. A streaming standby
        // refuses writes by itself.
        options = options.options([("default_transaction_read_only", "on")]);
    }
    let mut pool = PgPoolOptions::new()
        .max_connections(db.pool.max_size)
        .acquire_timeout(db.pool.connect_timeout);
    if !db.is_replica() {
        // A write may go there: the statement under way learns when it got a connection.
        pool = unsent::tell_when_handed_out(pool);
    }
    pool = server::keep_only_its_server(pool, db);
    if let Some(min) = db.pool.min_idle {
        pool = pool.min_connections(min);
    }
    Ok(sea_orm::SqlxPostgresConnector::from_sqlx_postgres_pool(
        pool.connect_lazy_with(options),
    ))
}
