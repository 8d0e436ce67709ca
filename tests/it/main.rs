//! One integration binary (as uv's client tests): modules by theme, each
//! against real tools on loopback only.

mod bad_input;
mod concurrency;
mod faults;
mod harness;
mod interrupt;
mod nix2container;
mod publish;
mod registry_client;
mod split;
mod tags;
mod tls;
