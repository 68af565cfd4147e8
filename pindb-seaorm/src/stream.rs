//! SeaORM's `StreamTrait` on a routed connection: a stream runs where its statement is
//! routed, without a fallback (its rows are the caller's to read). A write read as a stream
//! ends out of pindb's sight, so its set's position is recorded as unknown.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use pindb_core::Operation;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, QueryStream, Statement, StreamTrait};

use crate::connection::PinDb;
use crate::error::to_db_err;

impl StreamTrait for PinDb {
    type Stream<'a> = QueryStream;

    fn get_database_backend(&self) -> DbBackend {
        ConnectionTrait::get_database_backend(self)
    }

    fn stream_raw<'a>(
        &'a self,
        stmt: Statement,
    ) -> Pin<Box<dyn Future<Output = Result<QueryStream, DbErr>> + 'a + Send>> {
        let router = self.router();
        let shape = router.shape_of(&stmt.sql);
        let routed = router.route_shape(&shape).map_err(to_db_err);
        if let (Ok(route), Operation::Write) = (&routed, shape.op) {
            // A write's stream ends when its caller stops reading it, out of pindb's sight:
            // its set's position is recorded as unknown (a flight never landed).
            drop(router.write_flight(route.index));
        }
        match routed.and_then(|route| self.conn(route.index, route.epoch)) {
            Ok(Cow::Borrowed(conn)) => conn.stream_raw(stmt),
            // A runtime replica's pool, held by the future (the stream owns its connection).
            Ok(Cow::Owned(conn)) => Box::pin(async move { conn.stream_raw(stmt).await }),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}
