//! End-to-end tests: real sockets, a real MQTT broker (embedded, and
//! Mosquitto), real WebSocket clients. One binary, as one link step.

mod alerts;
mod broker;
mod helpers;
mod host_health;
mod http;
mod pipeline;
mod slack;
mod slack_mock;
mod ws;
