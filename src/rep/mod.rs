//! The cell's side of the scheduler protocol (being written).
