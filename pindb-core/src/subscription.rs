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
}

const SUBSCRIPTIONS: &str = "SELECT s.subname::text, s.subenabled, s.subslotname::text, \
    s.subpublications::text[] FROM pg_subscription s \
    WHERE s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
    ORDER BY 1";

const SLOTS: &str = "SELECT slot_name::text, confirmed_flush_lsn::text FROM pg_replication_slots \
    WHERE slot_type = 'logical' AND database = current_database() AND slot_name = ANY($1)";

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
            })
        })
        .collect::<Result<_, String>>()?;
    let slots: Vec<&str> = subscriptions
        .iter()
        .filter_map(|s| s.slot.as_deref())
        .collect();
    let found = master.rows(SLOTS, &[&slots]).await?;
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
    }))
}

/// What the publications carry, as the master publishes them, and the functions the replica
/// defines (they may read tables it does not carry). A publication the master does not have
/// is an error naming it.
pub(crate) async fn carried(
    replica: &mut Probe,
    master: &mut Probe,
    publications: &[String],
) -> Result<Carried, String> {
    let pubs: Vec<&str> = publications.iter().map(String::as_str).collect();
    let found = master
        .rows(
            "SELECT pubname::text, puballtables FROM pg_publication WHERE pubname = ANY($1)",
            &[&pubs],
        )
        .await?;
    let mut all = false;
    let mut present = HashSet::new();
    for row in &found {
        let name: String = row.try_get(0).map_err(|e| e.to_string())?;
        all |= row.try_get::<_, bool>(1).map_err(|e| e.to_string())?;
        present.insert(name);
    }
    if let Some(missing) = pubs.iter().find(|p| !present.contains(**p)) {
        return Err(format!(
            "`{}` subscribes to the publication `{missing}`, which `{}` does not have; \
             create it there or fix the subscription",
            replica.alias, master.alias
        ));
    }
    // The bare name too when the master's search path resolves it to the published table,
    // as the application's statements would.
    let tables = master
        .rows(
            "SELECT schemaname::text, tablename::text, coalesce(\
               to_regclass(quote_ident(tablename)) = format('%I.%I', schemaname, tablename)::regclass, \
               false) \
             FROM pg_publication_tables WHERE pubname = ANY($1)",
            &[&pubs],
        )
        .await?;
    let mut relations = HashSet::new();
    for row in &tables {
        let schema: String = row.try_get(0).map_err(|e| e.to_string())?;
        let table: String = row.try_get(1).map_err(|e| e.to_string())?;
        if row.try_get::<_, bool>(2).map_err(|e| e.to_string())? {
            relations.insert(Box::from(table.as_str()));
        }
        relations.insert(format!("{schema}.{table}").into_boxed_str());
    }
    let functions = replica
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
        .map_err(|e| e.to_string())?;
    Ok(Carried {
        all,
        relations,
        functions,
    })
}
