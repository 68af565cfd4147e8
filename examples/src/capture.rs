//! Records pindb's routing events (`tracing`, target `pindb`) for the current request, so
//! the service can show which database served each statement and why.

use std::cell::RefCell;
use std::future::Future;

use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context as LayerCx, Layer};
use tracing_subscriber::prelude::*;

tokio::task_local! {
    static ROUTES: RefCell<Vec<RouteLine>>;
}

/// One routing decision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteLine {
    /// `read` or `write`.
    pub op: String,
    /// The alias that served it (empty when refused).
    pub alias: String,
    /// `master`, `replica`, or `refused`.
    pub role: String,
    /// The router's reason.
    pub reason: String,
}

#[derive(Default)]
struct Fields(RouteLine);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        let slot = match field.name() {
            "op" => &mut self.0.op,
            "alias" => &mut self.0.alias,
            "role" => &mut self.0.role,
            "reason" => &mut self.0.reason,
            _ => return,
        };
        *slot = value.to_owned();
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

struct Capture;

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: LayerCx<'_, S>) {
        if event.metadata().target() != "pindb" {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        if fields.0.reason.is_empty() {
            return;
        }
        if fields.0.role.is_empty() {
            fields.0.role = "refused".into();
        }
        let _ = ROUTES.try_with(|r| r.borrow_mut().push(fields.0));
    }
}

/// Installs the capturing subscriber (once per process).
pub fn install() {
    let _ = tracing_subscriber::registry().with(Capture).try_init();
}

/// Runs `fut` and returns what it returned with the routing decisions it caused.
pub async fn routes_of<F: Future>(fut: F) -> (F::Output, Vec<RouteLine>) {
    ROUTES
        .scope(RefCell::new(Vec::new()), async {
            let out = fut.await;
            (out, ROUTES.with(|r| r.take()))
        })
        .await
}
