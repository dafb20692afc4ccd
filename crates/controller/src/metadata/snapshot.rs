//! The snapshot format: the image as JSON, in an envelope that names the format.
//!
//! JSON for now, because it is easy to inspect while the format settles; the envelope's
//! `format` number lets a later build change the encoding and still read (or clearly
//! refuse) old snapshots. Checksums and crash-safe writing are the Raft store's job.

use serde::{Deserialize, Serialize};

use super::error::SnapshotError;
use super::image::ClusterMetadata;

/// The snapshot format this build writes and reads.
pub const SNAPSHOT_FORMAT: u32 = 1;

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    format: u32,
    image: &'a ClusterMetadata,
}

#[derive(Deserialize)]
struct FormatOnly {
    format: u32,
}

#[derive(Deserialize)]
struct EnvelopeIn {
    image: ClusterMetadata,
}

/// Serializes the image as a snapshot.
pub fn encode_snapshot(image: &ClusterMetadata) -> Vec<u8> {
    serde_json::to_vec(&EnvelopeOut { format: SNAPSHOT_FORMAT, image })
        .expect("the image has string keys and plain values, which always serialize")
}

/// Reads a snapshot, refusing other formats and images that break an invariant.
pub fn decode_snapshot(bytes: &[u8]) -> Result<ClusterMetadata, SnapshotError> {
    // The format first, so a future format with another image shape gets a clear error.
    let FormatOnly { format } = serde_json::from_slice(bytes)?;
    if format != SNAPSHOT_FORMAT {
        return Err(SnapshotError::UnsupportedFormat { found: format, supported: SNAPSHOT_FORMAT });
    }
    let EnvelopeIn { image } = serde_json::from_slice(bytes)?;
    image.check_invariants().map_err(SnapshotError::Inconsistent)?;
    Ok(image)
}
