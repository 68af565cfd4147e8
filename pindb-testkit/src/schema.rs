//! Test schemas: a schema of its own per test on the primary, and URLs that select it.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::cluster::{connect, Cluster};

impl Cluster {
    /// A schema of its own for one test, created on the primary. Use [`TestSchema::url`] to
    /// point connections at it.
    pub async fn fresh_schema(&self) -> TestSchema {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "t_{}_{}_{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let client = self.primary().await;
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE SCHEMA {name} failed: {e:?}"));
        TestSchema {
            name,
            primary_url: self.primary_url.clone(),
        }
    }
}

/// A schema created for one test.
#[derive(Debug, Clone)]
pub struct TestSchema {
    /// The schema name (`t_<pid>_<n>_<nanos>`).
    pub name: String,
    primary_url: String,
}

impl TestSchema {
    /// `base` with this schema as the search path, for any of the cluster's URLs.
    ///
    /// ```
    /// # let schema = pindb_testkit::TestSchema::for_tests("t_1");
    /// assert_eq!(
    ///     schema.url("postgres://pindb@127.0.0.1:25432/pindb"),
    ///     "postgres://pindb@127.0.0.1:25432/pindb?options=-c%20search_path%3Dt_1",
    /// );
    /// ```
    pub fn url(&self, base: &str) -> String {
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}options=-c%20search_path%3D{}", self.name)
    }

    /// A schema value without creating anything (for examples and unit tests).
    pub fn for_tests(name: &str) -> TestSchema {
        TestSchema {
            name: name.to_owned(),
            primary_url: String::new(),
        }
    }

    /// Drops the schema and everything in it.
    pub async fn drop(self) {
        connect(&self.primary_url)
            .await
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name))
            .await
            .unwrap_or_else(|e| panic!("DROP SCHEMA {} failed: {e:?}", self.name));
    }
}
