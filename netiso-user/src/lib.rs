//! netiso user space: the agent, the CLI and the loader of the eBPF datapath.
pub mod agent;
pub mod api;
pub mod cgroup;
pub mod cli;
pub mod client;
pub mod datapath;
pub mod state;
mod sys;
