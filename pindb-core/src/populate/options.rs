//! Connection options (`options = { ... }`, a URL's query): which drivers understand which.
//! pindb's own connections (tokio-postgres) get only the options tokio-postgres knows; the
//! others are for a pool's driver (sqlx's `statement-cache-capacity`, libpq's `gssencmode`);
//! an option no driver knows is a configuration error that names it, not a monitor that
//! silently cannot connect.

use crate::error::PinDbError;

/// What tokio-postgres (pindb's probes, diesel-async) parses; anything else it refuses.
const TOKIO_POSTGRES: &[&str] = &[
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "sslmode",
    "sslnegotiation",
    "host",
    "hostaddr",
    "port",
    "connect_timeout",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
];

/// libpq's other keywords (sync diesel): refused by tokio-postgres.
const LIBPQ: &[&str] = &[
    "passfile",
    "require_auth",
    "fallback_application_name",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcertmode",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "gssencmode",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "service",
    "client_encoding",
    "replication",
];

/// sqlx's own (SeaORM); sqlx ignores what it does not know.
const SQLX: &[&str] = &[
    "statement-cache-capacity",
    "ssl-mode",
    "ssl-root-cert",
    "ssl-ca",
    "ssl-cert",
    "ssl-key",
    "sslrootcert",
    "sslcert",
    "sslkey",
];

/// An option no driver knows: refused, naming it and where it was given.
pub(crate) fn check(alias: &str, key: &str) -> Result<(), PinDbError> {
    let known = [TOKIO_POSTGRES, LIBPQ, SQLX]
        .iter()
        .any(|list| list.contains(&key))
        || key.starts_with("options[");
    if known {
        return Ok(());
    }
    Err(PinDbError::config(
        alias,
        format!(
            "unknown connection option `{key}`: neither tokio-postgres, libpq nor sqlx knows it. \
             Check its spelling (sqlx's statement cache is `statement-cache-capacity`, with \
             hyphens); a server setting goes in `options = {{ options = \"-c {key}=...\" }}`"
        ),
    ))
}

/// Whether only sqlx knows it: left out of the URLs tokio-postgres and libpq read.
pub(crate) fn only_sqlx(key: &str) -> bool {
    (SQLX.contains(&key) || key.starts_with("options["))
        && !TOKIO_POSTGRES.contains(&key)
        && !LIBPQ.contains(&key)
}

/// Whether tokio-postgres takes it: pindb's own connections leave the others out.
pub(crate) fn for_tokio_postgres(key: &str) -> bool {
    TOKIO_POSTGRES.contains(&key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_driver_option_passes_and_a_typo_is_named() {
        assert!(check("default", "statement-cache-capacity").is_ok());
        assert!(check("default", "sslmode").is_ok());
        assert!(!for_tokio_postgres("statement-cache-capacity"));
        let e = check("default-1", "statement_cache_capacity").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("default-1") && text.contains("`statement_cache_capacity`"),
            "{text}"
        );
    }
}
