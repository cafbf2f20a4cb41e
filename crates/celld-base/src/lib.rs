//! What every part of the cell shares and nothing else: civil-calendar
//! arithmetic (timestamps in logs, archives and listings), Cloud
//! Foundry-shaped guids, and byte sizes as CF prints them. No dependency but
//! libc, so the static lifecycle binary can use it too.

pub mod civil;
pub mod guid;
pub mod size;
