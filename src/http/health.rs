//! `/healthz` (liveness: the process answers; also served as `/v1/health`,
//! the CIS490 receiver's path) and `/readyz` (readiness: MQTT subscribed and
//! the actors answering), for load balancers.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

use edgebus_actors::ingest::nats::NatsStatus;
use edgebus_actors::ingest::{ConnectionState, Status};

use super::AppState;

/// An actor that does not answer within this is as good as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let mqtt = match tokio::time::timeout(PROBE_TIMEOUT, state.ingest.send(Status)).await {
        Ok(Ok(state)) => state,
        _ => ConnectionState::Stopped,
    };
    let bus_ok = tokio::time::timeout(PROBE_TIMEOUT, state.bus.send(edgebus_actors::bus::Stats))
        .await
        .is_ok_and(|r| r.is_ok());
    let mut body =
        json!({ "mqtt": state_text(mqtt), "bus": if bus_ok { "ok" } else { "unresponsive" } });
    // The NATS source, when configured, is needed as much as MQTT.
    let nats_ok = match &state.nats {
        None => true,
        Some(nats) => {
            let nats = match tokio::time::timeout(PROBE_TIMEOUT, nats.send(NatsStatus)).await {
                Ok(Ok(state)) => state,
                _ => ConnectionState::Stopped,
            };
            if let Value::Object(map) = &mut body {
                map.insert("nats".into(), state_text(nats).into());
            }
            nats == ConnectionState::Subscribed
        }
    };
    // Cluster mode: Redis must answer and the stream reader keep up.
    let cluster_problem = state.cluster.as_ref().and_then(|c| {
        let problem = c.health.not_ready();
        if let Value::Object(map) = &mut body {
            map.insert("instance_id".into(), c.health.instance_id.clone().into());
            map.insert(
                "cluster".into(),
                problem.clone().unwrap_or_else(|| "ok".into()).into(),
            );
        }
        problem
    });
    if mqtt == ConnectionState::Subscribed && nats_ok && bus_ok && cluster_problem.is_none() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

fn state_text(state: ConnectionState) -> &'static str {
    match state {
        ConnectionState::Subscribed => "subscribed",
        ConnectionState::Connected => "subscribing",
        ConnectionState::Connecting => "connecting",
        ConnectionState::Disconnected => "disconnected",
        ConnectionState::Stopped => "stopped",
    }
}
