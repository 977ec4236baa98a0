use alloc::sync::Arc;
use core::{borrow::Borrow, fmt};

use crate::CrdtError;

/// Longest actor id, in bytes.
const MAX_ACTOR_LEN: usize = 128;

/// Who performed an operation: one incarnation of one node, e.g. `node-1~lq3x9`.
///
/// A node that loses its data directory comes back as a *new* actor, so its
/// fresh operations can never be masked by the totals its old incarnation
/// left at the peers.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ActorId(Arc<str>);

impl ActorId {
    /// Validates `id` (1–128 bytes, no control characters) and wraps it.
    pub fn new(id: &str) -> Result<Self, CrdtError> {
        if id.is_empty() {
            return Err(CrdtError::InvalidActor("empty"));
        }
        if id.len() > MAX_ACTOR_LEN {
            return Err(CrdtError::InvalidActor("longer than 128 bytes"));
        }
        if id.chars().any(char::is_control) {
            return Err(CrdtError::InvalidActor("contains a control character"));
        }
        Ok(Self(Arc::from(id)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for ActorId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for ActorId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for ActorId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <alloc::borrow::Cow<'de, str>>::deserialize(d)?;
        ActorId::new(&text).map_err(serde::de::Error::custom)
    }
}
