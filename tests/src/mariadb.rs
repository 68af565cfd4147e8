//! The MariaDB world: the dev cluster's MariaDB set (`scripts/cluster up`) with a database of
//! the world's own, the MariaDB twin of the PostgreSQL world's fresh schema. MariaDB has no
//! schemas, and the application user may only use `pindb`, so the admin makes the database and
//! grants it; the adapters' URLs name it, so their statements say plain `items` on either
//! backend.

use std::sync::atomic::{AtomicU32, Ordering};

use pindb_core::{Config, RouterMode};
use pindb_testkit::{MariaDbCluster, MariaDbSharedApply};

use crate::backend::{routed, Servers};

/// The world's `items`; `{db}` stands for its database. Its `server_id` column defaults to the
/// `@@server_id` of the server that runs the `INSERT`.
const SETUP_SQL: &str = "CREATE TABLE {db}.items \
    (id INT AUTO_INCREMENT PRIMARY KEY, server_id INT NOT NULL DEFAULT @@server_id)";

/// A fresh database with the `items` table, the servers' `@@server_id`s, and the shared apply
/// lock (no test stops a replica's SQL thread meanwhile).
#[derive(Debug)]
pub struct MariaDbWorld {
    /// The MariaDB set.
    pub cluster: MariaDbCluster,
    /// This world's database.
    pub database: String,
    /// The primary's `@@server_id`.
    pub master: i32,
    /// The replicas' `@@server_id`s.
    pub replicas: [i32; 2],
    /// Both replicas behind one round-robin reader endpoint, and the replica entry that
    /// declares them with `servers`.
    endpoint: Option<(pindb_testkit::Proxy, pindb_core::DatabaseSettings)>,
    _shared: MariaDbSharedApply,
}

/// `f` on a blocking thread: the testkit's MariaDB helpers wait on the `mariadb` client.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a MariaDB helper panicked")
}

/// A database name no other world uses, in this process or another.
fn fresh_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("scenarios_{}_{n}_{nanos}", std::process::id())
}

/// The user of a `mysql://user:password@host/db` URL.
fn user_of(url: &str) -> &str {
    let auth = url.split_once("://").map_or(url, |(_, rest)| rest);
    let auth = auth.rsplit_once('@').map_or("", |(auth, _)| auth);
    auth.split(':').next().unwrap_or_default()
}

/// `url` with its database replaced by `database`.
fn in_database(url: &str, database: &str) -> String {
    let (server, _) = url
        .rsplit_once('/')
        .filter(|(server, _)| server.contains("://"))
        .unwrap_or_else(|| panic!("`{url}` names no database"));
    format!("{server}/{database}")
}

/// `sql` (one statement, one integer answer) on `node` as the admin.
fn number(cluster: &MariaDbCluster, node: usize, sql: &str) -> i64 {
    let answer = cluster.query(node, sql);
    let answer = answer.unwrap_or_else(|e| panic!("MariaDB node {node}: `{sql}`: {e}"));
    answer
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("MariaDB node {node}: `{sql}` answered `{answer}`: {e}"))
}

impl MariaDbWorld {
    /// Makes the database and its table, waits until both replicas have them (the adapters
    /// connect to the database there too), and reads the servers' `@@server_id`s.
    pub async fn new() -> MariaDbWorld {
        let cluster = MariaDbCluster::from_env();
        let database = fresh_name();
        let (c, db) = (cluster.clone(), database.clone());
        let (shared, master, replicas) = blocking(move || {
            let shared = c.shared();
            let user = user_of(c.master_url());
            let setup = format!(
                "CREATE DATABASE {db}; GRANT ALL PRIVILEGES ON {db}.* TO '{user}'@'%'; {}",
                SETUP_SQL.replace("{db}", &db)
            );
            c.query(0, &setup)
                .unwrap_or_else(|e| panic!("making the database {db}: {e}"));
            c.sync_replicas();
            let id = |node| {
                let id = number(&c, node, "SELECT @@server_id");
                i32::try_from(id).expect("a server_id of the dev cluster fits an i32")
            };
            (shared, id(0), [id(1), id(2)])
        })
        .await;
        assert!(
            !replicas.contains(&master) && replicas[0] != replicas[1],
            "servers are told apart by server_id: master {master}, replicas {replicas:?}"
        );
        MariaDbWorld {
            cluster,
            database,
            master,
            replicas,
            endpoint: None,
            _shared: shared,
        }
    }

    /// [`MariaDbWorld::new`], with both replicas behind one round-robin reader endpoint (the
    /// testkit's proxy), declared with `servers` by their `server_id`s.
    pub async fn through_endpoint() -> MariaDbWorld {
        let mut w = MariaDbWorld::new().await;
        w.endpoint = Some(w.cluster.reader_endpoint().await);
        w
    }
}

impl Servers for MariaDbWorld {
    async fn fresh() -> MariaDbWorld {
        MariaDbWorld::new().await
    }

    fn schema(&self) -> &str {
        &self.database
    }

    fn url(&self, node: usize) -> String {
        let c = &self.cluster;
        let base = match node {
            0 => c.master_url(),
            n => c.replica_url(n),
        };
        in_database(base, &self.database)
    }

    async fn setup(&self, sql: &str) {
        let c = self.cluster.clone();
        let sql = sql.replace("{schema}", &self.database);
        blocking(move || {
            c.query(0, &sql)
                .unwrap_or_else(|e| panic!("MariaDB primary: `{sql}`: {e}"));
            c.sync_replicas();
        })
        .await;
    }

    async fn count(&self, table: &str) -> i64 {
        let c = self.cluster.clone();
        let sql = format!("SELECT count(*) FROM {}.{table}", self.database);
        blocking(move || number(&c, 0, &sql)).await
    }

    fn master(&self) -> i32 {
        self.master
    }

    fn replicas(&self) -> [i32; 2] {
        self.replicas
    }

    fn config(&self, router: Option<RouterMode>) -> Config {
        let Some((_, endpoint)) = &self.endpoint else {
            let config = Config::single_set(self.url(0), [self.url(1), self.url(2)]);
            return routed(config, router);
        };
        let mut config = Config::single_set(self.url(0), Vec::<String>::new());
        let url = endpoint.url.as_deref().unwrap_or_default();
        let replica = pindb_core::DatabaseSettings {
            url: Some(in_database(url, &self.database)),
            ..endpoint.clone()
        };
        config.sets.insert("default".to_owned(), vec![replica]);
        routed(config, router)
    }

    async fn finish(self) {
        let (c, db) = (self.cluster.clone(), self.database.clone());
        let user = user_of(c.master_url()).to_owned();
        blocking(move || {
            let drop =
                format!("DROP DATABASE {db}; REVOKE ALL PRIVILEGES ON {db}.* FROM '{user}'@'%'");
            c.query(0, &drop)
                .unwrap_or_else(|e| panic!("dropping the database {db}: {e}"));
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let url = "mysql://pindb:pw@127.0.0.1:25490/pindb";
        assert_eq!(user_of(url), "pindb");
        assert_eq!(
            in_database(url, "scenarios_1"),
            "mysql://pindb:pw@127.0.0.1:25490/scenarios_1"
        );
    }
}
