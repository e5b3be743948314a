//! Business logic. Controllers and consumers call these services; services
//! call the backend traits of `backend`.

pub mod acks;
pub mod auth;
pub mod backend;
pub mod connections;
pub mod delivery;
pub mod directory;
pub mod messages;
pub mod rate_limit;
pub mod redelivery;
pub mod watermark;

use std::sync::Arc;

use crate::config::Config;
use crate::model::IdGenerator;

pub use acks::AckService;
pub use auth::AuthService;
pub use connections::LiveConnections;
pub use delivery::DeliveryHub;
pub use directory::Directory;
pub use messages::MessageService;
pub use redelivery::RedeliveryTracker;
pub use watermark::Watermark;

/// Every service of one node, shared by controllers and consumers.
#[derive(Clone)]
pub struct Services {
    pub config: Arc<Config>,
    pub ids: Arc<IdGenerator>,
    pub auth: Arc<AuthService>,
    pub directory: Arc<Directory>,
    pub messages: Arc<MessageService>,
    pub acks: Arc<AckService>,
    pub delivery: Arc<DeliveryHub>,
    pub redelivery: Arc<RedeliveryTracker>,
    pub stored: Arc<Watermark>,
    pub store: Arc<dyn backend::Store>,
    pub connections: LiveConnections,
}
