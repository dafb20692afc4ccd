//! The client side of the broker data plane: `runnel produce`, `runnel consume` and
//! `runnel bench`, over the brokers' gRPC API (`BrokerService` in
//! `proto/runnel/v1/broker.proto`).
//!
//! - [`router`] finds partition leaders from `Metadata` and retries requests as leadership
//!   moves;
//! - [`partitioner`] is Kafka's default partitioner (murmur2 for keys, sticky without);
//! - [`produce`] sends lines of stdin with the client crate's `Producer`;
//! - [`consume`] reads partitions with `FetchStream` and prints records as text or JSON;
//! - [`bench`] measures produce and consume throughput and latency.
//!
//! Errors are the client crate's [`ClientError`](runnel_client::ClientError), printed
//! as `error: <ERROR_NAME> (<code>): <message>`.

pub(crate) mod bench;
pub(crate) mod cli;
pub(crate) mod consume;
pub(crate) mod produce;

pub(crate) use runnel_client::error::{code, error};
pub(crate) use runnel_client::records::payload_len;
pub(crate) use runnel_client::{partitioner, router};
