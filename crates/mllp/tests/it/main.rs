//! Integration tests for causeway-mllp: a real server and client over
//! loopback sockets (port 0), plain TCP and TLS.

mod plain;
mod support;
mod tls;
