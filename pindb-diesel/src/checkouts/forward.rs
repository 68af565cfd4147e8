//! [`Forward`]: the routed connection's instrumentation, installed on each connection it
//! checks out, with the serving alias in the query text.

use std::sync::{Arc, Mutex};

use diesel::connection::{Instrumentation, InstrumentationEvent};

/// The routed connection's instrumentation, installed on each connection it checks out so
/// events reach it, with the serving alias in the query text.
#[derive(Clone)]
pub(crate) struct Forward {
    alias: Option<Arc<str>>,
    user: Arc<Mutex<Box<dyn Instrumentation>>>,
}

impl Forward {
    pub(super) fn new(user: Box<dyn Instrumentation>) -> Forward {
        Forward {
            alias: None,
            user: Arc::new(Mutex::new(user)),
        }
    }

    pub(super) fn with_alias(&self, alias: &str) -> Forward {
        Forward {
            alias: Some(Arc::from(alias)),
            user: Arc::clone(&self.user),
        }
    }
}

/// A query as the instrumentation sees it: `/* pindb: <alias> */ <query>`.
#[derive(Debug)]
struct Served<'a> {
    alias: &'a str,
    query: &'a dyn diesel::connection::DebugQuery,
}

impl std::fmt::Display for Served<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/* pindb: {} */ {}", self.alias, self.query)
    }
}

impl diesel::connection::DebugQuery for Served<'_> {}

impl Instrumentation for Forward {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        let mut user = self.user.lock().unwrap_or_else(|e| e.into_inner());
        match (&self.alias, event) {
            (Some(alias), InstrumentationEvent::StartQuery { query, .. }) => {
                let served = Served { alias, query };
                user.on_connection_event(InstrumentationEvent::start_query(&served));
            }
            (Some(alias), InstrumentationEvent::FinishQuery { query, error, .. }) => {
                let served = Served { alias, query };
                user.on_connection_event(InstrumentationEvent::finish_query(&served, error));
            }
            (_, event) => user.on_connection_event(event),
        }
    }
}
