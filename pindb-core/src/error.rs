//! The one error type of pindb-core.
//!
//! Every variant names the alias or set it concerns and says how to fix the problem.
//! Adapters wrap this type in their ORM's error; they never invent routing errors of their own.

/// Everything that can go wrong in pindb-core.
///
/// ```
/// use pindb_core::{Config, PinDbError};
///
/// let err = Config::from_toml_str("[sets]\ndefault = []").unwrap_err();
/// assert!(matches!(err, PinDbError::Config { .. }));
/// assert!(err.to_string().contains("no masters"));
/// ```
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PinDbError {
    /// The configuration is invalid. `alias` is the database it concerns, when there is one.
    #[error("invalid pindb config{}: {problem}", for_alias(.alias))]
    Config {
        /// The alias (or set) the problem concerns, if any.
        alias: Option<String>,
        /// What is wrong and how to fix it.
        problem: String,
    },

    /// A write to a managed set that is not pinned, under the strict router.
    #[error(
        "write to database set `{set}` refused: the set is not pinned in this context (strict router). \
         Call `pin(\"{set}\")` before writing, wrap the write in a `master(\"{set}\")` guard, \
         or use the greedy router"
    )]
    UnpinnedWrite {
        /// The set the write was aimed at.
        set: String,
    },

    /// An alias that is neither a master, a replica nor an unmanaged database.
    #[error("unknown database alias `{alias}`; known aliases: {known}")]
    UnknownAlias {
        /// The alias that was asked for.
        alias: String,
        /// The configured aliases, comma separated.
        known: String,
    },

    /// Pinning and guards only make sense for databases that belong to a set.
    #[error(
        "`{alias}` is an unmanaged database: reads and writes always go to it, so it cannot be \
         pinned or guarded; pin a set's master alias instead"
    )]
    NotManaged {
        /// The unmanaged alias.
        alias: String,
    },

    /// A call that needs a pinning context was made outside one.
    #[error(
        "`{operation}` was called outside a pinning context; run the code inside \
         `pindb_core::scope(..)` (the tower layer does this per request), or propagate the \
         context into spawned tasks with `in_current_scope()` / `pindb_core::spawn`"
    )]
    NoContext {
        /// The call that needed a context.
        operation: &'static str,
    },

    /// A free function was called before a global router was installed.
    #[error(
        "no global pindb router is installed; call `Router::install_global()` at start-up, \
         or call the method on your `Router` instance"
    )]
    NoGlobalRouter,

    /// A consistency token that does not parse.
    #[error(
        "consistency token part `{part}` is not a valid `set@X/Y` (or the signature does not \
         match); tokens come from `router.consistency().token()`"
    )]
    BadToken {
        /// The offending part.
        part: String,
    },

    /// The stickiness store could not be reached. Never returned to callers by routing:
    /// the context reads from masters instead.
    #[error("stickiness store `{store}` unavailable: {message}")]
    StoreUnavailable {
        /// The store's name (`memory`, `redis`).
        store: &'static str,
        /// What failed.
        message: String,
    },

    /// A database could not be reached: a master (writes have nowhere else to go), or a
    /// replica with no fallback (inside a transaction, or named explicitly). Retryable: match
    /// it with [`PinDbError::is_unreachable`].
    #[error("the {role} `{alias}` ({url}) is unreachable: {cause}")]
    Unreachable {
        /// The alias.
        alias: String,
        /// `master`, `replica` or `unmanaged`.
        role: &'static str,
        /// Its address, password redacted.
        url: String,
        /// What really happened: connection refused, no answer within the timeout, a name
        /// that does not resolve...
        cause: String,
    },

    /// A set given as a list of hosts has no primary right now: the primary stopped answering
    /// and no standby has been promoted yet, or two writable hosts share the newest timeline.
    /// Nothing was sent anywhere. Retryable ([`PinDbError::is_retryable`]): the monitor finds a
    /// promoted primary within a few check intervals.
    #[error(
        "database set `{set}` has no primary right now (failover in progress?): none of its \
         hosts {hosts} is a writable primary the monitor can use; nothing was sent, retry shortly"
    )]
    NoPrimary {
        /// The set.
        set: String,
        /// Its hosts, passwords redacted.
        hosts: String,
    },

    /// A runtime replica whose host was removed or replaced (by `Router::set_replicas` or
    /// DNS) after the read was routed there. Retry: the next route sees the change.
    #[error(
        "`{alias}` is a runtime replica whose host was removed or replaced (by set_replicas or \
         DNS) after the read was routed to it; retry"
    )]
    NoHost {
        /// The slot's alias.
        alias: String,
    },

    /// `Router::install_global` was called twice.
    #[error("a global pindb router is already installed; install it once at start-up")]
    GlobalRouterAlreadyInstalled,
}

fn for_alias(alias: &Option<String>) -> String {
    match alias {
        Some(alias) => format!(" for `{alias}`"),
        None => String::new(),
    }
}

impl PinDbError {
    /// An [`Unreachable`](PinDbError::Unreachable) named by the role its database had when
    /// the statement was routed (`"master"`: a write to a primary the monitor has since
    /// demoted, or found gone); any other error unchanged. What an adapter that knows the
    /// route says.
    ///
    /// ```
    /// use pindb_core::PinDbError;
    ///
    /// let e = PinDbError::Unreachable {
    ///     alias: "default-1".into(),
    ///     role: "replica",
    ///     url: "postgres://db1/app".into(),
    ///     cause: "connection refused".into(),
    /// };
    /// assert!(e.routed_as("master").to_string().starts_with("the master `default-1`"));
    /// ```
    pub fn routed_as(self, role: &'static str) -> PinDbError {
        match self {
            PinDbError::Unreachable {
                alias, url, cause, ..
            } => PinDbError::Unreachable {
                alias,
                role,
                url,
                cause,
            },
            other => other,
        }
    }

    /// Whether this is the strict router's refusal of an unpinned write.
    pub fn is_unpinned_write(&self) -> bool {
        matches!(self, PinDbError::UnpinnedWrite { .. })
    }

    /// Whether a database could not be reached (worth retrying later).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, PinDbError::Unreachable { .. })
    }

    /// Whether retrying the same operation later may succeed: a database that could not be
    /// reached, or a set with no primary during a failover. Nothing was written.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            PinDbError::Unreachable { .. }
                | PinDbError::NoPrimary { .. }
                | PinDbError::NoHost { .. }
        )
    }

    pub(crate) fn config(alias: impl Into<String>, problem: impl Into<String>) -> Self {
        PinDbError::Config {
            alias: Some(alias.into()),
            problem: problem.into(),
        }
    }

    pub(crate) fn config_global(problem: impl Into<String>) -> Self {
        PinDbError::Config {
            alias: None,
            problem: problem.into(),
        }
    }
}
