//! Configuration: defaults < `herald.toml` < `HERALD_*` environment < flags.
//!
//! Every setting is declared once in `settings!`, which generates the typed
//! `Config`, the file overlay and the environment overlay from one list.

use std::path::{Path, PathBuf};

use serde::Deserialize;

macro_rules! settings {
    ($( $(#[doc = $doc:literal])* $name:ident : $ty:ty = $default:expr ;)*) => {
        /// The effective configuration of one Herald process.
        #[derive(Debug, Clone)]
        pub struct Config {
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        impl Default for Config {
            fn default() -> Self {
                Config { $( $name: $default, )* }
            }
        }

        /// A configuration file: every key optional, unknown keys rejected.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct FileConfig {
            $( $name: Option<$ty>, )*
        }

        impl Config {
            fn apply_file(&mut self, file: FileConfig) {
                $( if let Some(v) = file.$name { self.$name = v; } )*
            }

            fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
                $(
                    let key = concat!("HERALD_", stringify!($name)).to_ascii_uppercase();
                    if let Some(raw) = env(&key) {
                        self.$name = parse_value::<$ty>(&key, &raw)?;
                    }
                )*
                Ok(())
            }

            /// `(name, environment variable, default, description)` of every
            /// setting, for `herald config` and the README table.
            pub fn describe() -> Vec<(&'static str, String, String, String)> {
                let d = Config::default();
                vec![ $( (
                    stringify!($name),
                    concat!("HERALD_", stringify!($name)).to_ascii_uppercase(),
                    format!("{:?}", d.$name),
                    [$($doc),*].join(" ").trim().to_string(),
                ), )* ]
            }
        }
    };
}

settings! {
    /// Address the HTTP/WebSocket server listens on.
    listen: String = "127.0.0.1:8080".into();
    /// Directory of the embedded store and topics.
    data_dir: PathBuf = PathBuf::from("./herald-data");
    /// HS256 secret for tokens; if empty, generated once and kept in the data dir (in MongoDB for a cluster).
    jwt_secret: String = String::new();
    /// Token lifetime in seconds (7 days).
    jwt_ttl_secs: u64 = 7 * 24 * 3600;
    /// Time a client-ack push may stay unacked before its first redelivery.
    ack_timeout_ms: u64 = 10_000;
    /// Redeliveries of an unacked push before it is dead-lettered.
    max_redeliveries: u32 = 5;
    /// Upper bound of one redelivery wait (5 minutes).
    max_redelivery_wait_ms: u64 = 300_000;
    /// Client timestamps further than this from server time are replaced.
    max_clock_skew_ms: i64 = 60_000;
    /// How long after sending a sender may recall a message.
    recall_window_ms: i64 = 120_000;
    /// Largest message content in bytes.
    max_content_bytes: usize = 65_536;
    /// Largest STOMP frame, headers included.
    max_frame_bytes: usize = 2 * 1024 * 1024;
    /// Most headers in one STOMP frame.
    max_frame_headers: usize = 64;
    /// Longest STOMP header line in bytes.
    max_header_bytes: usize = 8 * 1024;
    /// Sustained sends per second per user (token bucket rate).
    send_rate_per_sec: u32 = 50;
    /// Send burst per user (token bucket size).
    send_burst: u32 = 100;
    /// Concurrent WebSocket connections per user.
    max_connections_per_user: usize = 16;
    /// Shortest heart-beat interval the server agrees to, in ms: a client asking for a longer one gets what it asks (0 = no heart-beats).
    heartbeat_ms: u64 = 1_000;
    /// Pushes queued per connection before it counts as a slow consumer.
    connection_queue: usize = 1024;
    /// Open TCP connections (HTTP and WebSocket) in all; 0 = 90 % of the open-files limit less 256.
    max_connections: usize = 0;
    /// Open TCP connections per client address (0 = no cap; raise it when many users share an address behind NAT).
    max_connections_per_address: usize = 4096;
    /// Connections per client address that have not sent a complete request yet; over it, the oldest is closed.
    max_waiting_per_address: usize = 1024;
    /// From accept, or the end of the previous response, to a complete HTTP request head.
    request_header_timeout_ms: u64 = 10_000;
    /// A STOMP frame or WebSocket message begun must be complete within this, whatever the heart-beats; so must a write to a client.
    frame_timeout_ms: u64 = 30_000;
    /// Bytes of unfinished STOMP frames one user's connections may hold on a node.
    partial_frame_bytes_per_user: usize = 4 * 1024 * 1024;
    /// Bytes of unfinished STOMP frames all connections of a node may hold.
    partial_frame_bytes_total: usize = 64 * 1024 * 1024;
    /// `full` fsyncs each topic log write (acked sends survive power loss); `normal` survives process crashes only.
    durability: String = "full".into();
    /// Most operations grouped into one commit of the documents.
    commit_batch_max: usize = 2048;
    /// Node id (0-1023) of the message-id generator; unique per cluster node (a node holds a lease on it in Redis).
    node_id: u16 = 0;
    /// Most REST requests per second per client address (0 = unlimited).
    http_rate_per_sec: u32 = 0;
    /// Origins whose browser apps may call the API (comma-separated, `*` for any; empty = same origin only).
    cors_origins: String = String::new();
    /// Registrations per client address within an hour (every attempt counts; 0 = no limit).
    registrations_per_hour: u32 = 10;
    /// Failed logins for one username within `login_failure_window_ms` before its logins are refused (429) until the window passes; a success resets the count. One client address gets at most 20 failures per window over all usernames (0 = no login throttling at all).
    login_max_failures: u32 = 5;
    /// The window of `login_max_failures` and of the per-address failures, from the first failure (15 minutes).
    login_failure_window_ms: u64 = 900_000;
    /// Comma-separated CIDRs (or addresses) of reverse proxies whose `X-Forwarded-For` is believed; the client address is then the last entry added before a trusted proxy (empty = the socket's peer).
    trusted_proxies: String = String::new();
    /// Where documents live: `embedded` (SQLite in the data dir) or `mongodb` (cluster mode).
    store: String = "embedded".into();
    /// MongoDB connection string (a replica set in production); its path names the database, else the cluster name does.
    mongodb_uri: String = "mongodb://127.0.0.1:27017".into();
    /// Where the session and ack topics live: `embedded` (logs in the data dir) or `rocketmq` (cluster mode).
    topic: String = "embedded".into();
    /// RocketMQ name server(s), `host:port` (`;`-separated).
    rocketmq_namesrv: String = "127.0.0.1:9876".into();
    /// Queues of each RocketMQ topic when Herald creates it (the parallelism of its consumers).
    rocketmq_queues: u32 = 8;
    /// The RocketMQ broker cluster Herald creates its topics on.
    rocketmq_broker_cluster: String = "DefaultCluster".into();
    /// Where presence, push routing and cluster-wide limits live: `embedded` (memory) or `redis` (cluster mode).
    presence: String = "embedded".into();
    /// Redis connection URL.
    redis_url: String = "redis://127.0.0.1:6379/".into();
    /// Name shared by the nodes of one cluster: prefixes its Redis keys and RocketMQ topics and groups.
    cluster_name: String = "herald".into();
}

/// Which bundle of backends a node runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendMode {
    /// Everything in this process and its data directory.
    Embedded,
    /// MongoDB, RocketMQ and Redis, shared by every node.
    Cluster,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value {value:?} for {key}: {message}")]
    Value {
        key: String,
        value: String,
        message: String,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

fn parse_value<T: serde::de::DeserializeOwned>(key: &str, raw: &str) -> Result<T, ConfigError> {
    // Reuse TOML's scalar parsing so `10`, `true` and bare strings all work.
    let as_number_or_bool = toml::from_str::<Wrapper<T>>(&format!("v = {raw}"));
    let as_string = || toml::from_str::<Wrapper<T>>(&format!("v = {}", toml_quote(raw)));
    as_number_or_bool
        .or_else(|_| as_string())
        .map(|w| w.v)
        .map_err(|e| ConfigError::Value {
            key: key.to_string(),
            value: raw.to_string(),
            message: e.message().to_string(),
        })
}

#[derive(Deserialize)]
struct Wrapper<T> {
    v: T,
}

fn toml_quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Flag overrides of `herald serve` (the highest precedence).
#[derive(Debug, Default, Clone)]
pub struct FlagOverrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
}

impl Config {
    /// The bundle the three backend settings name together. They are set
    /// together: the cluster's consumers keep their positions in the
    /// broker and rely on MongoDB's unique indexes, its nodes find each
    /// other through Redis; the embedded topics save their positions in
    /// the embedded store.
    pub fn backend_mode(&self) -> Result<BackendMode, ConfigError> {
        match (
            self.store.as_str(),
            self.topic.as_str(),
            self.presence.as_str(),
        ) {
            ("embedded", "embedded", "embedded") => Ok(BackendMode::Embedded),
            ("mongodb", "rocketmq", "redis") => Ok(BackendMode::Cluster),
            (store, topic, presence) => Err(ConfigError::Invalid(format!(
                "store={store}, topic={topic}, presence={presence}: run either all embedded, \
                 or the cluster (store=mongodb, topic=rocketmq, presence=redis)"
            ))),
        }
    }

    /// Builds the configuration: defaults, then the file (if given or if
    /// `./herald.toml` exists), then `HERALD_*` variables, then flags.
    pub fn load(config_file: Option<&Path>, flags: &FlagOverrides) -> Result<Config, ConfigError> {
        let env = |k: &str| std::env::var(k).ok();
        Self::load_with(config_file, flags, &env)
    }

    pub fn load_with(
        config_file: Option<&Path>,
        flags: &FlagOverrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        let default_file = Path::new("herald.toml");
        let file = match config_file {
            Some(p) => Some(p.to_path_buf()),
            None if default_file.exists() => Some(default_file.to_path_buf()),
            None => None,
        };
        if let Some(path) = file {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let parsed: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.clone(),
                message: e.message().to_string(),
            })?;
            cfg.apply_file(parsed);
        }
        cfg.apply_env(env)?;
        if let Some(l) = &flags.listen {
            cfg.listen = l.clone();
        }
        if let Some(d) = &flags.data_dir {
            cfg.data_dir = d.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.ack_timeout_ms == 0 {
            return bad("ack_timeout_ms must be positive");
        }
        if self.max_content_bytes == 0 || self.max_content_bytes >= self.max_frame_bytes {
            return bad("max_content_bytes must be positive and below max_frame_bytes");
        }
        if self.node_id > 1023 {
            return bad("node_id must be 0..=1023");
        }
        if !matches!(self.durability.as_str(), "full" | "normal") {
            return bad("durability must be `full` or `normal`");
        }
        if self.send_rate_per_sec == 0 || self.send_burst == 0 {
            return bad("send_rate_per_sec and send_burst must be positive");
        }
        if self.partial_frame_bytes_per_user < self.max_frame_bytes
            || self.partial_frame_bytes_total < self.partial_frame_bytes_per_user
        {
            return bad(
                "partial_frame_bytes_per_user must hold a whole frame (max_frame_bytes) \
                 and partial_frame_bytes_total must be at least partial_frame_bytes_per_user",
            );
        }
        if self.request_header_timeout_ms == 0 || self.frame_timeout_ms == 0 {
            return bad("request_header_timeout_ms and frame_timeout_ms must be positive");
        }
        if self.login_failure_window_ms == 0 {
            return bad("login_failure_window_ms must be positive");
        }
        crate::controller::client_addr::TrustedProxies::parse(&self.trusted_proxies)
            .map_err(|e| ConfigError::Invalid(format!("trusted_proxies: {e}")))?;
        if self.connection_queue == 0 || self.commit_batch_max == 0 {
            return bad("connection_queue and commit_batch_max must be positive");
        }
        if self.rocketmq_queues == 0 || self.rocketmq_queues > 1024 {
            return bad("rocketmq_queues must be 1..=1024");
        }
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.len() <= 32
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !name_ok(&self.cluster_name) {
            return bad("cluster_name must be 1-32 of [A-Za-z0-9_-]");
        }
        self.backend_mode()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn precedence_is_flags_env_file_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("h.toml");
        std::fs::write(
            &file,
            "ack_timeout_ms = 5\nmax_redeliveries = 2\nlisten = \"1.2.3.4:1\"\n",
        )
        .unwrap();
        let env = env_of(&[
            ("HERALD_MAX_REDELIVERIES", "7"),
            ("HERALD_LISTEN", "5.6.7.8:2"),
        ]);
        let flags = FlagOverrides {
            listen: Some("9.9.9.9:3".into()),
            data_dir: None,
        };
        let cfg = Config::load_with(Some(&file), &flags, &env).unwrap();
        assert_eq!(cfg.ack_timeout_ms, 5);
        assert_eq!(cfg.max_redeliveries, 7);
        assert_eq!(cfg.listen, "9.9.9.9:3");
        assert_eq!(cfg.recall_window_ms, 120_000);
    }

    #[test]
    fn env_strings_and_bad_values() {
        let env = env_of(&[
            ("HERALD_JWT_SECRET", "s3cret with spaces"),
            ("HERALD_DURABILITY", "normal"),
        ]);
        let cfg = Config::load_with(None, &FlagOverrides::default(), &env).unwrap();
        assert_eq!(cfg.jwt_secret, "s3cret with spaces");
        assert_eq!(cfg.durability, "normal");
        let env = env_of(&[("HERALD_ACK_TIMEOUT_MS", "soon")]);
        let err = Config::load_with(None, &FlagOverrides::default(), &env).unwrap_err();
        assert!(err.to_string().contains("HERALD_ACK_TIMEOUT_MS"), "{err}");
    }

    #[test]
    fn backends_are_all_embedded_or_all_cluster() {
        let load = |pairs: &[(&str, &str)]| {
            Config::load_with(None, &FlagOverrides::default(), &env_of(pairs))
        };
        let embedded = load(&[]).unwrap();
        assert_eq!(embedded.backend_mode().unwrap(), BackendMode::Embedded);
        let cluster = load(&[
            ("HERALD_STORE", "mongodb"),
            ("HERALD_TOPIC", "rocketmq"),
            ("HERALD_PRESENCE", "redis"),
        ])
        .unwrap();
        assert_eq!(cluster.backend_mode().unwrap(), BackendMode::Cluster);
        let err = load(&[("HERALD_STORE", "mongodb")]).unwrap_err();
        assert!(err.to_string().contains("store=mongodb"), "{err}");
        assert!(load(&[("HERALD_PRESENCE", "memcached")]).is_err());
        assert!(load(&[("HERALD_CLUSTER_NAME", "a b")]).is_err());
    }

    #[test]
    fn unknown_file_key_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("h.toml");
        std::fs::write(&file, "ack_timeout = 5\n").unwrap();
        let env = env_of(&[]);
        assert!(Config::load_with(Some(&file), &FlagOverrides::default(), &env).is_err());
    }
}
