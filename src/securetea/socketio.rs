//! The GUI's Socket.IO listener: every notification event on the bus goes
//! out as `newmessage {message}` to every connected GUI.
//!
//! It runs on its own thread (an arbiter) with its own listener, so a GUI
//! never shares a worker with the HTTP API. One bus subscriber feeds it,
//! with a bounded queue like any session; each GUI connection has its own
//! bounded buffer in the Socket.IO engine ([`SOCKET_BUFFER`]), and a GUI
//! whose buffer is full loses that message (counted as a slow-session drop)
//! while the others get it.
//!
//! It also answers the core's `GET /notifs`, which the core sends to this
//! port (the ServerApp's) by default.
//!
//! Served: Socket.IO protocol 5 over Engine.IO 4 (socket.io-client 3.x and
//! 4.x) and protocol 4 over Engine.IO 3 (socket.io-client 2.x, which the
//! SecureTea GUI used when it gained notifications), polling and WebSocket.

use std::convert::Infallible;
use std::net::{IpAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix::{Addr, Arbiter};
use actix_web::{web, ResponseError as _};
use anyhow::Context as _;
use bytes::Bytes;
use http::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, AUTHORIZATION, CONTENT_TYPE, ORIGIN,
    VARY, WWW_AUTHENTICATE,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::TokioIo;
use socketioxide::extract::SocketRef;
use socketioxide::{BroadcastError, SocketError, SocketIo};

use edgebus_actors::bus::{
    self, session_queue, Bus, Delivery, QueueLimits, SessionId, SessionInbox, Taken,
    CONTROL_RESERVE,
};
use edgebus_actors::subscription::Subscription;
use edgebus_actors::telemetry::{DropReason, Telemetry};
use edgebus_actors::topic::TopicFilter;

use super::gui_message_of;
use crate::error::ApiError;
use crate::http::securetea::{accept_notif, proxied, NotifsCall, SENT};
use crate::http::AppState;
use crate::settings::CorsOrigins;

/// Messages buffered per GUI connection before it loses them.
pub const SOCKET_BUFFER: usize = 128;

/// Connections the Socket.IO listener holds at once (GUIs and the core's
/// `/notifs` calls together).
const MAX_CONNECTIONS: usize = 1024;

/// A connection that has not sent its request head within this is closed.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed accept (out of file descriptors): retrying at once
/// would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The running listener: its port, and the thread it runs on (stopping the
/// arbiter closes the listener and every GUI connection).
pub struct SocketIoListener {
    pub port: u16,
    pub arbiter: Arbiter,
}

/// Binds `compat.securetea.socketio_bind` now, so a taken port stops the
/// start, then serves on a thread of its own.
pub fn start(state: web::Data<AppState>) -> anyhow::Result<SocketIoListener> {
    let settings = &state.settings.compat.securetea;
    let bind = settings.socketio_bind;
    let listener = TcpListener::bind(bind)
        .with_context(|| format!("`compat.securetea.socketio_bind`: cannot listen on {bind}"))?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let arbiter = Arbiter::new();
    arbiter.spawn(serve(listener, state));
    log::info!("SecureTea Socket.IO listening on {}:{port}.", bind.ip());
    Ok(SocketIoListener { port, arbiter })
}

async fn serve(listener: TcpListener, state: web::Data<AppState>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            log::error!("SecureTea Socket.IO listener: {e}");
            return;
        }
    };
    let (service, io) = SocketIo::builder()
        .max_buffer_size(SOCKET_BUFFER)
        .build_svc();
    // The GUI only listens; connecting is all it does.
    io.ns("/", async |_: SocketRef| {});
    let capacity = state.settings.bus.queue_capacity;
    // Joined before the first GUI can connect: a GUI that is connected
    // gets every notification published after it.
    let Some(subscriber) = join(&state.bus, state.queues.base()) else {
        return;
    };
    tokio::spawn(relay(
        io,
        state.bus.clone(),
        subscriber,
        state.telemetry.clone(),
        capacity,
    ));
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                log::warn!("SecureTea Socket.IO listener: accept failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // Past the cap a connection is closed at once: file descriptors are
        // shared with the HTTP listener and the broker.
        let Ok(place) = connections.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let service = service.clone();
        let state = state.clone();
        // Local: the core's `/notifs` goes through the publish path, whose
        // futures stay on the thread that polls them.
        actix_web::rt::spawn(async move {
            let per_request = hyper::service::service_fn(move |req: Request<Incoming>| {
                let service = service.clone();
                let state = state.clone();
                async move {
                    let origin = req
                        .headers()
                        .get(ORIGIN)
                        .and_then(|o| o.to_str().ok())
                        .map(str::to_owned);
                    let origins = &state.settings.compat.securetea.socketio_cors_origins;
                    match cors(origin.as_deref(), req.method(), origins) {
                        Cors::Refuse => {
                            return Ok(error(StatusCode::FORBIDDEN, "origin not allowed"));
                        }
                        Cors::Preflight => {
                            let mut resp =
                                reply(StatusCode::NO_CONTENT, "text/plain", String::new());
                            allow(&mut resp, origin.as_deref());
                            let h = resp.headers_mut();
                            h.insert(
                                ACCESS_CONTROL_ALLOW_METHODS,
                                HeaderValue::from_static("GET, POST, OPTIONS"),
                            );
                            h.insert(
                                ACCESS_CONTROL_ALLOW_HEADERS,
                                HeaderValue::from_static("content-type"),
                            );
                            return Ok(resp);
                        }
                        Cors::Pass => {}
                    }
                    let mut resp = if req.uri().path() == "/notifs" && req.method() == Method::GET {
                        notifs(&state, peer.ip(), &req).await
                    } else {
                        service.call(req).await?.map(Either::Left)
                    };
                    allow(&mut resp, origin.as_deref());
                    Ok::<_, Infallible>(resp)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), per_request)
                .with_upgrades();
            if let Err(e) = conn.await {
                log::debug!("SecureTea Socket.IO connection: {e}");
            }
            drop(place);
        });
    }
}

/// The core's call on the port it calls by default, answered as on the
/// HTTP listener.
async fn notifs<L>(
    state: &AppState,
    peer: IpAddr,
    req: &Request<Incoming>,
) -> Response<Either<L, Full<Bytes>>> {
    let headers = req.headers();
    let call = NotifsCall {
        peer: Some(peer),
        authorization: headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()),
        fetch_site: headers.get("sec-fetch-site").map(|v| v.as_bytes()),
        proxied: proxied(|h| headers.contains_key(h)),
        query: req.uri().query().unwrap_or(""),
    };
    match accept_notif(state, call).await {
        Ok(()) => reply(StatusCode::OK, "text/html; charset=utf-8", SENT.to_owned()),
        Err(e) => {
            let status = StatusCode::from_u16(e.status_code().as_u16())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let text = match e {
                ApiError::Internal(cause) => {
                    log::error!("SecureTea /notifs failed: {cause:#}.");
                    "internal error".to_owned()
                }
                e => e.to_string(),
            };
            let mut resp = error(status, &text);
            if status == StatusCode::UNAUTHORIZED {
                resp.headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            resp
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Cors {
    Pass,
    Preflight,
    Refuse,
}

/// A browser's request from an origin not allowed is refused outright, the
/// WebSocket upgrade too (browsers do not apply CORS to WebSockets, and the
/// stream carries no credentials to protect it). Non-browser clients send
/// no `Origin` and pass.
fn cors(origin: Option<&str>, method: &Method, origins: &CorsOrigins) -> Cors {
    match origin {
        Some(o) if !origins.allows(o) => Cors::Refuse,
        Some(_) if method == Method::OPTIONS => Cors::Preflight,
        _ => Cors::Pass,
    }
}

fn allow<B>(resp: &mut Response<B>, origin: Option<&str>) {
    let Some(value) = origin.and_then(|o| HeaderValue::from_str(o).ok()) else {
        return;
    };
    let h = resp.headers_mut();
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, value);
    // socket.io-client 2.x polls with credentials by default.
    h.insert(
        ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    h.insert(VARY, HeaderValue::from_static("Origin"));
}

fn reply<L>(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Either<L, Full<Bytes>>> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// edgebus's error body, `{"error": "…"}`.
fn error<L>(status: StatusCode, text: &str) -> Response<Either<L, Full<Bytes>>> {
    let body = serde_json::json!({ "error": text }).to_string();
    reply(status, "application/json", body)
}

/// Subscribes to `notifications/#` as a session does.
fn join(bus: &Addr<Bus>, limits: QueueLimits) -> Option<(SessionId, SessionInbox)> {
    let filter = TopicFilter::parse("notifications/#").ok()?;
    let session = SessionId::next();
    let (queue, inbox) = session_queue(limits);
    bus.do_send(bus::Join {
        session,
        queue,
        subscriptions: vec![Subscription::topic(filter)],
        resume: None,
    });
    Some((session, inbox))
}

/// Emits each notification to every GUI. The snapshot (last values from
/// before the GUI connected) is not sent: the GUI shows toasts, and old
/// ones would pop up at every start.
async fn relay(
    io: SocketIo,
    bus: Addr<Bus>,
    (session, mut inbox): (SessionId, SessionInbox),
    telemetry: Arc<Telemetry>,
    capacity: usize,
) {
    let mut batch = Vec::new();
    loop {
        let resume = || bus.do_send(bus::Resume { session });
        if let Taken::Closed = inbox
            .take_resuming(&mut batch, capacity + CONTROL_RESERVE, resume)
            .await
        {
            return;
        }
        for item in batch.drain(..) {
            match item {
                Delivery::Event(event) => {
                    if let Some(message) = gui_message_of(&event.envelope) {
                        emit(&io, message, &telemetry).await;
                    }
                }
                Delivery::Close => {
                    io.disconnect().await.ok();
                    return;
                }
                _ => {}
            }
        }
    }
}

async fn emit(io: &SocketIo, message: String, telemetry: &Telemetry) {
    let data = serde_json::json!({ "message": message });
    match io.emit("newmessage", &data).await {
        Ok(()) => {}
        // Only the GUIs whose buffer was full miss it; the others have it.
        Err(BroadcastError::Socket(errors)) => {
            let full = errors
                .iter()
                .filter(|e| matches!(e, SocketError::InternalChannelFull))
                .count();
            telemetry.events_dropped(DropReason::SlowSession, full as u64);
        }
        Err(e) => log::warn!("SecureTea Socket.IO: cannot emit: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_from_other_origins_are_refused_and_others_pass() {
        let list = CorsOrigins::List(vec!["http://gui.example:4200".into()]);
        let get = Method::GET;
        assert_eq!(cors(None, &get, &list), Cors::Pass);
        assert_eq!(
            cors(Some("http://gui.example:4200"), &get, &list),
            Cors::Pass
        );
        assert_eq!(cors(Some("http://evil.example"), &get, &list), Cors::Refuse);
        assert_eq!(
            cors(Some("http://gui.example:4200"), &Method::OPTIONS, &list),
            Cors::Preflight
        );
        assert_eq!(
            cors(Some("http://any"), &get, &CorsOrigins::Any),
            Cors::Pass
        );
        assert_eq!(
            cors(Some("http://any"), &get, &CorsOrigins::List(vec![])),
            Cors::Refuse
        );
    }
}
