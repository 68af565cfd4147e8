//! A server behind a reader endpoint ([`Database::server`]): its pool keeps only the
//! connections that reached it. sqlx opens another after a refused one (with a short backoff,
//! up to the acquire timeout, logging each at ERROR level under the target `sqlx::pool`), so
//! the hook only answers whether this one landed right.

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
            // One round trip, simple protocol: nothing stays prepared on the server. Bounded
            // here too: sqlx's pool maintenance runs this outside any acquire timeout.
            let asked = sea_orm::sqlx::raw_sql(SERVER_ADDRESS_SQL).fetch_one(&mut *conn);
            let row = tokio::time::timeout(db.pool.connect_timeout, asked)
                .await
                .map_err(|_| {
                    sea_orm::sqlx::Error::Protocol(format!(
                        "`{}`: no answer to where the connection landed within {:?}",
                        db.alias, db.pool.connect_timeout
                    ))
                })??;
            let address: String = sea_orm::sqlx::Row::try_get(&row, 0)?;
            match db.reaches(&address) {
                true => Ok(()),
                false => Err(sea_orm::sqlx::Error::Protocol(db.wrong_server(&address))),
            }
        })
    })
}
