//! What every diesel bench reads: the `bench_users` table (made by
//! `pindb_testkit::bench_users`) and the one statement timed, a primary-key SELECT.

diesel::table! {
    bench_users (id) {
        id -> Integer,
        name -> Text,
    }
}

/// The row the timed statement returns.
pub type Row = (i32, String);

/// `SELECT .. WHERE id = 42` on `$conn` (any diesel-async connection), the row kept from the
/// optimizer.
#[allow(unused_macros)] // each bench uses one of the two
macro_rules! find_42 {
    ($conn:expr) => {{
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        let row: common::Row = common::bench_users::table
            .find(42)
            .get_result($conn)
            .await
            .unwrap();
        std::hint::black_box(row)
    }};
}

/// [`find_42!`] on a sync diesel connection.
#[allow(unused_macros)]
macro_rules! find_42_sync {
    ($conn:expr) => {{
        use diesel::prelude::*;
        let row: common::Row = common::bench_users::table
            .find(42)
            .get_result($conn)
            .unwrap();
        std::hint::black_box(row)
    }};
}
