//! Cloud Foundry's buildpack lifecycle, as run inside staging containers by the
//! static `celld-lifecycle` binary (mounted read-only at /tmp/lifecycle).
