//! Hostile garden: see tests/hostile.rs.

#[allow(unused_imports)]
use crate::common;
