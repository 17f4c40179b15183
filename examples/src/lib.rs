//! Example connectors written only against the public `danube-connect-core` API, the way a
//! third party would write them:
//!
//! - [`counter_source::CounterSource`]: a pull source that numbers records and keeps its
//!   committed position in a state file, so a restart resumes after the last acked record;
//! - [`line_server::LineServer`]: a push source, a TCP server that takes one record per line
//!   and answers `ok` only once Danube acked it;
//! - [`line_sink::LineSink`]: a sink that appends each record to a file and `fsync`s it
//!   before returning `Ok`, so the runtime acks only what is on disk.

pub mod counter_source;
pub mod line_server;
pub mod line_sink;
