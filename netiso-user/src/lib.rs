//! netiso user space: the agent, the CLI and the loader of the eBPF datapath.
//!
//! Layers depend one way: `cli` -> `client` -> `api` (the wire); `agent` (HTTP and the
//! service) -> `state` and `datapath`; `datapath` knows neither the API nor the state file.
pub mod agent;
pub mod api;
pub mod cgroup;
pub mod cli;
pub mod client;
pub mod datapath;
pub mod failpoint;
pub mod state;
mod sys;
