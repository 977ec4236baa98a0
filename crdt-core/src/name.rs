use alloc::sync::Arc;
use core::{borrow::Borrow, fmt};

use crate::CrdtError;

/// Longest counter name, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 128;

/// A validated counter name: UTF-8, 1–128 bytes, no control characters.
///
/// Cheap to clone (shared), because the map and its change index both hold it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CounterName(Arc<str>);

impl CounterName {
    /// Validates `name` and wraps it.
    pub fn new(name: &str) -> Result<Self, CrdtError> {
        validate(name)?;
        Ok(Self(Arc::from(name)))
    }

    /// The empty name: invalid as a counter, but it sorts before every
    /// valid one, which makes it a range bound for the change index.
    pub(crate) fn lowest() -> Self {
        Self(Arc::from(""))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate(name: &str) -> Result<(), CrdtError> {
    if name.is_empty() {
        return Err(CrdtError::InvalidName("empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(CrdtError::InvalidName("longer than 128 bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(CrdtError::InvalidName("contains a control character"));
    }
    Ok(())
}

impl Borrow<str> for CounterName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CounterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CounterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for CounterName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for CounterName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <alloc::borrow::Cow<'de, str>>::deserialize(d)?;
        CounterName::new(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names_and_rejects_bad_ones() {
        assert!(CounterName::new("default").is_ok());
        assert!(CounterName::new("page/views/ünïcode").is_ok());
        assert!(CounterName::new(&"x".repeat(128)).is_ok());
        assert!(CounterName::new("").is_err());
        assert!(CounterName::new(&"x".repeat(129)).is_err());
        assert!(CounterName::new("tab\there").is_err());
        assert!(CounterName::new("nul\0").is_err());
    }
}
