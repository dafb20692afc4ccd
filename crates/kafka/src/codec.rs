//! Framing and decoding of Kafka requests, encoding of responses.
//!
//! A request is a 4-byte big-endian size, then the request header and body. A size above
//! the limit, a frame that ends early, a header or body that does not decode, an unknown API
//! key or a version outside the served range closes the connection (what Kafka does); the
//! one exception is ApiVersions, whose newer versions are answered in version 0 with
//! UNSUPPORTED_VERSION and the served ranges, so a newer client can pick a version.

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::versions;

/// Why a connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The frame's size is negative or above the limit.
    #[error("a request frame of {size} bytes is over socket.request.max.bytes={max}")]
    FrameTooLarge {
        /// The size the frame claimed.
        size: i64,
        /// The limit.
        max: usize,
    },
    /// The connection ended inside a frame, or a frame is too short for a header.
    #[error("truncated request: {0}")]
    Truncated(String),
    /// Reading the socket failed.
    #[error("reading the request: {0}")]
    Io(#[from] std::io::Error),
    /// An API key this broker does not know.
    #[error("unknown API key {0}")]
    UnknownApiKey(i16),
    /// A version outside the range served for the key.
    #[error("{key:?} v{version} is not served (served: v{min} to v{max}){why}")]
    UnsupportedVersion {
        /// The API.
        key: ApiKey,
        /// The version asked.
        version: i16,
        /// The lowest served.
        min: i16,
        /// The highest served.
        max: i16,
        /// More for people, or empty.
        why: &'static str,
    },
    /// The header or body does not decode.
    #[error("malformed {key:?} v{version} request: {message}")]
    Malformed {
        /// The API.
        key: ApiKey,
        /// The version.
        version: i16,
        /// The decoder's complaint.
        message: String,
    },
}

/// Reads one frame; `Ok(None)` at a clean end of stream (between frames).
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Option<Bytes>, CodecError> {
    let mut size = [0u8; 4];
    match reader.read_exact(&mut size).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let size = i32::from_be_bytes(size);
    let len = usize::try_from(size).ok().filter(|&n| n <= max);
    let Some(len) = len else {
        return Err(CodecError::FrameTooLarge { size: i64::from(size), max });
    };
    let mut frame = BytesMut::zeroed(len);
    reader.read_exact(&mut frame).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            CodecError::Truncated(format!("the connection closed inside a {len}-byte frame"))
        }
        _ => CodecError::Io(e),
    })?;
    Ok(Some(frame.freeze()))
}

/// A decoded request, or the version-0 ApiVersions answer owed to a too-new ApiVersions.
#[derive(Debug)]
pub enum Decoded {
    /// A request to serve.
    Request {
        /// Its header.
        header: RequestHeader,
        /// Its body (boxed: request bodies are large and vary in size).
        request: Box<RequestKind>,
    },
    /// ApiVersions in a version above the served one: answered in v0 with
    /// UNSUPPORTED_VERSION.
    ApiVersionsTooNew {
        /// To echo.
        correlation_id: i32,
    },
}

/// Decodes one frame into a header and a request.
pub fn decode(mut frame: Bytes) -> Result<Decoded, CodecError> {
    if frame.len() < 8 {
        return Err(CodecError::Truncated(format!(
            "a {}-byte frame is too short for a request header",
            frame.len()
        )));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let key = ApiKey::try_from(raw_key).map_err(|_| CodecError::UnknownApiKey(raw_key))?;
    let Some(range) = versions::served(key) else {
        return Err(CodecError::UnknownApiKey(raw_key));
    };
    if key == ApiKey::ApiVersions && version > range.max {
        return Ok(Decoded::ApiVersionsTooNew { correlation_id });
    }
    if version < range.min || version > range.max || version < key.valid_versions().min {
        let why = match key {
            ApiKey::Produce | ApiKey::Fetch if version <= range.max => {
                ": message formats before 0.11 (magic 0 and 1) are refused; use a client that \
                 speaks Produce v3 and Fetch v4 or newer"
            }
            _ => "",
        };
        return Err(CodecError::UnsupportedVersion { key, version, min: range.min, max: range.max, why });
    }
    let malformed = |e: anyhow::Error| CodecError::Malformed { key, version, message: format!("{e:#}") };
    let header = RequestHeader::decode(&mut frame, key.request_header_version(version)).map_err(malformed)?;
    let request = RequestKind::decode(key, &mut frame, version).map_err(malformed)?;
    if frame.has_remaining() {
        // Kafka ignores bytes after a request, and librdkafka 2.x sends some after an
        // all-topics Metadata v12; refusing them would cut such clients off.
        tracing::debug!("{key:?} v{version}: ignoring {} bytes after the request", frame.remaining());
    }
    Ok(Decoded::Request { header, request: Box::new(request) })
}

/// Encodes one response frame (size, header, body).
pub fn encode(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    response: &ResponseKind,
) -> anyhow::Result<Bytes> {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0; 4]);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header.encode(&mut buf, key.response_header_version(version))?;
    response.encode(&mut buf, version)?;
    let size = i32::try_from(buf.len() - 4)?;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Bytes {
        Bytes::from(
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect::<Vec<u8>>(),
        )
    }

    #[test]
    fn librdkafkas_all_topics_metadata_v12_decodes_despite_trailing_bytes() {
        // librdkafka 2.x's list_topics(): a null topic list, then three bytes past the request.
        let frame = hex("0003000c00000003000772646b61666b610000000000010000");
        match decode(frame) {
            Ok(Decoded::Request { request, .. }) => match *request {
                RequestKind::Metadata(m) => assert!(m.topics.is_none(), "all topics"),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn librdkafkas_metadata_v12_decodes_whole() {
        // librdkafka 2.x's Metadata v12 for the topic list (an empty, non-null array).
        let frame = hex("0003000c00000002000772646b61666b610001000000");
        match decode(frame) {
            Ok(Decoded::Request { header, .. }) => assert_eq!(header.correlation_id, 2),
            other => panic!("{other:?}"),
        }
    }
}
