//! A server behind a reader endpoint ([`Database::server`]): its pool keeps only the
//! connections that reached it. sqlx opens another after a refused one (with a short backoff,
//! up to the acquire timeout, logging each at ERROR level under the target `sqlx::pool`), so
//! the hook only answers whether this one landed right.

use std::sync::Arc;

use pindb_core::adapter::Database;
use sea_orm::sqlx;
use sea_orm::sqlx::pool::PoolOptions;

/// Installs the check on every new connection of `db`'s pool, if `db` is a server behind an
/// endpoint.
pub(crate) fn keep_only_its_server<DB>(pool: PoolOptions<DB>, db: &Database) -> PoolOptions<DB>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    String: for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    if db.server.is_none() {
        return pool;
    }
    let db = Arc::new(db.clone());
    pool.after_connect(move |conn, _| {
        let db = Arc::clone(&db);
        Box::pin(async move {
            // One round trip, simple protocol: nothing stays prepared on the server. Bounded
            // here too: sqlx's pool maintenance runs this outside any acquire timeout.
            let asked = sqlx::raw_sql(db.server_question()).fetch_one(&mut *conn);
            let row = tokio::time::timeout(db.pool.connect_timeout, asked)
                .await
                .map_err(|_| {
                    sqlx::Error::Protocol(format!(
                        "`{}`: no answer to where the connection landed within {:?}",
                        db.alias, db.pool.connect_timeout
                    ))
                })??;
            let address: String = sqlx::Row::try_get(&row, 0)?;
            match db.reaches(&address) {
                true => Ok(()),
                false => Err(sqlx::Error::Protocol(db.wrong_server(&address))),
            }
        })
    })
}
