//! A server behind a reader endpoint ([`Database::server`]): its pool keeps only the
//! connections that reached it. sqlx opens another after a refused one (with a short backoff,
//! up to the acquire timeout), so the hook only answers whether this one landed right.

use std::sync::Arc;

use pindb_core::adapter::{Database, SERVER_ADDRESS_SQL};
use sea_orm::sqlx::postgres::PgPoolOptions;

/// Installs the check on every new connection of `db`'s pool, if `db` is a server behind an
/// endpoint.
pub(crate) fn keep_only_its_server(pool: PgPoolOptions, db: &Database) -> PgPoolOptions {
    if db.server.is_none() {
        return pool;
    }
    let db = Arc::new(db.clone());
    pool.after_connect(move |conn, _| {
        let db = Arc::clone(&db);
        Box::pin(async move {
            // Unnamed: nothing stays prepared on the server.
            let address: String = sea_orm::sqlx::query_scalar(SERVER_ADDRESS_SQL)
                .persistent(false)
                .fetch_one(&mut *conn)
                .await?;
            match db.reaches(&address) {
                true => Ok(()),
                false => Err(sea_orm::sqlx::Error::Configuration(
                    db.wrong_server(&address).into(),
                )),
            }
        })
    })
}
