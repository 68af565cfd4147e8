//! A logical replica's link to its master: its subscriptions (read on the replica), their
//! slots (read on the master), and what their publications carry.
//!
//! Its position is its subscription slot's `confirmed_flush_lsn` on the master, not the
//! subscriber's `pg_stat_subscription.latest_end_lsn`. The apply worker confirms a position
//! only once every transaction that committed before it is applied and committed on the
//! subscriber (or when it has nothing pending, the sender's position), so a read there sees
//! every write the master had at that position: what read-your-writes needs. `latest_end_lsn`
//! is the last position the *sender* reported in a keepalive, which says nothing about what
//! was applied. And because the sender keeps confirming its position while nothing is
//! published, an idle master (or writes to tables outside the publication) is not lag.

use std::collections::HashSet;
use tokio_postgres::types::Type;

use crate::coverage::Carried;
use crate::lsn::Lsn;
use crate::probe::{lsn_column, Probe};

/// One subscription of the replica's database.
#[derive(Debug, Clone)]
struct Subscription {
    name: String,
    enabled: bool,
    slot: Option<String>,
    publications: Vec<String>,
    /// Its apply worker runs.
    applying: bool,
}

/// How a logical replica follows its master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Following {
    /// The least position confirmed by its subscriptions to this master (`None`: a slot
    /// that never confirmed one).
    pub(crate) position: Option<Lsn>,
    /// The publications of those subscriptions.
    pub(crate) publications: Vec<String>,
    /// The subscriptions to this master that are disabled (`ALTER SUBSCRIPTION .. DISABLE`).
    pub(crate) disabled: Vec<String>,
    /// The names of the subscriptions to this master.
    pub(crate) subscriptions: Vec<String>,
    /// Every one of them has its apply worker running. A subscription that is not applying
    /// (disabled, failing, a clone of another subscriber whose slot that one holds) is frozen,
    /// whatever its slot says: it serves no read.
    pub(crate) applying: bool,
}

const SUBSCRIPTIONS: &str = "SELECT s.subname::text, s.subenabled, s.subslotname::text, \
    s.subpublications::text[], EXISTS (SELECT 1 FROM pg_stat_subscription w \
      WHERE w.subid = s.oid AND w.pid IS NOT NULL AND w.relid IS NULL) \
    FROM pg_subscription s \
    WHERE s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
    ORDER BY 1";

const SLOTS: &str = "SELECT slot_name::text, confirmed_flush_lsn::text FROM pg_replication_slots \
    WHERE slot_type = 'logical' AND database = current_database() AND slot_name::text = ANY($1)";

/// How `replica` follows `master`. The outer error: one of them could not be asked. The
/// inner one: it does not follow this master (no subscription whose slot is there), in words
/// that name the fix.
pub(crate) async fn follow(
    replica: &mut Probe,
    master: &mut Probe,
) -> Result<Result<Following, String>, String> {
    let subscriptions: Vec<Subscription> = replica
        .rows(SUBSCRIPTIONS, &[])
        .await?
        .iter()
        .map(|row| {
            Ok(Subscription {
                name: row.try_get(0).map_err(|e| e.to_string())?,
                enabled: row.try_get(1).map_err(|e| e.to_string())?,
                slot: row.try_get(2).map_err(|e| e.to_string())?,
                publications: row.try_get(3).map_err(|e| e.to_string())?,
                applying: row.try_get(4).map_err(|e| e.to_string())?,
            })
        })
        .collect::<Result<_, String>>()?;
    let slots: Vec<&str> = subscriptions
        .iter()
        .filter_map(|s| s.slot.as_deref())
        .collect();
    let found = master.rows(SLOTS, &[(&slots, Type::TEXT_ARRAY)]).await?;
    let mut position = Some(Lsn(u64::MAX));
    let mut mine = Vec::new();
    for row in &found {
        let slot: String = row.try_get(0).map_err(|e| e.to_string())?;
        let confirmed = lsn_column(row, 1)?;
        position = match (position, confirmed) {
            (Some(p), Some(c)) => Some(p.min(c)),
            _ => None,
        };
        mine.extend(
            subscriptions
                .iter()
                .filter(|s| s.slot.as_deref() == Some(slot.as_str())),
        );
    }
    if mine.is_empty() {
        let listed = match subscriptions.is_empty() {
            true => "it has no subscription in this database".to_owned(),
            false => format!(
                "its subscriptions ({}) have no slot on the master",
                subscriptions
                    .iter()
                    .map(|s| format!("{} (slot {})", s.name, s.slot.as_deref().unwrap_or("none")))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        return Ok(Err(format!(
            "`{}` is configured as a logical replica of `{}` but does not subscribe to it: \
             {listed}; create one with CREATE SUBSCRIPTION .. CONNECTION '<the master>' \
             PUBLICATION .., or make it a streaming replica (kind = \"streaming\")",
            replica.alias, master.alias
        )));
    }
    let mut publications: Vec<String> = mine
        .iter()
        .flat_map(|s| s.publications.iter().cloned())
        .collect();
    publications.sort();
    publications.dedup();
    Ok(Ok(Following {
        position,
        publications,
        disabled: mine
            .iter()
            .filter(|s| !s.enabled)
            .map(|s| s.name.clone())
            .collect(),
        subscriptions: mine.iter().map(|s| s.name.clone()).collect(),
        applying: mine.iter().all(|s| s.enabled && s.applying),
    }))
}

/// The tables a read may use on the replica: published whole by the master (no row filter,
/// every column, inserts, updates, deletes and truncates; a publication the master does not
/// have is an error naming it) and synchronized on the replica (`pg_subscription_rel` state
/// `r` or `s`: not while the initial copy runs, not before `REFRESH PUBLICATION`). Each as
/// `schema.table`, and by its bare name when the replica's search path resolves the bare name
/// to it (the replica is where the read runs).
pub(crate) async fn tables(
    replica: &mut Probe,
    master: &mut Probe,
    following: &Following,
) -> Result<HashSet<Box<str>>, String> {
    let pubs: Vec<&str> = following.publications.iter().map(String::as_str).collect();
    let found = master
        .rows(
            "SELECT pubname::text FROM pg_publication WHERE pubname::text = ANY($1)",
            &[(&pubs, Type::TEXT_ARRAY)],
        )
        .await?;
    let present: HashSet<String> = found
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if let Some(missing) = pubs.iter().find(|p| !present.contains(**p)) {
        return Err(format!(
            "`{}` subscribes to the publication `{missing}`, which `{}` does not have; \
             create it there or fix the subscription",
            replica.alias, master.alias
        ));
    }
    let published: HashSet<String> = master
        .rows(
            "SELECT t.schemaname::text || '.' || t.tablename::text \
             FROM pg_publication_tables t JOIN pg_publication p ON p.pubname = t.pubname \
             WHERE t.pubname::text = ANY($1) GROUP BY t.schemaname, t.tablename \
             HAVING bool_and(t.rowfilter IS NULL AND p.pubinsert AND p.pubupdate \
               AND p.pubdelete AND p.pubtruncate \
               AND cardinality(t.attnames) = (SELECT count(*) FROM pg_attribute a \
                 WHERE a.attrelid = format('%I.%I', t.schemaname, t.tablename)::regclass \
                   AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''))",
            &[(&pubs, Type::TEXT_ARRAY)],
        )
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let subs: Vec<&str> = following.subscriptions.iter().map(String::as_str).collect();
    let synced = replica
        .rows(
            "SELECT n.nspname::text, c.relname::text, \
               coalesce(to_regclass(quote_ident(c.relname)) = c.oid, false) \
             FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid \
             JOIN pg_class c ON c.oid = r.srrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE s.subname::text = ANY($1) \
               AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             GROUP BY 1, 2, 3 HAVING bool_and(r.srsubstate IN ('r', 's'))",
            &[(&subs, Type::TEXT_ARRAY)],
        )
        .await?;
    let mut relations = HashSet::new();
    for row in &synced {
        let schema: String = row.try_get(0).map_err(|e| e.to_string())?;
        let table: String = row.try_get(1).map_err(|e| e.to_string())?;
        let qualified = format!("{schema}.{table}");
        if !published.contains(&qualified) {
            continue;
        }
        if row.try_get::<_, bool>(2).map_err(|e| e.to_string())? {
            relations.insert(Box::from(table.as_str()));
        }
        relations.insert(qualified.into_boxed_str());
    }
    Ok(relations)
}

/// Functions the replica defines outside `pg_catalog` and `information_schema` (lowercase):
/// they may read tables it does not carry.
pub(crate) async fn functions(replica: &mut Probe) -> Result<HashSet<Box<str>>, String> {
    replica
        .rows(
            "SELECT DISTINCT lower(p.proname::text) FROM pg_proc p \
             JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.try_get::<_, String>(0).map(String::into_boxed_str))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())
}

/// What the replica carries now: [`tables`] and [`functions`].
pub(crate) async fn carried(
    replica: &mut Probe,
    master: &mut Probe,
    following: &Following,
) -> Result<Carried, String> {
    Ok(Carried {
        relations: tables(replica, master, following).await?,
        functions: std::sync::Arc::new(functions(replica).await?),
    })
}
