//! What every part of the cell shares and nothing else: civil-calendar
//! arithmetic (timestamps in logs, archives and listings) and Cloud
//! Foundry-shaped guids. No dependencies but libc, so the static lifecycle
//! binary can use it too.

pub mod civil;
pub mod guid;
