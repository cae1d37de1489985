//! manta-serve integration tests: one binary, real sockets on 127.0.0.1.

mod autoscale;
mod batching;
mod cluster;
mod common;
mod config;
mod grpc;
mod promote;
mod protocol;
mod traffic;
