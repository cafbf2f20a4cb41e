//! The scheduler under simulated cells (being written).
