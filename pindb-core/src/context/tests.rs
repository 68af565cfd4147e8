//! The state a context keeps per set, without a runtime.

use super::*;

/// What a context compares its master's other GTID domains with at its end: what was seen
/// before its first write of any kind, or nothing at all once pinned by hand.
#[test]
fn the_outside_snapshot_is_the_first_writes_or_none_after_a_hand_pin() {
    let set: Arc<str> = Arc::from("default");
    let mut state = State::default();
    state.pin_for_write(&set, 7);
    state.pin_for_write(&set, 8);
    state.write_unlearned(&set, 9);
    assert_eq!(
        state.outside_before("default"),
        Some(7),
        "the first write's"
    );
    let mut guarded = State::default();
    guarded.write_unlearned(&set, 3);
    guarded.pin_for_write(&set, 4);
    assert_eq!(
        guarded.outside_before("default"),
        Some(3),
        "a guarded write first"
    );
    state.pin(&set, PinOrigin::New);
    state.pin_for_write(&set, 9);
    assert_eq!(state.outside_before("default"), Some(0), "pinned by hand");
    let mut cleared = State::default();
    cleared.pin_for_write(&set, 5);
    cleared.clear_pins();
    cleared.pin_for_write(&set, 6);
    assert_eq!(
        cleared.outside_before("default"),
        Some(5),
        "before unpin_all"
    );
    cleared.pin(&set, PinOrigin::New);
    assert_eq!(cleared.outside_before("default"), Some(0));
    let mut carried = State::default();
    carried.pin(&set, PinOrigin::Carried);
    assert_eq!(
        carried.outside_before("default"),
        None,
        "a carried pin wrote nothing"
    );
}
