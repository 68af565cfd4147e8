//! [`ConsistencyToken`]: write positions carried by a client or a job payload, with their
//! issue times, signed.

use std::fmt;
use std::str::FromStr;

use super::{unix_now, Consistency};
use crate::context::Context;
use crate::error::PinDbError;
use crate::lsn::Lsn;
use crate::store::{merge, Positions};

/// How far beyond the best replica a token position may be before the master is asked
/// whether it has written that far.
const PLAUSIBLE_AHEAD: u64 = 64 * 1024 * 1024;

/// Clock difference between instances tolerated in a token's issue times.
const CLOCK_SKEW_SECS: u64 = 60;

/// Write positions carried explicitly from one context to another (a web request to the
/// background job it enqueues, like GitLab's Sidekiq `:sticky` jobs). Compact text form,
/// usable as a cookie or header value: `set@X/Y~T` joined by `|`, where `T` is when the
/// position was issued (Unix seconds). [`ConsistencyToken::sign`] makes it tamper-proof for a
/// trip through a client (stateless stickiness across app instances);
/// [`Consistency::accept_token`](crate::Consistency::accept_token) takes one back, dropping positions older than `ttl_seconds` or
/// beyond anything the master has written.
///
/// ```
/// use pindb_core::{ConsistencyToken, Lsn};
///
/// let token: ConsistencyToken = "default@0/16B3748~1700000000|analytics@1/0~1700000001".parse().unwrap();
/// assert_eq!(token.positions()[0], ("default".to_string(), Lsn(0x16B3748)));
/// assert_eq!(token.issued_at("analytics"), Some(1_700_000_001));
/// assert_eq!(token.to_string(), "default@0/16B3748~1700000000|analytics@1/0~1700000001");
/// assert!("default@nope".parse::<ConsistencyToken>().is_err());
///
/// let key = cookie::Key::derive_from(&[7; 32]);
/// let signed = token.sign(&key);
/// assert_eq!(ConsistencyToken::verify(&signed, &key).unwrap(), token);
/// assert!(ConsistencyToken::verify(&signed.replace("0/16B3748", "0/0"), &key).is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsistencyToken {
    positions: Positions,
    /// Parallel to `positions`: when each was issued (Unix seconds; 0: unknown).
    issued: Vec<u64>,
}

impl ConsistencyToken {
    /// A token from positions, issued now.
    pub fn new(positions: Positions) -> Self {
        let issued = vec![unix_now(); positions.len()];
        ConsistencyToken { positions, issued }
    }

    /// Adds positions issued now; per set, the higher position wins (and, when it is the
    /// new one, its issue time).
    pub fn merge(&mut self, positions: &[(String, Lsn)]) {
        let now = unix_now();
        for (set, lsn) in positions {
            match self.positions.iter().position(|(s, _)| s == set) {
                Some(i) if self.positions[i].1 >= *lsn => {}
                Some(i) => {
                    self.positions[i].1 = *lsn;
                    self.issued[i] = now;
                }
                None => {
                    self.positions.push((set.clone(), *lsn));
                    self.issued.push(now);
                }
            }
        }
    }

    /// The positions, by set.
    pub fn positions(&self) -> &[(String, Lsn)] {
        &self.positions
    }

    /// When the position of `set` was issued (Unix seconds), if the token has one.
    pub fn issued_at(&self, set: &str) -> Option<u64> {
        let i = self.positions.iter().position(|(s, _)| s == set)?;
        Some(self.issued[i])
    }

    /// Gives positions without an issue time the time `now`.
    pub(crate) fn stamp_unknown(&mut self, now: u64) {
        for issued in &mut self.issued {
            if *issued == 0 {
                *issued = now;
            }
        }
    }

    /// Keeps the positions `keep(set, position, issued)` accepts.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&str, Lsn, u64) -> bool) {
        let mut i = 0;
        while i < self.positions.len() {
            if keep(&self.positions[i].0, self.positions[i].1, self.issued[i]) {
                i += 1;
            } else {
                self.positions.remove(i);
                self.issued.remove(i);
            }
        }
    }

    /// The token, signed with `key` (HMAC-SHA256, the `cookie` crate's signed jar).
    pub fn sign(&self, key: &cookie::Key) -> String {
        let mut jar = cookie::CookieJar::new();
        jar.signed_mut(key)
            .add(cookie::Cookie::new(TOKEN_COOKIE, self.to_string()));
        jar.get(TOKEN_COOKIE)
            .map(|c| c.value().to_owned())
            .unwrap_or_default()
    }

    /// A token from [`ConsistencyToken::sign`]'s output; a forged or altered one is
    /// [`PinDbError::BadToken`]. Says nothing about its age: see [`Consistency::accept_token`](crate::Consistency::accept_token).
    pub fn verify(signed: &str, key: &cookie::Key) -> Result<ConsistencyToken, PinDbError> {
        let mut jar = cookie::CookieJar::new();
        jar.add_original(cookie::Cookie::new(TOKEN_COOKIE, signed.to_owned()));
        let verified = jar
            .signed(key)
            .get(TOKEN_COOKIE)
            .ok_or(PinDbError::BadToken {
                part: "(signature)".to_owned(),
            })?;
        verified.value().parse()
    }

    /// Makes `ctx` require these positions: its reads of each set go to replicas that have
    /// replayed them, or to the master.
    pub fn apply_to(&self, ctx: &Context) {
        for (set, lsn) in &self.positions {
            ctx.require(set, *lsn);
        }
    }
}

const TOKEN_COOKIE: &str = "pindb_token";

impl fmt::Display for ConsistencyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, ((set, lsn), issued)) in self.positions.iter().zip(&self.issued).enumerate() {
            if i > 0 {
                f.write_str("|")?;
            }
            write!(f, "{set}@{lsn}~{issued}")?;
        }
        Ok(())
    }
}

impl FromStr for ConsistencyToken {
    type Err = PinDbError;

    fn from_str(s: &str) -> Result<Self, PinDbError> {
        let bad = |part: &str| PinDbError::BadToken {
            part: part.to_owned(),
        };
        let mut token = ConsistencyToken::default();
        for part in s.split('|').filter(|p| !p.is_empty()) {
            let (set, rest) = part.rsplit_once('@').ok_or_else(|| bad(part))?;
            if set.is_empty() {
                return Err(bad(part));
            }
            // A position without an issue time (an earlier pindb): `accept_token` dates it.
            let (lsn, issued) = match rest.split_once('~') {
                Some((lsn, t)) => (lsn, t.parse().map_err(|_| bad(part))?),
                None => (rest, 0),
            };
            token
                .positions
                .push((set.to_owned(), lsn.parse().map_err(|_| bad(part))?));
            token.issued.push(issued);
        }
        Ok(token)
    }
}

impl Consistency {
    /// A token a client sent back (signed with any of [`Consistency::cookie_keys`]), with only the
    /// positions that may still matter: of a known set, issued less than `ttl_seconds` ago
    /// (a token echoed forever must not keep its client on the master forever), and not
    /// beyond what the master has written (a restore, another cluster). `None` when the
    /// signature is wrong. A position far ahead of every replica costs one master round trip
    /// to check.
    pub async fn accept_token(&self, signed: &str) -> Option<ConsistencyToken> {
        let mut token = self
            .cookie_keys()
            .iter()
            .find_map(|key| ConsistencyToken::verify(signed, key).ok())?;
        let now = unix_now();
        let ttl = self.settings.ttl_seconds;
        // A position without an issue time comes from an instance of an earlier pindb (a
        // rolling deploy, a queued job): taken as issued now, so it is re-issued with a time
        // and still expires, instead of being dropped while it may matter.
        token.stamp_unknown(now);
        // Issue times are whole seconds and instances' clocks differ: a position is kept up
        // to the skew allowance past `ttl` (longer is safe, shorter could read stale).
        token.retain(|set, _, issued| {
            self.topology.is_set(set)
                && issued <= now.saturating_add(CLOCK_SKEW_SECS)
                && now.saturating_sub(issued) <= ttl.saturating_add(CLOCK_SKEW_SECS)
        });
        let mut implausible = Vec::new();
        for (set, lsn) in token.positions() {
            let known = self.topology.best_replay(set).unwrap_or(Lsn(0));
            // pindb's own "unknown, beyond every replica" marker (the master could not tell
            // its position, or a write was dropped in flight and may commit later) is kept:
            // reads of the set go to the master until it expires. The master's position now
            // would not cover a write still running.
            if *lsn != Lsn(u64::MAX) && lsn.0 > known.0.saturating_add(PLAUSIBLE_AHEAD) {
                match self.master_position(set).await {
                    Ok((master, _)) if *lsn > master => implausible.push(set.clone()),
                    // Cannot check: keep it (at worst, reads of the set go to the master).
                    _ => {}
                }
            }
        }
        if !implausible.is_empty() {
            metrics::counter!("pindb_tokens_rejected_total", "reason" => "beyond-master")
                .increment(1);
            tracing::warn!(target: "pindb", sets = ?implausible, "pindb: a consistency token carried a position beyond the master's; ignored");
            token.retain(|set, _, _| !implausible.iter().any(|s| s == set));
        }
        Some(token)
    }

    /// A token with the current context's write positions (sets it pinned, at the master's
    /// current position, plus positions it was already required to see), for a background
    /// job to import with [`ConsistencyToken::apply_to`].
    pub async fn token(&self) -> ConsistencyToken {
        match Context::current() {
            Some(ctx) => {
                let mut positions = ctx.required();
                merge(&mut positions, &self.write_positions_or_unknown(&ctx).await);
                ConsistencyToken::new(positions)
            }
            None => ConsistencyToken::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_text_round_trips_and_rejects_garbage() {
        let t = ConsistencyToken::new(vec![("default".into(), Lsn(1)), ("x".into(), Lsn(1 << 32))]);
        assert_eq!(t.to_string().parse::<ConsistencyToken>().unwrap(), t);
        assert_eq!(
            "".parse::<ConsistencyToken>().unwrap(),
            ConsistencyToken::default()
        );
        for bad in ["default", "@0/1", "default@0/1|x", "d@1/2/3"] {
            assert!(bad.parse::<ConsistencyToken>().is_err(), "{bad}");
        }
    }
}
