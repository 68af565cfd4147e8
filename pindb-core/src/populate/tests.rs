use std::time::Duration;

use super::parts::parse_url;
use super::*;
use crate::Config;

fn err(toml: &str) -> (Option<String>, String) {
    match Config::from_toml_str(toml).unwrap_err() {
        PinDbError::Config { alias, problem } => (alias, problem),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn no_masters() {
    let (alias, problem) = err("");
    assert_eq!(alias, None);
    assert!(
        problem.contains("no masters") && problem.contains("[masters.default]"),
        "{problem}"
    );
}

#[test]
fn master_without_sets_entry() {
    let (alias, problem) = err("[masters.default]\nurl = 'postgres://h/d'");
    assert_eq!(alias.as_deref(), Some("default"));
    assert!(problem.contains("default = []"), "{problem}");
}

#[test]
fn empty_sets_entry_means_zero_replicas() {
    let c =
        Config::from_toml_str("[masters.default]\nurl = 'postgres://h/d'\n[sets]\ndefault = []")
            .unwrap();
    assert_eq!(c.databases().unwrap().len(), 1);
}

#[test]
fn sets_entry_without_master() {
    let (alias, problem) =
        err("[masters.default]\nurl = 'postgres://h/d'\n[sets]\ndefault = []\nanalytics = [{}]");
    assert_eq!(alias.as_deref(), Some("analytics"));
    assert!(problem.contains("[masters.analytics]"), "{problem}");
}

#[test]
fn no_default_master() {
    let (alias, problem) = err("[masters.main]\nurl = 'postgres://h/d'\n[sets]\nmain = []");
    assert_eq!(alias.as_deref(), Some("default"));
    assert!(problem.contains("unmanaged_default"), "{problem}");
}

#[test]
fn unmanaged_default_needs_an_unmanaged_default() {
    let (alias, problem) =
        err("unmanaged_default = true\n[masters.main]\nurl = 'postgres://h/d'\n[sets]\nmain = []");
    assert_eq!(alias.as_deref(), Some("default"));
    assert!(problem.contains("[unmanaged.default]"), "{problem}");
}

#[test]
fn unmanaged_default_is_accepted() {
    let c = Config::from_toml_str(
        "unmanaged_default = true\n[masters.main]\nurl = 'postgres://h/d'\n[sets]\nmain = []\n\
         [unmanaged.default]\nurl = 'postgres://legacy/d'",
    )
    .unwrap();
    let dbs = c.databases().unwrap();
    assert_eq!(dbs[1].alias, "default");
    assert_eq!(dbs[1].membership, Membership::Unmanaged);
}

#[test]
fn unmanaged_default_beside_a_default_master_collides() {
    let (alias, problem) = err(
        "[masters.default]\nurl = 'postgres://h/d'\n[sets]\ndefault = []\n\
         [unmanaged.default]\nurl = 'postgres://legacy/d'",
    );
    assert_eq!(alias.as_deref(), Some("default"));
    assert!(problem.contains("used twice"), "{problem}");
}

#[test]
fn generated_replica_alias_collides_with_a_master() {
    let (alias, problem) = err(
        "[masters.default]\nurl = 'postgres://h/d'\n[masters.default-1]\nurl = 'postgres://h2/d'\n\
         [sets]\ndefault = [{ host = 'r' }]\n'default-1' = []",
    );
    assert_eq!(alias.as_deref(), Some("default-1"));
    assert!(problem.contains("used twice"), "{problem}");
}

#[test]
fn unparsable_url_names_the_alias_and_hides_the_password() {
    let (alias, problem) =
        err("[masters.default]\nurl = 'postgres://u:secret@h:notaport/d'\n[sets]\ndefault = []");
    assert_eq!(alias.as_deref(), Some("default"));
    assert!(
        problem.contains("does not parse") && !problem.contains("secret"),
        "{problem}"
    );
}

#[test]
fn wrong_scheme() {
    let (_, problem) = err("[masters.default]\nurl = 'oracle://h/d'\n[sets]\ndefault = []");
    assert!(
        problem.contains("postgres://") && problem.contains("mysql://"),
        "{problem}"
    );
}

#[test]
fn a_mariadb_url_without_the_feature_names_it_and_with_it_gets_mariadb_defaults() {
    let config = "[masters.default]\nurl = 'mysql://app@h/d'\n[sets]\ndefault = [{ host = 'r' }]";
    if cfg!(not(feature = "mariadb")) {
        let (_, problem) = err(config);
        assert!(problem.contains("`mariadb` feature"), "{problem}");
        return;
    }
    let config = Config::from_toml_str(config).unwrap();
    let dbs = config.databases().unwrap();
    assert_eq!(dbs[1].url(), "mysql://app@r:3306/d");
    assert_eq!(dbs[1].backend, crate::backend::Backend::MariaDb);
}

#[test]
fn a_set_of_two_backends_and_postgres_only_features_on_mariadb_are_refused() {
    if cfg!(not(feature = "mariadb")) {
        return;
    }
    let (alias, problem) = err(
        "[masters.default]\nurl = 'mysql://h/d'\n[sets]\ndefault = [{ url = 'postgres://r/d' }]",
    );
    assert_eq!(alias.as_deref(), Some("default-1"));
    assert!(problem.contains("a set runs on one database"), "{problem}");
    for (settings, named) in [
        ("url = 'mysql://h1,h2/d'", "a list of hosts"),
        (
            "url = 'mysql://h/d'\n[masters.default.discovery]\nmax_replicas = 1",
            "`discovery`",
        ),
    ] {
        let (_, problem) = err(&format!(
            "[masters.default]\n{settings}\n[sets]\ndefault = []"
        ));
        assert!(
            problem.contains(named) && problem.contains("PostgreSQL's only"),
            "{problem}"
        );
    }
    let (_, problem) = err(
        "[masters.default]\nurl = 'mysql://h/d'\n[sets]\ndefault = [{ host = 'r', kind = 'logical' }]",
    );
    assert!(problem.contains("follows its master by GTID"), "{problem}");
}

#[test]
fn a_replication_connection_is_a_mariadb_replicas_and_a_plain_name() {
    let (refused, problem) = err(
        "[masters.default]\nurl = 'postgres://h/d'\n[sets]\ndefault = [{ replication_connection = 'main' }]",
    );
    assert_eq!(refused.as_deref(), Some("default-1"), "{problem}");
    assert!(problem.contains("MariaDB's"), "{problem}");
    if cfg!(not(feature = "mariadb")) {
        return;
    }
    let databases = |toml: &str| Config::from_toml_str(toml).unwrap().databases().unwrap();
    let dbs = databases(
        "[masters.default]\nurl = 'mysql://h/d'\n[sets]\n\
         default = [{ host = 'r1', replication_connection = 'main-1' }, { host = 'r2' }]",
    );
    let named: Vec<_> = dbs
        .iter()
        .map(|d| d.replication_connection.as_deref())
        .collect();
    assert_eq!(named, [None, Some("main-1"), None]);
    for (toml, alias, says) in [
        (
            "[masters.default]\nurl = 'mysql://h/d'\nreplication_connection = 'main'\n[sets]\ndefault = []",
            "default",
            "give it to a replica",
        ),
        (
            "[masters.default]\nurl = 'mysql://h/d'\n[sets]\ndefault = [{ replication_connection = \"x'; DROP\" }]",
            "default-1",
            "letters, digits",
        ),
    ] {
        let (refused, problem) = err(toml);
        assert_eq!(refused.as_deref(), Some(alias), "{problem}");
        assert!(problem.contains(says), "{problem}");
    }
}

#[test]
fn replica_url_error_names_the_replica_alias() {
    let (alias, _) = err(
        "[masters.default]\nurl = 'postgres://h/d'\n[sets]\ndefault = [{}, { url = 'nonsense' }]",
    );
    assert_eq!(alias.as_deref(), Some("default-2"));
}

#[test]
fn missing_host() {
    let (alias, problem) = err("[masters.default]\ndbname = 'd'\n[sets]\ndefault = []");
    assert_eq!(alias.as_deref(), Some("default"));
    assert!(problem.contains("no host"), "{problem}");
}

#[test]
fn zero_max_size() {
    let (_, problem) =
        err("[masters.default]\nurl = 'postgres://h/d'\nmax_size = 0\n[sets]\ndefault = []");
    assert!(problem.contains("max_size"), "{problem}");
}

/// A pool's `connect_timeout` of 0 would panic in bb8's builder at the first checkout.
#[test]
fn zero_connect_timeout() {
    for at in [
        "[masters.default]\nurl = 'postgres://h/d'\nconnect_timeout_ms = 0\n[sets]\ndefault = []",
        "[masters.default]\nurl = 'postgres://h/d'\n[sets]\ndefault = [{ host = 'r1', connect_timeout_ms = 0 }]",
    ] {
        let (_, problem) = err(at);
        assert!(problem.contains("connect_timeout_ms = 0"), "{problem}");
    }
}

#[test]
fn aliases_are_named_and_ordered_deterministically() {
    let c = Config::from_toml_str(
        "[masters.default]\nurl = 'postgres://h/d'\n[masters.analytics]\nurl = 'postgres://a/d'\n\
         [sets]\ndefault = [{ host = 'r1' }, { host = 'r2' }]\nanalytics = [{ host = 'a1' }]\n\
         [unmanaged.legacy]\nurl = 'postgres://l/d'",
    )
    .unwrap();
    let names: Vec<_> = c
        .databases()
        .unwrap()
        .into_iter()
        .map(|d| d.alias)
        .collect();
    assert_eq!(
        names,
        [
            "analytics",
            "analytics-1",
            "default",
            "default-1",
            "default-2",
            "legacy"
        ]
    );
}

#[test]
fn overrides_merge_on_top_of_the_master() {
    let c = Config::from_toml_str(
        "[masters.default]\nurl = 'postgres://app:p%40ss@m:5000/app?sslmode=disable&application_name=web'\n\
         max_size = 20\nconnect_timeout_ms = 1500\n\
         [sets]\ndefault = [\n\
           { host = 'r1', options = { application_name = 'web-ro' } },\n\
           { url = 'postgres://reader@r2:6000', max_size = 4 },\n\
         ]",
    )
    .unwrap();
    let dbs = c.databases().unwrap();
    let (m, r1, r2) = (&dbs[0], &dbs[1], &dbs[2]);
    assert_eq!(m.password.as_deref(), Some("p@ss"));
    assert_eq!(r1.host, "r1");
    assert_eq!(r1.port, 5000);
    assert_eq!(r1.user.as_deref(), Some("app"));
    assert_eq!(r1.password.as_deref(), Some("p@ss"));
    assert_eq!(r1.options["sslmode"], "disable");
    assert_eq!(r1.options["application_name"], "web-ro");
    assert_eq!(r1.pool.max_size, 20);
    assert_eq!(r1.pool.connect_timeout, Duration::from_millis(1500));
    assert_eq!((r2.host.as_str(), r2.port), ("r2", 6000));
    assert_eq!(r2.user.as_deref(), Some("reader"));
    assert_eq!(
        r2.dbname.as_deref(),
        Some("app"),
        "the database name is inherited"
    );
    assert_eq!(r2.pool.max_size, 4);
    assert_eq!(
        r1.url(),
        "postgres://app:p%40ss@r1:5000/app?application_name=web-ro&sslmode=disable"
    );
    assert_eq!(
        r1.membership,
        Membership::Replica {
            set: "default".into(),
            index: 1
        }
    );
    assert_eq!(r1.set(), Some("default"));
}

#[test]
fn rendered_url_round_trips_through_the_parser() {
    let c = Config::single_set(
        "postgres://a%20b:p%2Fw@h:1/d%20b?application_name=y%20z",
        Vec::<String>::new(),
    );
    let db = &c.databases().unwrap()[0];
    let again = parse_url("x", &db.url()).unwrap();
    assert_eq!(again.user.as_deref(), Some("a b"));
    assert_eq!(again.password.as_deref(), Some("p/w"));
    assert_eq!(again.dbname.as_deref(), Some("d b"));
    assert_eq!(again.options["application_name"], "y z");
}

#[test]
fn a_set_given_as_hosts_names_each_host() {
    for toml in [
        "[masters.default]\nurl = 'postgres://app:pw@db1:6001,db2,[::1]:6003/app?sslmode=prefer'",
        "[masters.default]\nurl = 'postgres://app:pw@db1:6001/app?sslmode=prefer'\n\
         hosts = ['db1:6001', 'db2', '[::1]:6003']\n[sets]\ndefault = []",
    ] {
        let dbs = Config::from_toml_str(toml).unwrap().databases().unwrap();
        let names: Vec<_> = dbs
            .iter()
            .map(|d| (d.alias.as_str(), d.host.as_str(), d.port))
            .collect();
        // A host without a port takes 5432, as in libpq.
        assert_eq!(
            names,
            [
                ("default-1", "db1", 6001),
                ("default-2", "db2", 5432),
                ("default-3", "[::1]", 6003)
            ],
            "{toml}"
        );
        assert!(dbs.iter().all(|d| d.is_host()
            && d.user.as_deref() == Some("app")
            && d.password.as_deref() == Some("pw")
            && d.dbname.as_deref() == Some("app")
            && d.options["sslmode"] == "prefer"));
        assert_eq!(
            dbs[1].membership,
            Membership::Host {
                set: "default".into(),
                index: 2
            }
        );
    }
}

#[test]
fn a_set_given_as_hosts_refuses_replicas_and_bad_hosts() {
    let (alias, problem) = err("[masters.default]\nhosts = ['a', 'b']\n[sets]\ndefault = [{}]");
    assert_eq!(alias.as_deref(), Some("default"));
    assert!(problem.contains("remove the replicas"), "{problem}");
    let (alias, problem) = err("[masters.default]\nhosts = ['a:x']");
    assert_eq!(alias.as_deref(), Some("default"));
    assert!(
        problem.contains("`a:x` is not `host` or `host:port`"),
        "{problem}"
    );
    let (_, problem) = err("[masters.default]\nhosts = ['a']\nkind = 'logical'");
    assert!(problem.contains("`kind`"), "{problem}");
    for bad in ["::1", "[::1]junk", "a,,b", "a:1:2"] {
        let (_, problem) = err(&format!("[masters.default]\nhosts = ['{bad}']"));
        assert!(
            problem.contains("is not `host` or `host:port`"),
            "{bad}: {problem}"
        );
    }
    let dbs = Config::from_toml_str("[masters.default]\nhosts = ['[::1]', '[::1]:7']")
        .unwrap()
        .databases()
        .unwrap();
    assert_eq!((dbs[0].port, dbs[1].port), (5432, 7));
    assert_eq!(dbs[1].url(), "postgres://[::1]:7");
    let (alias, problem) = err(
        "[masters.default]\nurl = 'postgres://h/d'\n[sets]\ndefault = [{ url = 'postgres://a,b/d' }]",
    );
    assert_eq!(alias.as_deref(), Some("default-1"));
    assert!(
        problem.contains("a replica or an unmanaged database is one host"),
        "{problem}"
    );
    let (alias, problem) = err(
        "[masters.default]\nurl = 'postgres://h/d'\n[sets]\ndefault = []\n[unmanaged.x]\nhosts = ['a']",
    );
    assert_eq!(alias.as_deref(), Some("x"));
    assert!(
        problem.contains("a replica or an unmanaged database is one host"),
        "{problem}"
    );
}

#[test]
fn a_pool_url_carries_the_read_only_net_and_a_probe_url_only_what_tokio_postgres_knows() {
    let config = Config::from_toml_str(
        r#"
        [masters.default]
        url = "postgres://app@db:5432/app?options=-c%20search_path%3Ds&statement-cache-capacity=0"
        [sets]
        default = [{ port = 5433, kind = "logical" }, { port = 5434 }]
        "#,
    )
    .unwrap();
    let dbs = config.databases().unwrap();
    let find = |alias: &str| dbs.iter().find(|d| d.alias == alias).unwrap();
    let parsed = |url: String| url.parse::<tokio_postgres::Config>().unwrap();
    // The logical replica: the user's options and the net, in one startup parameter.
    let logical = find("default-1");
    assert!(logical.read_only);
    let pool = parsed(logical.pool_url());
    assert_eq!(
        pool.get_options(),
        Some("-c search_path=s -c default_transaction_read_only=on")
    );
    assert!(
        !logical.pool_url().contains("statement"),
        "{}",
        logical.pool_url()
    );
    // A streaming standby gets nothing: it refuses writes by itself.
    let standby = find("default-2");
    assert!(!standby.read_only);
    assert_eq!(
        parsed(standby.pool_url()).get_options(),
        Some("-c search_path=s")
    );
    // pindb's own connections: what tokio-postgres parses (it refuses the rest), and the net.
    assert_eq!(
        parsed(logical.probe_url()).get_options(),
        Some("-c search_path=s -c default_transaction_read_only=on")
    );
    assert!(
        logical.options.contains_key("statement-cache-capacity"),
        "SeaORM's pools (`url`) keep it"
    );
    // Emulated replicas are their master, opened read-only.
    let mut emulated = config.clone();
    emulated.emulate_replicas = 1;
    let dbs = emulated.databases().unwrap();
    assert!(dbs.iter().filter(|d| d.is_replica()).all(|d| d.read_only));
    assert!(dbs.iter().filter(|d| !d.is_replica()).all(|d| !d.read_only));
}

#[test]
fn an_option_no_driver_knows_is_named() {
    let (alias, e) = err(r#"
        [masters.default]
        url = "postgres://app@db/app?statement_cache_capacity=0"
        [sets]
        default = []
        "#);
    assert_eq!(alias.as_deref(), Some("default"));
    assert!(
        e.contains("`statement_cache_capacity`") && e.contains("statement-cache-capacity"),
        "{e}"
    );
}
