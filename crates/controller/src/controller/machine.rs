//! The glue between the Raft host and the metadata state machine.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::metadata::{ClusterMetadata, Command, CommandResult, SNAPSHOT_FORMAT};
use crate::raft::Machine;

/// [`ClusterMetadata`] as a Raft [`Machine`]. Its serialized form (the Raft snapshot) is the
/// metadata snapshot format: `{"format": 1, "image": …}`, checked on load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataMachine {
    /// The image every applied command has produced.
    pub image: ClusterMetadata,
}

/// What applying a Raft log entry answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataResponse {
    /// The entry carried no command (a blank entry of a new leader, or a membership change).
    #[default]
    None,
    /// The entry carried a command, and this is what the state machine made of it.
    Command(CommandResult),
}

impl Machine for MetadataMachine {
    type Command = Command;
    type Response = MetadataResponse;

    fn apply(&mut self, index: u64, command: &Command) -> MetadataResponse {
        MetadataResponse::Command(self.image.apply(index, command))
    }
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    format: u32,
    image: &'a ClusterMetadata,
}

#[derive(Deserialize)]
struct EnvelopeIn {
    format: u32,
    image: ClusterMetadata,
}

impl Serialize for MetadataMachine {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        EnvelopeOut { format: SNAPSHOT_FORMAT, image: &self.image }.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for MetadataMachine {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let EnvelopeIn { format, image } = EnvelopeIn::deserialize(deserializer)?;
        if format != SNAPSHOT_FORMAT {
            return Err(D::Error::custom(format!(
                "metadata snapshot format {format} is not supported (this build reads {SNAPSHOT_FORMAT})"
            )));
        }
        image.check_invariants().map_err(|e| D::Error::custom(format!("inconsistent metadata: {e}")))?;
        Ok(MetadataMachine { image })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{Endpoints, decode_snapshot};

    #[test]
    fn the_machine_serializes_as_a_metadata_snapshot_and_refuses_other_formats() {
        let mut machine = MetadataMachine::default();
        let endpoints = Endpoints {
            grpc: "h:1".into(),
            kafka: "h:2".into(),
            http: "h:3".into(),
            internal: String::new(),
        };
        let response =
            machine.apply(1, &Command::RegisterBroker { id: 1, endpoints, rack: None, incarnation_id: None });
        assert!(matches!(response, MetadataResponse::Command(Ok(_))));
        let json = serde_json::to_vec(&machine).expect("encodes");
        assert_eq!(decode_snapshot(&json).expect("a metadata snapshot"), machine.image);
        let back: MetadataMachine = serde_json::from_slice(&json).expect("decodes");
        assert_eq!(back, machine);
        let other = String::from_utf8(json).expect("utf-8").replace("\"format\":1", "\"format\":9");
        assert!(serde_json::from_str::<MetadataMachine>(&other).is_err());
    }
}
