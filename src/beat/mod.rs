//! The beat: keeps every schedule's next tick, and when one comes, fires it exactly once.

pub mod agenda;
pub mod misfire;
