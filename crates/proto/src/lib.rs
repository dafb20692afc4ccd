//! Runnel's wire contract: the prost messages and tonic clients and servers generated from
//! the repository's `proto/runnel/v1/*.proto`.
//!
//! The generated types live under [`pb`], one module per protobuf package
//! (`runnel.v1` is [`pb::runnel::v1`]). They are raw: a field the schema calls required may be
//! empty. Code that receives them validates before use.
//!
//! [`FILE_DESCRIPTOR_SET`] describes every compiled file, for gRPC server reflection.

/// Generated protobuf and gRPC code, one module per protobuf package.
#[allow(missing_docs, unreachable_pub, missing_debug_implementations, rust_2018_idioms)]
#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/runnel_protos.rs"));
}

/// The encoded `google.protobuf.FileDescriptorSet` of every compiled `.proto` file, for
/// gRPC server reflection (`tonic-reflection`'s `register_encoded_file_descriptor_set`).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/runnel_descriptor.bin"));

pub mod security;
pub mod tls;

/// HTTP/2 flow-control window of one stream, for servers and clients of the data plane.
/// hyper's defaults (1 MiB on a server, 2 MiB on a client) are smaller than one default
/// fetch response, so a sender stalls for a window update in the middle of every message.
pub const HTTP2_STREAM_WINDOW: u32 = 8 << 20;
/// HTTP/2 flow-control window of a whole connection (several streams share it).
pub const HTTP2_CONNECTION_WINDOW: u32 = 32 << 20;

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::pb::runnel::v1;
    use super::*;

    #[test]
    fn descriptor_set_describes_the_raft_service() {
        let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("decodes");
        let raft =
            set.file.iter().find(|f| f.name() == "runnel/v1/raft.proto").expect("raft.proto is in the set");
        assert_eq!(raft.package(), "runnel.v1");
        let service = raft.service.iter().find(|s| s.name() == "RaftService").expect("RaftService");
        let methods: Vec<_> = service.method.iter().map(|m| m.name()).collect();
        assert_eq!(methods, ["AppendEntries", "Vote", "InstallSnapshot"]);
    }

    #[test]
    fn descriptor_set_describes_the_controller_service() {
        let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("decodes");
        let file = set
            .file
            .iter()
            .find(|f| f.name() == "runnel/v1/controller.proto")
            .expect("controller.proto is in the set");
        let service = file.service.iter().find(|s| s.name() == "ControllerService").expect("service");
        let methods: Vec<_> = service.method.iter().map(|m| m.name()).collect();
        assert!(methods.contains(&"WatchMetadata") && methods.contains(&"DescribeCluster"), "{methods:?}");
        let watch = service.method.iter().find(|m| m.name() == "WatchMetadata").expect("watch");
        assert!(watch.server_streaming());
    }

    #[test]
    fn a_response_oneof_round_trips() {
        let response = v1::RaftInstallSnapshotResponse {
            result: Some(v1::raft_install_snapshot_response::Result::ErrorJson(b"{}".to_vec())),
        };
        let decoded =
            v1::RaftInstallSnapshotResponse::decode(response.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded, response);
    }
}
