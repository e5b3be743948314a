//! Business logic. Controllers and consumers call these services; services
//! call the backend traits of `backend`.

pub mod accounts;
pub mod acks;
pub mod auth;
pub mod backend;
pub mod connections;
pub mod delivery;
pub mod directory;
pub mod frame_budget;
pub mod mailbox;
pub mod messages;
pub mod notices;
pub mod rate_limit;
pub mod readiness;
pub mod redelivery;
pub mod relay;
pub mod tokens;
pub mod watermark;

use std::sync::Arc;

use crate::config::Config;
use crate::model::IdGenerator;

pub use accounts::Accounts;
pub use acks::AckService;
pub use auth::AuthService;
pub use connections::LiveConnections;
pub use delivery::DeliveryHub;
pub use directory::Directory;
pub use messages::MessageService;
pub use readiness::Readiness;
pub use redelivery::RedeliveryTracker;
pub use relay::Relay;
pub use tokens::Tokens;
pub use watermark::Watermark;

/// Every service of one node, shared by controllers and consumers.
#[derive(Clone)]
pub struct Services {
    pub config: Arc<Config>,
    pub ids: Arc<IdGenerator>,
    pub auth: Arc<AuthService>,
    /// Token checks (user exists, not revoked) and revocation.
    pub tokens: Arc<Tokens>,
    /// Registration and login, throttled; logout.
    pub accounts: Arc<Accounts>,
    pub directory: Arc<Directory>,
    pub messages: Arc<MessageService>,
    pub acks: Arc<AckService>,
    /// This node's devices.
    pub delivery: Arc<DeliveryHub>,
    /// Pushes and notices to any node.
    pub relay: Arc<Relay>,
    /// Who is online, on every node.
    pub presence: Arc<dyn backend::Presence>,
    pub redelivery: Arc<RedeliveryTracker>,
    pub backends: Arc<backend::Backends>,
    pub readiness: Arc<Readiness>,
    pub connections: LiveConnections,
    /// Memory held by unfinished STOMP frames on this node.
    pub frame_budget: Arc<frame_budget::FrameBudget>,
}
