//! Which database a set runs on ([`Backend`]): what pindb asks it, and in which SQL dialect
//! its statements are classified.

use crate::classify::Dialect;

/// The database a set runs on, from its URL's scheme.
///
/// PostgreSQL (`postgres://`, `postgresql://`) has every feature. MariaDB (`mysql://`,
/// `mariadb://`, feature `mariadb`) is being built (#28): a master and its GTID replicas
/// (`MASTER_USE_GTID`, one replication domain per set), monitored for position, lag and
/// health, with read-your-writes by GTID, reader endpoints (`servers`, by `server_id`); sets
/// given as hosts, discovery, logical and emulated replicas, and URL options are PostgreSQL's
/// only and refused with a clear error.
///
/// ```
/// use pindb_core::adapter::{Backend, Dialect};
///
/// let backend = Backend::of_scheme("mariadb").unwrap();
/// assert_eq!(backend, Backend::MariaDb);
/// assert_eq!((backend.default_port(), backend.dialect()), (3306, Dialect::MariaDb));
/// assert_eq!(Backend::of_scheme("postgresql"), Some(Backend::Postgres));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Backend {
    /// PostgreSQL: positions are WAL positions (LSN).
    #[default]
    Postgres,
    /// MariaDB with GTID replication: a position is the sequence number of the set's
    /// replication domain (`gtid_domain_id`), which grows with every transaction, whichever
    /// server of the domain wrote it.
    MariaDb,
}

impl Backend {
    /// The backend of a URL scheme, if pindb knows it.
    pub fn of_scheme(scheme: &str) -> Option<Backend> {
        match scheme {
            "postgres" | "postgresql" => Some(Backend::Postgres),
            "mysql" | "mariadb" => Some(Backend::MariaDb),
            _ => None,
        }
    }

    /// The scheme of the URLs pindb renders.
    pub fn scheme(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::MariaDb => "mysql",
        }
    }

    /// The server's TCP port when neither the URL nor the settings give one.
    pub fn default_port(self) -> u16 {
        match self {
            Backend::Postgres => 5432,
            Backend::MariaDb => 3306,
        }
    }

    /// The SQL dialect its statements are classified in.
    pub fn dialect(self) -> Dialect {
        match self {
            Backend::Postgres => Dialect::Postgres,
            Backend::MariaDb => Dialect::MariaDb,
        }
    }

    /// Its name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "PostgreSQL",
            Backend::MariaDb => "MariaDB",
        }
    }
}
