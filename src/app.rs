//! Wiring: opens the backends, starts consumers and serves HTTP until a
//! signal, then drains and flushes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::consumer::ack_cycle::{self, AckConsumer};
use crate::consumer::session_consumer::SessionConsumer;
use crate::consumer::{message_listener, run_topic, Consuming};
use crate::controller::listener::NoDelayAcceptor;
use crate::embedded::{Embedded, SqliteStore};
use crate::model::IdGenerator;
use crate::service::backend::{DurableTopic, Store};
use crate::service::messages::StoredSends;
use crate::service::{
    AckService, AuthService, DeliveryHub, Directory, LiveConnections, MessageService,
    RedeliveryTracker, Services, Watermark,
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

/// A node with its background tasks.
pub struct Node {
    pub services: Services,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    topics: [Arc<dyn DurableTopic>; 2],
}

/// Reads the JWT secret from config, or from `<data-dir>/jwt.secret`
/// (created once with 32 random bytes), so restarts keep tokens valid.
fn jwt_secret(cfg: &Config) -> anyhow::Result<Vec<u8>> {
    if !cfg.jwt_secret.is_empty() {
        return Ok(cfg.jwt_secret.as_bytes().to_vec());
    }
    let path = cfg.data_dir.join("jwt.secret");
    if let Ok(existing) = std::fs::read(&path) {
        if existing.len() >= 32 {
            return Ok(existing);
        }
    }
    let secret: [u8; 32] = rand::random();
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, hex.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(hex.into_bytes())
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

impl Node {
    /// Opens the embedded backends under the data dir and starts consumers.
    pub async fn start(cfg: Config) -> anyhow::Result<Node> {
        let cfg = Arc::new(cfg);
        let db = Embedded::open(
            &cfg.data_dir,
            cfg.durability == "full",
            cfg.commit_batch_max,
        )
        .with_context(|| format!("cannot open the store in {}", cfg.data_dir.display()))?;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::new(&db.documents));
        let history = Arc::new(StoredSends(store.clone()));
        let session_topic: Arc<dyn DurableTopic> =
            Arc::new(db.open_topic("session", Some(history))?);
        let ack_topic: Arc<dyn DurableTopic> = Arc::new(db.open_topic("ack", None)?);
        let secret = jwt_secret(&cfg)?;
        let ids = Arc::new(IdGenerator::new(cfg.node_id));
        let auth = Arc::new(AuthService::new(&secret, cfg.jwt_ttl_secs)?);
        let directory = Arc::new(Directory::new(store.clone(), auth.clone(), ids.clone()));
        let delivery = Arc::new(DeliveryHub::new(
            cfg.max_connections_per_user,
            cfg.connection_queue,
        ));
        let acks = AckService::start(ack_topic.clone());
        let redelivery = Arc::new(RedeliveryTracker::new(
            Duration::from_millis(cfg.ack_timeout_ms),
            Duration::from_millis(cfg.max_redelivery_wait_ms),
            cfg.max_redeliveries,
        ));
        let stored = Arc::new(Watermark::default());
        let messages = Arc::new(MessageService::new(
            cfg.clone(),
            ids.clone(),
            store.clone(),
            session_topic.clone(),
            directory.clone(),
            acks.clone(),
            delivery.clone(),
            stored.clone(),
        ));
        let services = Services {
            config: cfg,
            ids,
            auth,
            directory,
            messages,
            acks,
            delivery,
            redelivery,
            stored,
            store,
            connections: LiveConnections::default(),
        };
        let (shutdown, _) = watch::channel(false);
        let (tasks, published) =
            start_consumers(&services, &*session_topic, &*ack_topic, &shutdown).await?;
        // Sends published before a crash are stored before serving: a new
        // pair's session id lives only in memory until its first message is
        // stored, so a send must not race the replay to hand out another.
        if !services.stored.wait_for(published, REPLAY_WAIT).await {
            tracing::warn!(published, "serving before the session topic was replayed");
        }
        Ok(Node {
            services,
            shutdown,
            tasks,
            topics: [session_topic, ack_topic],
        })
    }

    /// Stops consumers after they drained what was published, then closes
    /// the topics and the store (everything durable, WALs emptied).
    pub async fn stop(self) {
        // Acks queued by connections on their way out go to the ack topic
        // and are applied while its consumer still runs.
        self.services.acks.settle().await;
        let _ = self.shutdown.send(true);
        let all = futures_util::future::join_all(self.tasks);
        if tokio::time::timeout(DRAIN_TIMEOUT, all).await.is_err() {
            tracing::warn!("consumers did not drain in time");
        }
        for topic in &self.topics {
            if let Err(e) = topic.close().await {
                tracing::error!(error = %e, topic = topic.name(), "closing the topic failed");
            }
        }
        if let Err(e) = self.services.store.close().await {
            tracing::error!(error = %e, "closing the store failed");
        }
    }
}

/// Consumer groups of the session and ack topics.
const INBOX_WRITER: &str = "inbox-writer";
const ACK_CYCLE: &str = "ack-cycle";

/// Longest wait at start for the session topic's replay.
const REPLAY_WAIT: Duration = Duration::from_secs(60);

/// Starts the consumers; also returns the session topic's head at start.
async fn start_consumers(
    s: &Services,
    session_topic: &dyn DurableTopic,
    ack_topic: &dyn DurableTopic,
    shutdown: &watch::Sender<bool>,
) -> anyhow::Result<(Vec<JoinHandle<()>>, u64)> {
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    // Each consumer resumes where the documents say it got to: they hold
    // its position in the same transactions as what it applied.
    let resume = s.store.applied_position(INBOX_WRITER).await?;
    let session_consumer = session_topic.consumer(INBOX_WRITER, resume).await?;
    s.stored.advance(session_consumer.position());
    let published = session_consumer.position() + session_consumer.lag();
    let resume = s.store.applied_position(ACK_CYCLE).await?;
    let ack_consumer = ack_topic.consumer(ACK_CYCLE, resume).await?;
    let tasks = vec![
        tokio::spawn(run_topic(
            Consuming {
                topic: "session",
                group: INBOX_WRITER,
                store: s.store.clone(),
            },
            session_consumer,
            SessionConsumer {
                store: s.store.clone(),
                directory: s.directory.clone(),
                watermark: s.stored.clone(),
                events: events_tx,
            },
            shutdown.subscribe(),
        )),
        tokio::spawn(message_listener::run(events_rx, s.delivery.clone())),
        tokio::spawn(run_topic(
            Consuming {
                topic: "ack",
                group: ACK_CYCLE,
                store: s.store.clone(),
            },
            ack_consumer,
            AckConsumer {
                store: s.store.clone(),
                acks: s.acks.clone(),
                tracker: s.redelivery.clone(),
            },
            shutdown.subscribe(),
        )),
        tokio::spawn(ack_cycle::run_redelivery(
            s.redelivery.clone(),
            s.messages.clone(),
            s.delivery.clone(),
            shutdown.subscribe(),
        )),
    ];
    Ok((tasks, published))
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
    crate::sys::raise_fd_limit();
    let acceptor = NoDelayAcceptor::bind(&listen)
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
    poem::Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(app, stopping, Some(REQUESTS_TIMEOUT))
        .await
        .with_context(|| format!("cannot serve on {listen}"))?;
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
