//! End-to-end tests: real sockets, a real MQTT broker (embedded, and
//! Mosquitto), real WebSocket clients. One binary, as one link step.

mod alerts;
mod auth;
mod broker;
mod browser;
mod bus;
mod helpers;
mod host_health;
mod host_health_cluster;
mod http;
mod pipeline;
mod publish;
mod redis_server;
mod slack;
mod slack_mock;
mod sse;
mod sse_client;
mod teardown;
mod web_units;
mod ws;
