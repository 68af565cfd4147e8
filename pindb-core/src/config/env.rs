//! Environment overrides: database URLs (`PINDB_URL_<ALIAS>`) and cookie secrets, so secrets
//! stay out of files.

use super::Config;
use crate::error::PinDbError;
use crate::populate::DatabaseSettings;

/// Prefix of the environment variables that override a database URL:
/// `PINDB_URL_DEFAULT`, `PINDB_URL_DEFAULT_1`, `PINDB_URL_ANALYTICS`...
pub const ENV_URL_PREFIX: &str = "PINDB_URL_";

impl Config {
    /// Replaces database URLs from `PINDB_URL_<ALIAS>` variables, so secrets stay out of files.
    ///
    /// The alias is upper-cased with every non-alphanumeric character turned into `_`
    /// (`default-1` -> `PINDB_URL_DEFAULT_1`). The variable replaces the whole connection target
    /// (URL, host, port, user, password, dbname); options and pool settings are kept. A master's
    /// URL is replaced before replicas inherit from it. A variable that names no alias is an error.
    ///
    /// ```
    /// let mut config = pindb_core::Config::single_set("postgres://app@db1/app", ["postgres://app@db2/app"]);
    /// config.apply_env_overrides([(
    ///     "PINDB_URL_DEFAULT".to_owned(),
    ///     "postgres://app:s3cret@db1/app".to_owned(),
    /// )])?;
    /// assert_eq!(config.databases()?[0].password.as_deref(), Some("s3cret"));
    /// # Ok::<(), pindb_core::PinDbError>(())
    /// ```
    pub fn apply_env_overrides<I>(&mut self, vars: I) -> Result<(), PinDbError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        for (key, value) in vars {
            if key == "PINDB_COOKIE_SECRET" {
                self.web.cookie_secret = Some(value);
                continue;
            }
            if key == "PINDB_EMULATE_REPLICAS" {
                self.emulate_replicas = value.trim().parse().map_err(|_| {
                    PinDbError::config(
                        "emulate_replicas",
                        format!(
                            "PINDB_EMULATE_REPLICAS must be a number of replicas, got `{value}`"
                        ),
                    )
                })?;
                continue;
            }
            if key == "PINDB_COOKIE_OLD_SECRETS" {
                // Comma-separated: secrets are base64 or hex in practice, never commas.
                self.web.cookie_old_secrets = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                continue;
            }
            let Some(suffix) = key.strip_prefix(ENV_URL_PREFIX) else {
                continue;
            };
            let known = self.env_names();
            let target = self.settings_for_env_suffix(suffix).ok_or_else(|| {
                PinDbError::config(
                    key.clone(),
                    format!(
                        "environment variable {key} names no configured database; \
                         expected one of: {}",
                        known.join(", ")
                    ),
                )
            })?;
            *target = DatabaseSettings {
                url: Some(value),
                host: None,
                port: None,
                user: None,
                password: None,
                dbname: None,
                ..std::mem::take(target)
            };
        }
        Ok(())
    }

    fn env_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for name in self.masters.keys().chain(self.unmanaged.keys()) {
            names.push(format!("{ENV_URL_PREFIX}{}", env_key(name)));
        }
        for (set, replicas) in &self.sets {
            for i in 1..=replicas.len() {
                names.push(format!(
                    "{ENV_URL_PREFIX}{}",
                    env_key(&format!("{set}-{i}"))
                ));
            }
        }
        names
    }

    fn settings_for_env_suffix(&mut self, suffix: &str) -> Option<&mut DatabaseSettings> {
        if let Some((_, s)) = self.masters.iter_mut().find(|(n, _)| env_key(n) == suffix) {
            return Some(s);
        }
        if let Some((_, s)) = self
            .unmanaged
            .iter_mut()
            .find(|(n, _)| env_key(n) == suffix)
        {
            return Some(s);
        }
        for (set, replicas) in self.sets.iter_mut() {
            for (i, s) in replicas.iter_mut().enumerate() {
                if env_key(&format!("{set}-{}", i + 1)) == suffix {
                    return Some(s);
                }
            }
        }
        None
    }
}

/// `default-1` -> `DEFAULT_1`.
fn env_key(alias: &str) -> String {
    alias
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}
