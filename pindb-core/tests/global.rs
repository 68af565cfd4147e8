#![allow(missing_docs, missing_debug_implementations, unreachable_pub)] // not a library: nothing here is public API
//! The free functions over the global router (one test binary, so one global).

use pindb_core::{Config, Hint, PinDbError, Reason, Router, RouterMode};

#[tokio::test]
async fn free_functions_use_the_installed_router() {
    assert_eq!(pindb_core::pin("default"), Err(PinDbError::NoGlobalRouter));
    assert!(matches!(
        pindb_core::db_for_read(&Hint::default()),
        Err(PinDbError::NoGlobalRouter)
    ));

    let mut config = Config::single_set("postgres://m/app", ["postgres://r/app"]);
    config.router = RouterMode::Strict;
    Router::new(config.clone())
        .unwrap()
        .install_global()
        .unwrap();
    assert_eq!(
        Router::new(config).unwrap().install_global().unwrap_err(),
        PinDbError::GlobalRouterAlreadyInstalled
    );

    pindb_core::scope(async {
        assert_eq!(pindb_core::get_replica("default").unwrap(), "default-1");
        assert!(pindb_core::db_for_write(&Hint::default()).is_err());
        {
            let _g = pindb_core::master("default").unwrap();
            assert_eq!(
                pindb_core::db_for_write(&Hint::default()).unwrap().reason,
                Reason::MasterGuard
            );
        }
        pindb_core::pin("default").unwrap();
        assert_eq!(
            pindb_core::db_for_read(&Hint::default()).unwrap().reason,
            Reason::Pinned
        );
        let _g = pindb_core::unpinned_replica("default").unwrap();
        assert_eq!(
            pindb_core::db_for_read(&Hint::default()).unwrap().alias,
            "default-1"
        );
    })
    .await;
    assert!(matches!(
        pindb_core::pin("default"),
        Err(PinDbError::NoContext { .. })
    ));
}
