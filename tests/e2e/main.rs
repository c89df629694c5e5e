//! End-to-end tests: real sockets, a real MQTT broker (embedded, and
//! Mosquitto), real WebSocket clients. One binary, as one link step.

mod broker;
mod browser;
mod helpers;
mod http;
mod pipeline;
mod ws;
