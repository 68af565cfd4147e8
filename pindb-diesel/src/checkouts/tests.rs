//! The rules of one routed connection, without a database: a fake pooled connection
//! records what was done to it.

use std::sync::atomic::AtomicBool;

use pindb_core::{scope, Config, RouterMode};

use super::*;

#[derive(Default)]
struct Fake {
    poisoned: Arc<AtomicBool>,
    depth: u32,
}

impl Held for Fake {
    fn poison(&mut self) {
        self.poisoned.store(true, Ordering::Release);
    }
    fn depth(&mut self) -> QueryResult<Option<std::num::NonZeroU32>> {
        Ok(std::num::NonZeroU32::new(self.depth))
    }
    fn set_cache(&mut self, _: CacheSize) {}
    fn set_events(&mut self, _: Option<Forward>) {}
}

fn router() -> Router {
    let mut config =
        Config::single_set("postgres://m@127.0.0.1:1/a", ["postgres://r@127.0.0.1:2/a"]);
    config.router = RouterMode::Greedy;
    Router::new(config).unwrap()
}

const READ: Operation = Operation::Read;

#[tokio::test]
async fn a_statement_runs_on_the_held_connection_only_when_it_is_the_right_one() {
    let r = router();
    scope(async {
        let mut slots = Checkouts::<Fake>::new();
        let replica = match slots.decide(&r, &Shape::of(READ)).unwrap() {
            Slot::Checkout(i) => i,
            Slot::Held => panic!("nothing is held yet"),
        };
        assert_eq!(
            slots.replica_read(&r, &Slot::Checkout(replica)),
            Some(replica)
        );
        slots.hold(replica, "default-1", Fake::default());
        assert!(matches!(
            slots.decide(&r, &Shape::of(READ)).unwrap(),
            Slot::Held
        ));
        // A write needs the master: another checkout, after giving this one back.
        let write = slots.decide(&r, &Shape::of(Operation::Write)).unwrap();
        assert!(matches!(write, Slot::Checkout(i) if i != replica));
        assert_eq!(
            slots.replica_read(&r, &write),
            None,
            "the master is no fallback read"
        );
    })
    .await;
}

#[tokio::test]
async fn inside_a_transaction_everything_stays_on_its_connection_and_nothing_falls_back() {
    let r = router();
    scope(async {
        let mut slots = Checkouts::<Fake>::new();
        let master = match slots.decide_begin(&r).unwrap() {
            Slot::Checkout(i) => i,
            Slot::Held => panic!("nothing is held yet"),
        };
        slots.hold(
            master,
            "default",
            Fake {
                depth: 1,
                ..Fake::default()
            },
        );
        slots.start_transaction();
        let read = slots.decide(&r, &Shape::of(READ)).unwrap();
        assert!(matches!(read, Slot::Held));
        assert_eq!(
            slots.replica_read(&r, &read),
            None,
            "never retried in a transaction"
        );
    })
    .await;
}

#[tokio::test]
async fn an_abandoned_transaction_is_poisoned_and_never_reused() {
    let r = router();
    scope(async {
        let mut slots = Checkouts::<Fake>::new();
        let poisoned = Arc::new(AtomicBool::new(false));
        let master = r.topology().index_of("default").unwrap();
        slots.hold(
            master,
            "default",
            Fake {
                poisoned: Arc::clone(&poisoned),
                depth: 1,
            },
        );
        let scope_guard = slots.enter_scope();
        slots.start_transaction();
        drop(scope_guard); // the transaction future was dropped mid-way
        assert!(
            slots.decide(&r, &Shape::of(READ)).is_ok(),
            "routes normally again"
        );
        assert!(poisoned.load(Ordering::Acquire), "the pool discards it");
        assert!(!slots.in_transaction());
    })
    .await;
}

#[tokio::test]
async fn a_failed_connection_is_discarded_not_given_back() {
    scope(async {
        let mut slots = Checkouts::<Fake>::new();
        let poisoned = Arc::new(AtomicBool::new(false));
        slots.hold(
            1,
            "default-1",
            Fake {
                poisoned: Arc::clone(&poisoned),
                depth: 0,
            },
        );
        slots.discard();
        assert!(poisoned.load(Ordering::Acquire));
        assert!(!slots.holds(&router(), 1));
    })
    .await;
}
