//! netiso user space: the agent, the CLI and the loader of the eBPF datapath.
//!
//! Layers depend one way: `cli` -> `client` -> `api` (the wire); `agent` (HTTP and the
//! service) -> `registry`, `store` and `datapath`; `datapath` knows neither the API nor the
//! store. `state` only reads the JSON state file of older versions, for the import.
pub mod agent;
pub mod api;
pub mod cgroup;
pub mod cli;
pub mod client;
pub mod datapath;
pub mod failpoint;
pub mod registry;
pub mod sockets;
pub mod state;
pub mod store;
mod sys;
