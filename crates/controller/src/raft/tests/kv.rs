//! A toy [`Machine`]: a string map.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::raft::Machine;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Kv {
    pub(crate) map: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Set {
    pub(crate) key: String,
    pub(crate) value: String,
}

impl Machine for Kv {
    type Command = Set;
    /// The value the key held before.
    type Response = Option<String>;

    fn apply(&mut self, _index: u64, command: &Set) -> Option<String> {
        self.map.insert(command.key.clone(), command.value.clone())
    }
}
