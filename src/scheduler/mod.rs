//! The reference scheduler (being written).
