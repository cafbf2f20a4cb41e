//! Hostile clients and hostile containers (issue 17): each defect found by
//! attacking celld is reproduced here against a real daemon, and must stay
//! fixed. Run as root with `make test` (serially: these tests share the host).

mod common;

#[path = "hostile/garden.rs"]
mod garden;
#[path = "hostile/listeners.rs"]
mod listeners;
#[path = "hostile/network.rs"]
mod network;
#[path = "hostile/runtime.rs"]
mod runtime;
