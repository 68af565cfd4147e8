#![cfg(feature = "r2d2-mariadb")]
#![allow(missing_docs, missing_debug_implementations, unreachable_pub, dead_code, unused_imports)]

use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::*;
use pindb_core::{scope, Config, Operation, RouterMode};
use pindb_diesel::is_unpinned_write;
use pindb_testkit::{MariaDbCluster, Proxy};

type SyncDb = pindb_diesel::r2d2::PinDb<diesel::MysqlConnection>;
type AsyncDb = pindb_diesel::bb8::PinDb<diesel_async::AsyncMysqlConnection>;

const SERVER_ID: &str = "CAST(@@server_id AS SIGNED) AS id";

fn config(cluster: &MariaDbCluster, mode: RouterMode) -> Config {
    let mut config = Config::single_set(
        cluster.master_url(),
        [cluster.replica_url(1), cluster.replica_url(2)],
    );
    config.monitor.interval_ms = 100;
    config.router = mode;
    config
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("ran")
}

fn rand_name() -> String {
    format!("adv_{}", fastrand::u32(..))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classification_probe() {
    let cluster = MariaDbCluster::from_env();
    let db = SyncDb::from_config(config(&cluster, RouterMode::Strict)).unwrap();
    let r = db.router();
    let stmts = [
        "ANALYZE UPDATE t SET n = n + 1",
        "ANALYZE FORMAT=JSON DELETE FROM t",
        "ANALYZE SELECT * FROM t",
        "EXPLAIN UPDATE t SET n = 1",
        "EXECUTE IMMEDIATE 'UPDATE t SET n = 1'",
        "EXECUTE IMMEDIATE CONCAT('UPD', 'ATE t SET n = 1')",
        "PREPARE s FROM 'UPDATE t SET n = 1'",
        "EXECUTE s",
        "DEALLOCATE PREPARE s",
        "BEGIN NOT ATOMIC UPDATE t SET n = 1; END",
        "IF 1 THEN UPDATE t SET n = 1; END IF",
        "CALL p()",
        "HANDLER t OPEN",
        "HANDLER t READ FIRST",
        "HANDLER t CLOSE",
        "LOCK TABLES t READ",
        "UNLOCK TABLES",
        "SELECT LASTVAL(s)",
        "SELECT PREVIOUS VALUE FOR s",
        "SELECT ROW_COUNT()",
        "SELECT @@warning_count",
        "SELECT @@identity",
        "SELECT @@insert_id",
        "SHOW ERRORS",
        "GET DIAGNOSTICS @n = NUMBER",
        "SELECT FOUND_ROWS()",
        "SELECT SQL_CALC_FOUND_ROWS * FROM t LIMIT 1",
        "SELECT 1 INTO OUTFILE '/tmp/x'",
        "SELECT 1 INTO DUMPFILE '/tmp/x'",
        "SELECT * FROM t INTO @a, @b",
        "SET time_zone = '+05:00'",
        "SET NAMES utf8mb4",
        "SET STATEMENT max_statement_time = 1 FOR SELECT 1",
        "SET STATEMENT max_statement_time = 1 FOR UPDATE t SET n = 1",
        "SET TRANSACTION READ ONLY",
        "START TRANSACTION READ ONLY",
        "START TRANSACTION",
        "BEGIN",
        "COMMIT",
        "XA START 'x'",
        "SAVEPOINT a",
        "CREATE TEMPORARY TABLE tmp (a INT)",
        "SELECT * FROM tmp",
        "DROP TEMPORARY TABLE tmp",
        "TRUNCATE t",
        "RENAME TABLE t TO u",
        "OPTIMIZE TABLE t",
        "ANALYZE TABLE t",
        "CHECK TABLE t",
        "REPAIR TABLE t",
        "CHECKSUM TABLE t",
        "FLUSH TABLES",
        "KILL 1",
        "LOAD DATA LOCAL INFILE 'x' INTO TABLE t",
        "DO SLEEP(0)",
        "VALUES (1), (2)",
        "WITH c AS (SELECT 1) SELECT * FROM c",
        "WITH c AS (SELECT 1) UPDATE t SET n = 1",
        "(SELECT 1) UNION (SELECT NEXTVAL(s))",
        "SELECT * FROM t WHERE n IN (SELECT NEXTVAL(s))",
        "SELECT * FROM t FOR UPDATE SKIP LOCKED",
        "SELECT * FROM t FOR UPDATE NOWAIT",
        "SELECT * FROM t FOR UPDATE WAIT 1",
        "SELECT * FROM t FOR\nUPDATE",
        "SELECT * FROM t FOR/**/UPDATE",
        "SELECT * FROM t LOCK\tIN SHARE MODE",
        "SELECT RELEASE_LOCK('x')",
        "SELECT RELEASE_ALL_LOCKS()",
        "SELECT IS_USED_LOCK('x')",
        "SELECT MASTER_GTID_WAIT('0-1-1', 1)",
        "SELECT MASTER_POS_WAIT('f', 1)",
        "SELECT BINLOG_GTID_POS('f', 1)",
        "SELECT SETVAL(s, 10)",
        "SELECT LAST_VALUE(1, 2)",
        "SELECT `NEXTVAL`(s)",
        "SELECT pindb.NEXTVAL(s)",
        "SELECT NEXTVAL (s)",
        "SELECT nextval(s)",
        "SELECT 1 -- \nFOR UPDATE",
        "SELECT 1 #\nFOR UPDATE",
        "SELECT 1 --\tx\n, NEXTVAL(s)",
        "SELECT 1 --x\n, NEXTVAL(s)",
        "SELECT '\\'' , NEXTVAL(s)",
        "SELECT \"\\\"\", NEXTVAL(s)",
        "SELECT 1 /*M! , NEXTVAL(s) */",
        "SELECT 1 /*!, NEXTVAL(s) */",
        "SELECT 1 /*M!100000 , NEXTVAL(s) */",
        "SELECT 1 /*+ hint */, NEXTVAL(s)",
        "select json_extract('{}', '$') , next value for s",
        "SELECT * FROM t PROCEDURE ANALYSE()",
        "SHOW CREATE TABLE t",
        "SHOW EXPLAIN FOR 1",
        "SHOW STATUS",
        "SHOW SLAVE STATUS",
        "SELECT SYS_GUID()",
        "SELECT UUID()",
        "SELECT RAND()",
        "SELECT BENCHMARK(1, 1)",
        "SELECT LOAD_FILE('/etc/passwd')",
        "SELECT COLUMN_CREATE('a', 1)",
        "SELECT * FROM information_schema.tables",
        "SELECT * FROM mysql.user",
        "SELECT * FROM performance_schema.threads",
        "SELECT * FROM seq_1_to_3",
        "INSTALL SONAME 'x'",
        "SELECT 1; UPDATE t SET n = 1",
        "SELECT 1;UPDATE t SET n = 1",
        "SELECT 1 ; ; UPDATE t SET n = 1",
        "SELECT 1\\G",
        "SELECT 1 INTO @x",
        "SELECT @x",
        "SELECT @`x`",
        "SELECT @'x'",
        "SELECT @@x",
        "SELECT @@session.sql_mode",
        "SELECT @@global.gtid_binlog_pos",
        "SELECT @@last_gtid",
        "SELECT @@LAST_GTID",
        "SELECT @@session.last_gtid",
        "SELECT @@`last_gtid`",
        "SELECT @@session.`last_insert_id`",
        "SELECT `LAST_INSERT_ID`()",
        "SELECT LAST_INSERT_ID ()",
        "SELECT pindb.LAST_INSERT_ID()",
        "SELECT last_insert_id()",
        "SELECT CONNECTION_ID()",
    ];
    for s in stmts {
        let shape = r.shape_of(s);
        println!("CLASS {:?}\t{s:?}", shape.op);
    }
}
