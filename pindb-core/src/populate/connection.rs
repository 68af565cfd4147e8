//! `replication_connection`: the named replication connection a MariaDB replica of several
//! masters (multi-source) follows its set's master through.

use super::DatabaseSettings;
use crate::backend::Backend;
use crate::error::PinDbError;

/// A replica's `replication_connection`, checked: MariaDB's, and a name pindb can put in
/// `SHOW SLAVE '<name>' STATUS` as it is (letters, digits, `_`, `-`, at most 64: MariaDB's
/// limit).
pub(crate) fn replication_connection(
    alias: &str,
    settings: &DatabaseSettings,
    backend: Backend,
) -> Result<Option<String>, PinDbError> {
    let Some(name) = &settings.replication_connection else {
        return Ok(None);
    };
    if backend != Backend::MariaDb {
        return Err(PinDbError::config(
            alias,
            "`replication_connection` is MariaDB's (`CHANGE MASTER 'name' TO`); a PostgreSQL \
             standby has one upstream: remove it",
        ));
    }
    let fits = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if name.is_empty() || name.len() > 64 || !name.chars().all(fits) {
        return Err(PinDbError::config(
            alias,
            format!(
                "`replication_connection = \"{name}\"`: expected the connection's name as \
                 `SHOW ALL SLAVES STATUS` lists it (`Connection_name`: letters, digits, `_`, \
                 `-`, at most 64); leave it out for the default connection"
            ),
        ));
    }
    Ok(Some(name.clone()))
}

/// A master or an unmanaged database follows nobody.
pub(crate) fn refuse_replication_connection(
    alias: &str,
    settings: &DatabaseSettings,
) -> Result<(), PinDbError> {
    match settings.replication_connection {
        None => Ok(()),
        Some(_) => Err(PinDbError::config(
            alias,
            "`replication_connection` names how a MariaDB replica follows its master: give it \
             to a replica (`[sets]`)",
        )),
    }
}
