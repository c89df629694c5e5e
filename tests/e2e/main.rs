//! End-to-end tests: real sockets, a real MQTT broker (embedded, and
//! Mosquitto), real WebSocket clients. One binary, as one link step.

mod alerts;
mod auth;
mod broker;
mod browser;
mod bus;
mod cluster;
mod cluster_alerts;
mod cluster_failover;
mod cluster_fixtures;
mod cluster_redis_url;
mod cluster_stream_caps;
mod cluster_tickets;
mod haproxy;
mod helpers;
mod host_health;
mod host_health_cluster;
mod http;
mod moto;
mod node;
mod pipeline;
mod publish;
mod redis_proc;
mod slack;
mod slack_mock;
mod sse;
mod sse_client;
mod teardown;
mod tools;
mod uploads;
mod uploads_cluster;
mod uploads_fleet;
mod uploads_process;
mod uploads_s3;
mod web_units;
mod ws;
