use super::*;

#[test]
fn defaults_match_django_pindb() {
    let c =
        Config::from_toml_str("[masters.default]\nurl = 'postgres://h/d'\n[sets]\ndefault = []")
            .unwrap();
    assert!(c.enabled);
    assert_eq!(c.router, RouterMode::Greedy);
    assert_eq!(c.replica_policy, ReplicaPolicy::RoundRobin);
    assert_eq!(c.web.pinning_seconds, 15);
    assert_eq!(c.web.cookie_name, "pindb_pinned_set");
}

#[test]
fn toml_errors_are_config_errors_naming_the_field() {
    let e = Config::from_toml_str("[masters.default]\nport = 'x'").unwrap_err();
    assert!(matches!(e, PinDbError::Config { .. }), "{e}");
    assert!(e.to_string().contains("port"), "{e}");
}

#[test]
fn monitor_and_stickiness_sections() {
    let c = Config::from_toml_str(
        "replica_policy = 'least-lag'\n[masters.default]\nurl = 'postgres://h/d'\n[sets]\ndefault = []\n\
         [monitor]\nmax_lag_bytes = 1024\ntopology_check = 'warn'\n[stickiness]\nmax_wait_ms = 50",
    )
    .unwrap();
    assert_eq!(c.replica_policy, ReplicaPolicy::LeastLag);
    assert_eq!(c.monitor.max_lag_bytes, 1024);
    assert_eq!(c.monitor.topology_check, TopologyCheck::Warn);
    assert_eq!(c.stickiness.max_wait_ms, 50);
    assert_eq!(c.stickiness.ttl_seconds, 30);
    let e = Config::from_toml_str(
        "[masters.default]\nurl = 'postgres://h/d'\n[sets]\ndefault = []\n[monitor]\ninterval_ms = 0",
    )
    .unwrap_err();
    assert!(e.to_string().contains("interval_ms"), "{e}");
}

#[test]
fn env_override_replaces_master_target_and_replicas_inherit() {
    let mut c = Config::from_toml_str(
        "[masters.default]\nhost = 'file-host'\nuser = 'app'\ndbname = 'app'\nmax_size = 3\n\
         [sets]\ndefault = [{ host = 'replica-host' }]",
    )
    .unwrap();
    c.apply_env_overrides([
        ("PATH".to_owned(), "/bin".to_owned()),
        (
            "PINDB_URL_DEFAULT".to_owned(),
            "postgres://app:pw@env-host:6000/app".to_owned(),
        ),
    ])
    .unwrap();
    let dbs = c.databases().unwrap();
    assert_eq!(dbs[0].host, "env-host");
    assert_eq!(dbs[0].port, 6000);
    assert_eq!(dbs[0].pool.max_size, 3);
    assert_eq!(dbs[1].host, "replica-host");
    assert_eq!(dbs[1].password.as_deref(), Some("pw"));
    assert_eq!(dbs[1].port, 6000);
}

#[test]
fn absurd_durations_are_refused() {
    let e = Config::from_toml_str(
        "[web]\npinning_seconds = 18446744073709551615\n[masters.default]\nurl = 'postgres://h/d'\n[sets]\ndefault = []",
    )
    .unwrap_err();
    assert!(e.to_string().contains("10 years"), "{e}");
}

#[test]
fn a_web_setting_at_the_top_level_says_where_it_belongs_now() {
    let e = Config::from_toml_str(
        "cookie_secret = 'x'\n[masters.default]\nurl = 'postgres://h/d'\n[sets]\ndefault = []",
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("`cookie_secret` belongs in the `[web]` section now"),
        "{e}"
    );
}

#[test]
fn env_override_of_a_replica() {
    let mut c = Config::single_set("postgres://app@m/app", ["postgres://app@r1/app"]);
    c.apply_env_overrides([(
        "PINDB_URL_DEFAULT_1".to_owned(),
        "postgres://app@r9:7/app".to_owned(),
    )])
    .unwrap();
    let dbs = c.databases().unwrap();
    assert_eq!((dbs[1].host.as_str(), dbs[1].port), ("r9", 7));
}

#[test]
fn env_override_for_unknown_alias_is_an_error() {
    let mut c = Config::single_set("postgres://app@m/app", ["postgres://app@r1/app"]);
    let e = c
        .apply_env_overrides([("PINDB_URL_NOPE".to_owned(), "postgres://x/y".to_owned())])
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("PINDB_URL_NOPE") && msg.contains("PINDB_URL_DEFAULT_1"),
        "{msg}"
    );
}

#[test]
fn a_position_must_outlive_the_lag_a_replica_in_rotation_can_have() {
    let mut c = Config::single_set("postgres://app@m/app", ["postgres://app@r1/app"]);
    assert!(c.validate().is_ok(), "the defaults are consistent");
    // The old defaults: a replica 30 s behind stayed in rotation while 30 s positions
    // expired.
    c.monitor.max_lag_ms = 30_000;
    c.stickiness.ttl_seconds = 30;
    let msg = c.validate().unwrap_err().to_string();
    assert!(
        msg.contains("ttl_seconds (30 s)") && msg.contains("at least 32"),
        "{msg}"
    );
    c.stickiness.ttl_seconds = 32;
    assert!(c.validate().is_ok());
    assert_eq!(c.min_ttl_ms(), 32_000);
}

#[test]
fn emulated_replicas_are_the_master_opened_again() {
    let mut c = Config::single_set("postgres://app@db1/app", ["postgres://app@db2/app"]);
    c.apply_env_overrides([("PINDB_EMULATE_REPLICAS".to_owned(), "2".to_owned())])
        .unwrap();
    let dbs = c.databases().unwrap();
    let aliases: Vec<_> = dbs.iter().map(|d| d.alias.as_str()).collect();
    assert_eq!(aliases, ["default", "default-1", "default-2"]);
    assert!(
        dbs.iter().all(|d| d.host == "db1"),
        "every replica is the master's database"
    );
    let bad = c.apply_env_overrides([("PINDB_EMULATE_REPLICAS".to_owned(), "yes".to_owned())]);
    assert!(bad
        .unwrap_err()
        .to_string()
        .contains("PINDB_EMULATE_REPLICAS"));
}
