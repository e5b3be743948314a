//! Herald: an instant-messaging server speaking STOMP 1.2 over WebSocket and
//! an OpenAPI REST API, built on the inbox model.
//!
//! Layers talk downward only: `controller` -> `service` -> backend traits
//! (implemented by `embedded` and `cluster`); `consumer` drives services
//! from topics.

// The RocketMQ client's futures are deeply nested: spawning one needs more
// than the default recursion limit to prove it `Send`.
#![recursion_limit = "256"]

pub mod app;
pub mod cluster;
pub mod config;
pub mod consumer;
pub mod controller;
pub mod embedded;
pub mod error;
pub mod model;
pub mod service;
pub mod stomp;
pub mod sys;
pub mod telemetry;
