//! A statement on a master that never left: SeaORM acquires its connection inside the
//! statement, where sqlx retries a refused connection until its acquire timeout, so pindb
//! cannot tell from outside whether a statement was sent. The pool's hooks tell the
//! statement's own task when it gets a connection ([`tell_when_handed_out`]); until then a
//! refusal or a promotion may cut it short, since nothing was sent ([`unless_unsent`]).

use std::cell::Cell;
use std::future::Future;
use std::task::Poll;

use pindb_core::adapter::Promotion;
use pindb_core::Router;
use sea_orm::sqlx::pool::PoolOptions;
use sea_orm::DbErr;

use crate::error::to_db_err;

tokio::task_local! {
    /// Set by a write pool's hooks, in the task of the statement acquiring the connection:
    /// from then on the statement may have been sent.
    static HANDED_OUT: Cell<bool>;
}

/// Installs the hooks that tell the statement under way (if [`unless_unsent`] watches it)
/// that it got a connection: a new one (`after_connect`) or an idle one (`before_acquire`,
/// after sqlx's own check). Every connection sqlx hands out passes one of them, in the
/// acquiring task.
pub(crate) fn tell_when_handed_out<DB: sea_orm::sqlx::Database>(
    pool: PoolOptions<DB>,
) -> PoolOptions<DB> {
    pool.after_connect(|_, _| {
        handed_out();
        Box::pin(std::future::ready(Ok(())))
    })
    .before_acquire(|_, _| {
        handed_out();
        Box::pin(std::future::ready(Ok(true)))
    })
}

fn handed_out() {
    let _ = HANDED_OUT.try_with(|flag| flag.set(true));
}

/// Why a statement still waiting for its pool was not sent ([`unless_unsent`]).
pub(crate) enum Unsent {
    /// pindb's own connection attempt was refused.
    Refused(pindb_core::PinDbError),
    /// The monitor found another primary: its index.
    Moved(usize),
}

impl Unsent {
    /// The error a statement routed to a database in `role` fails with.
    pub(crate) fn into_db_err(self, role: &'static str) -> DbErr {
        match self {
            Unsent::Refused(refused) => to_db_err(refused.routed_as(role)),
            // Only when the statement was not kept to be sent there: never, in practice.
            Unsent::Moved(_) => DbErr::Custom(
                "pindb: the primary changed while a statement waited for its connection; \
                 nothing was sent, run it again"
                    .to_owned(),
            ),
        }
    }
}

/// Runs `statement` (on the database at `index`) unless, while it still waits for the
/// pool, pindb's own connection attempt is refused or `promotion` finds another primary:
/// then nothing was sent, and [`Unsent`] says why. sqlx retries a refused connection until
/// its acquire timeout (`connect_timeout_ms`, 5 s by default) inside the statement, where
/// pindb cannot see whether it was sent: the pool's hooks say when it got a connection
/// ([`HANDED_OUT`]). A statement that got one runs to its end, whatever happens.
pub(crate) async fn unless_unsent<T>(
    router: &Router,
    index: usize,
    promotion: &Promotion<'_>,
    statement: impl Future<Output = T>,
) -> Result<T, Unsent> {
    let watched = async {
        tokio::pin!(statement);
        let refused = router.refused_while_waiting(index);
        let moved = promotion.wait();
        tokio::pin!(refused, moved);
        // The watchers run (and their timer is set) only while the statement has no
        // connection; once it has one, they are dropped and it runs to its end.
        let unsent = std::future::poll_fn(|cx| {
            if let Poll::Ready(done) = statement.as_mut().poll(cx) {
                return Poll::Ready(Ok(done));
            }
            if HANDED_OUT.with(Cell::get) {
                return Poll::Ready(Err(None));
            }
            if let Poll::Ready(refused) = refused.as_mut().poll(cx) {
                return Poll::Ready(Err(Some(Unsent::Refused(refused))));
            }
            match moved.as_mut().poll(cx) {
                Poll::Ready(primary) => Poll::Ready(Err(Some(Unsent::Moved(primary)))),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        match unsent {
            Ok(done) => Ok(done),
            Err(None) => Ok(statement.await),
            Err(Some(unsent)) => Err(unsent),
        }
    };
    HANDED_OUT.scope(Cell::new(false), watched).await
}
