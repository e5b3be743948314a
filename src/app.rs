//! Wiring: opens the backends, starts consumers and serves HTTP until a
//! signal, then drains and flushes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{BackendMode, Config};
use crate::consumer::ack_cycle::{self, AckConsumer};
use crate::consumer::session_consumer::SessionConsumer;
use crate::consumer::{message_listener, run_topic, Consuming};
use crate::controller::admission::{Admission, AdmissionLimits};
use crate::controller::http_server::{self, HttpOptions};
use crate::model::IdGenerator;
use crate::service::accounts::AccountLimits;
use crate::service::backend::Backends;
use crate::service::frame_budget::FrameBudget;
use crate::service::mailbox::{Mailbox, SendWaiters};
use crate::service::messages::MessageDeps;
use crate::service::readiness::ConsumerState;
use crate::service::{
    Accounts, AckService, AuthService, DeliveryHub, Directory, LiveConnections, MessageService,
    RedeliveryTracker, Relay, Services, Tokens,
};

/// Events queued between the session consumer and the listener (batches).
const EVENT_QUEUE: usize = 64;
/// Time allowed for draining on shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(6);
/// Time allowed on shutdown for HTTP requests under way to finish.
const REQUESTS_TIMEOUT: Duration = Duration::from_secs(2);
/// Time allowed on shutdown for STOMP connections to answer the sends they
/// read and close.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The exit status when a second signal cuts the stop short.
pub const SECOND_SIGNAL_EXIT: i32 = 130;
/// The exit status when another process took this node's id (its lease
/// lapsed): two processes must never mint ids with one node id.
pub const LOST_NODE_ID_EXIT: i32 = 75;

/// A node with its background tasks.
pub struct Node {
    pub services: Services,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Opens the backends the configuration names.
async fn open_backends(cfg: &Config) -> anyhow::Result<Backends> {
    let backends = match cfg.backend_mode()? {
        BackendMode::Embedded => crate::embedded::open_backends(cfg)?,
        BackendMode::Cluster => crate::cluster::open_backends(cfg).await?,
    };
    tracing::info!(mode = backends.mode, node = cfg.node_id, "backends open");
    Ok(backends)
}

impl Node {
    /// Opens the backends and starts consumers.
    pub async fn start(cfg: Config) -> anyhow::Result<Node> {
        let cfg = Arc::new(cfg);
        let backends = Arc::new(open_backends(&cfg).await?);
        let services = wire(cfg, backends)?;
        let (shutdown, _) = watch::channel(false);
        let (tasks, session_state) = start_consumers(&services, &shutdown).await?;
        if services.backends.replay_before_serving && !caught_up(&session_state, REPLAY_WAIT).await
        {
            tracing::warn!("serving before the session topic was replayed");
        }
        Ok(Node {
            services,
            shutdown,
            tasks,
        })
    }

    /// Stops consumers after they drained what was published, then closes
    /// the backends (everything durable, WALs emptied).
    pub async fn stop(self) {
        // Acks queued by connections on their way out go to the ack topic
        // and are applied while its consumer still runs.
        self.services.acks.settle().await;
        let _ = self.shutdown.send(true);
        let all = futures_util::future::join_all(self.tasks);
        if tokio::time::timeout(DRAIN_TIMEOUT, all).await.is_err() {
            tracing::warn!("consumers did not drain in time");
        }
        self.services.backends.close().await;
    }
}

/// Builds the services of a node on its backends.
fn wire(cfg: Arc<Config>, backends: Arc<Backends>) -> anyhow::Result<Services> {
    let presence = backends.presence.clone();
    let node = presence.node();
    let ids = Arc::new(IdGenerator::new(node));
    let auth = Arc::new(AuthService::new(&backends.jwt_secret, cfg.jwt_ttl_secs)?);
    let delivery = Arc::new(DeliveryHub::new(cfg.connection_queue));
    let relay = Arc::new(Relay::new(presence.clone(), delivery.clone()));
    let store = backends.store.clone();
    let directory = Arc::new(Directory::new(
        store.clone(),
        auth.clone(),
        ids.clone(),
        relay.clone(),
    ));
    let tokens = Arc::new(Tokens::new(auth.clone(), store.clone(), relay.clone()));
    let accounts = Arc::new(Accounts::new(
        directory.clone(),
        tokens.clone(),
        backends.quotas.clone(),
        AccountLimits::of(&cfg),
    ));
    let redelivery = Arc::new(RedeliveryTracker::new(
        Duration::from_millis(cfg.ack_timeout_ms),
        Duration::from_millis(cfg.max_redelivery_wait_ms),
        cfg.max_redeliveries,
    ));
    let acks = AckService::start(
        backends.ack_topic.clone(),
        redelivery.clone(),
        relay.clone(),
    );
    let sends = Arc::new(SendWaiters::default());
    let messages = Arc::new(MessageService::new(
        cfg.clone(),
        MessageDeps {
            ids: ids.clone(),
            store,
            topic: backends.session_topic.clone(),
            directory: directory.clone(),
            acks: acks.clone(),
            relay: relay.clone(),
            quotas: backends.quotas.clone(),
            sends: sends.clone(),
        },
    ));
    let mailbox = Arc::new(Mailbox {
        node,
        relay: relay.clone(),
        sends,
        acks: acks.clone(),
        directory: directory.clone(),
        hub: delivery.clone(),
        tokens: tokens.clone(),
    });
    relay.attach(mailbox.clone());
    presence.attach(mailbox);
    let frame_budget = Arc::new(FrameBudget::new(
        cfg.partial_frame_bytes_per_user,
        cfg.partial_frame_bytes_total,
    ));
    Ok(Services {
        config: cfg,
        ids,
        auth,
        tokens,
        accounts,
        directory,
        messages,
        acks,
        delivery,
        relay,
        presence,
        redelivery,
        backends,
        readiness: Arc::default(),
        connections: LiveConnections::default(),
        frame_budget,
    })
}

/// Consumer groups of the session and ack topics.
const INBOX_WRITER: &str = "inbox-writer";
const ACK_CYCLE: &str = "ack-cycle";

/// Longest wait at start for the session topic's replay.
const REPLAY_WAIT: Duration = Duration::from_secs(60);

/// Waits until the consumer has handled everything published before;
/// `false` if `within` passed first.
async fn caught_up(state: &ConsumerState, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while state.lag() > 0 || !state.is_assigned() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Starts the consumers; also returns the session consumer's state.
async fn start_consumers(
    s: &Services,
    shutdown: &watch::Sender<bool>,
) -> anyhow::Result<(Vec<JoinHandle<()>>, Arc<ConsumerState>)> {
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let b = &s.backends;
    let session_consumer = b.session_topic.consumer(INBOX_WRITER).await?;
    let ack_consumer = b.ack_topic.consumer(ACK_CYCLE).await?;
    let session_state = s.readiness.consumer(INBOX_WRITER);
    let tasks = vec![
        tokio::spawn(run_topic(
            Consuming {
                topic: "session",
                group: INBOX_WRITER,
                state: session_state.clone(),
            },
            session_consumer,
            SessionConsumer {
                store: b.store.clone(),
                relay: s.relay.clone(),
                events: events_tx,
            },
            shutdown.subscribe(),
        )),
        tokio::spawn(message_listener::run(events_rx, s.relay.clone())),
        tokio::spawn(run_topic(
            Consuming {
                topic: "ack",
                group: ACK_CYCLE,
                state: s.readiness.consumer(ACK_CYCLE),
            },
            ack_consumer,
            AckConsumer {
                store: b.store.clone(),
                relay: s.relay.clone(),
            },
            shutdown.subscribe(),
        )),
        tokio::spawn(ack_cycle::run_redelivery(
            s.redelivery.clone(),
            s.messages.clone(),
            s.relay.clone(),
            shutdown.subscribe(),
        )),
    ];
    Ok((tasks, session_state))
}

/// `herald serve`: runs until SIGINT/SIGTERM, then stops accepting, lets
/// HTTP requests finish and STOMP connections answer what they read and
/// close (1001, going away), drains the consumers, closes the backends and
/// returns.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    let metrics = crate::telemetry::metrics_handle();
    let listen = cfg.listen.clone();
    let node = Node::start(cfg).await?;
    let app = crate::controller::routes(node.services.clone(), metrics);
    let fd_limit = crate::sys::raise_fd_limit();
    let admission = Admission::new(admission_limits(&node.services.config, fd_limit));
    tracing::info!(limits = ?admission.limits(), "connection limits");
    let listener = TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(%listen, "herald listening");
    let connections = node.services.connections.clone();
    let stopping = async move {
        shutdown_signal().await;
        tracing::info!(
            connections = connections.count(),
            "stopping: closing connections"
        );
        connections.ask_to_leave();
        tokio::spawn(exit_on_second_signal());
    };
    let opts = HttpOptions {
        header_timeout: Duration::from_millis(node.services.config.request_header_timeout_ms),
        drain_timeout: REQUESTS_TIMEOUT,
    };
    http_server::serve(listener, app, admission, opts, stopping).await;
    let connections = &node.services.connections;
    if !connections.all_left(LEAVE_TIMEOUT).await {
        tracing::warn!(
            left = connections.count(),
            "connections did not close in time"
        );
    }
    tracing::info!("stopping: draining consumers");
    node.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// Descriptors kept for everything that is not a client connection: the
/// stores' files, backend connections, the listener.
const RESERVED_FDS: u64 = 256;

/// The connection caps: `max_connections`, or when 0, 90 % of the
/// open-files limit less the reserve (a node out of descriptors cannot
/// even write its store).
fn admission_limits(cfg: &Config, fd_limit: Option<u64>) -> AdmissionLimits {
    let automatic = fd_limit
        .map(|l| (l / 10 * 9).saturating_sub(RESERVED_FDS).max(64))
        .unwrap_or(16_384);
    let total = match cfg.max_connections {
        0 => usize::try_from(automatic).unwrap_or(usize::MAX),
        n => n,
    };
    AdmissionLimits {
        total,
        per_address: cfg.max_connections_per_address,
        waiting_per_address: cfg.max_waiting_per_address,
    }
}

/// A second SIGINT/SIGTERM while stopping exits at once: whoever sends it
/// does not want to wait (a client that stops reading can hold the stop
/// for its 5 s), and every send that was acked is durable anyway.
async fn exit_on_second_signal() {
    shutdown_signal().await;
    tracing::warn!("second signal: exiting without finishing the stop");
    std::process::exit(SECOND_SIGNAL_EXIT);
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
