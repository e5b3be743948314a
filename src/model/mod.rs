//! Documents (what is stored), records (what travels on topics) and DTOs
//! (what clients send and receive).

pub mod dto;
pub mod ids;
pub mod message;
pub mod wire;

pub use ids::IdGenerator;
pub use message::*;
