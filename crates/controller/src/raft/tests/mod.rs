//! Tests of the Raft store and transport, with a toy key/value machine.

mod cluster;
mod harness;
mod kv;
mod network;
mod suite;
