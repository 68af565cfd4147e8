//! WAL positions (`pg_lsn`) as numbers.
//!
//! Owns the type and its text form only; where positions come from is the monitor's and the
//! stickiness store's business.

use std::fmt;
use std::str::FromStr;

/// A PostgreSQL WAL position. The text form `X/Y` is `X << 32 | Y` in hex.
///
/// ```
/// use pindb_core::Lsn;
///
/// let lsn: Lsn = "1/2A".parse().unwrap();
/// assert_eq!(lsn, Lsn((1 << 32) | 0x2A));
/// assert_eq!(lsn.to_string(), "1/2A");
/// assert!("nonsense".parse::<Lsn>().is_err());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses `X/Y`.
    pub fn parse(text: &str) -> Option<Lsn> {
        let (hi, lo) = text.split_once('/')?;
        let hi = u64::from_str_radix(hi, 16)
            .ok()
            .filter(|h| *h <= u32::MAX as u64)?;
        let lo = u64::from_str_radix(lo, 16)
            .ok()
            .filter(|l| *l <= u32::MAX as u64)?;
        Some(Lsn((hi << 32) | lo))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The text is not an `X/Y` WAL position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a WAL position (expected hex `X/Y`, e.g. `0/16B3748`)")]
pub struct ParseLsnError(pub String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Lsn, ParseLsnError> {
        Lsn::parse(s).ok_or_else(|| ParseLsnError(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for text in ["0/0", "0/16B3748", "1/0", "FFFFFFFF/FFFFFFFF"] {
            assert_eq!(Lsn::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(Lsn::parse("1/2/3"), None);
        assert_eq!(Lsn::parse("100000000/0"), None);
    }

    proptest::proptest! {
        #[test]
        fn any_value_round_trips(v: u64) {
            proptest::prop_assert_eq!(Lsn::parse(&Lsn(v).to_string()), Some(Lsn(v)));
        }
    }
}
