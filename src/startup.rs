//! Wiring: resolves the broker (embedded or external), starts the actors on
//! their own threads, binds the HTTP server, and shuts everything down in
//! order on SIGTERM/SIGINT (or at once, for tests: [`AppHandle::stop_now`]).

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr, Arbiter, ArbiterHandle, AsyncContext};
use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::Logger;
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;

use edgebus_actors::alerts::{
    self, Alerts, AlertsConfig, Clock, Journal, SystemClock, DEFAULT_JOURNAL_MAX_BYTES,
};
use edgebus_actors::bus::{self, Bus, BusConfig};
use edgebus_actors::cluster::{
    leader, voice, ClusterHealth, Leadership, Recovery, StreamReader, StreamWriter, Voice,
};
use edgebus_actors::ingest::nats::{NatsIngest, NatsStop};
use edgebus_actors::ingest::{self, Ingest, LocalLink};
use edgebus_actors::registry::{Registry, RegistryConfig};
use edgebus_actors::slack::{self, Slack};
use edgebus_actors::telemetry::Telemetry;

use crate::auth::Auth;
use crate::broker;
use crate::cluster_store::idempotency::SharedIdempotency;
use crate::cluster_store::tickets::SharedTickets;
use crate::host_health::{FileStore, HostHealthLimits, HostHealthStore, RedisStore};
use crate::http::idempotency::IdempotencyStore;
use crate::http::{self, AppState};
use crate::settings::{MqttMode, Settings};
use crate::stream_slots::ClusterStreamSlots;
use crate::wiring;

/// How long in-flight HTTP requests get at shutdown.
const HTTP_SHUTDOWN: Duration = Duration::from_secs(5);

/// Where ingest connects, and whether edgebus runs that broker itself.
#[derive(Debug, Clone)]
pub struct MqttEndpoint {
    pub host: String,
    pub port: u16,
    pub embedded: bool,
}

pub struct Application {
    port: u16,
    /// The SecureTea Socket.IO listener's port, when `[compat.securetea]` is on.
    socketio_port: Option<u16>,
    /// The EdgeWatch dashboards' listener's port, when `[compat.edgewatch]` is on.
    edgewatch_port: Option<u16>,
    mqtt: MqttEndpoint,
    server: Server,
    handle: AppHandle,
}

/// Cloneable control of a running application.
#[derive(Clone)]
pub struct AppHandle {
    server: ServerHandle,
    /// The EdgeWatch dashboards' listener (`[compat.edgewatch]`).
    edgewatch: Option<ServerHandle>,
    bus: Addr<Bus>,
    ingest: Addr<Ingest>,
    nats: Option<Addr<NatsIngest>>,
    alerts: Addr<Alerts>,
    slack: Option<Addr<Slack>>,
    slack_flush: Duration,
    telemetry: Arc<Telemetry>,
    arbiters: Vec<ArbiterHandle>,
    /// The embedded broker's listener, when edgebus runs the broker.
    broker: Option<Arc<broker::Listener>>,
}

impl Application {
    /// Starts everything; must run inside an actix `System`.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with_clock(settings, Arc::new(SystemClock)).await
    }

    /// Like [`Application::build`], with the alert rules' clock injected
    /// (tests move it an hour forward instead of waiting).
    pub async fn build_with_clock(
        settings: Settings,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        let settings = Arc::new(settings);
        for warning in &settings.warnings {
            log::warn!("{warning}");
        }
        let telemetry = Arc::new(Telemetry::new());
        let (mqtt, embedded) = resolve_broker(&settings, &telemetry)?;
        let (link, broker) = embedded.map_or((None, None), |(link, listener)| {
            (Some(link), Some(Arc::new(listener)))
        });
        let ingest_config = wiring::ingest_config(&settings, &mqtt)?;
        let nats_config = wiring::nats_config(&settings);

        // The bus and registry share one thread; ingest (MQTT polling and
        // validation) gets its own, so parsing runs beside fan-out. Alert
        // evaluation and Slack delivery get a third: nothing on the ingest
        // path waits for them.
        let core = Arbiter::new();
        let ingest_thread = Arbiter::new();
        let alerts_thread = Arbiter::new();
        // Cluster mode: the stream's writer, reader and recovery (Redis I/O).
        let cluster_thread = Arbiter::new();
        let cluster = wiring::cluster_config(&settings).map(|config| {
            log::info!(
                "Cluster mode: instance `{}`, stream `{}` on Redis.",
                config.instance_id,
                config.stream_key
            );
            let health = ClusterHealth::new(config.instance_id.clone(), config.max_reader_lag);
            let writer = StreamWriter::start(
                &cluster_thread.handle(),
                config.clone(),
                health.clone(),
                telemetry.clone(),
            );
            let leadership = Arc::new(Leadership::default());
            leader::start(
                &cluster_thread.handle(),
                config.clone(),
                leadership.clone(),
                health.clone(),
                telemetry.clone(),
            );
            (config, health, writer, leadership)
        });

        let (config, t) = (BusConfig::from(&*settings), telemetry.clone());
        let recovery_setup = cluster.as_ref().map(|(config, health, _, _)| {
            (
                config.clone(),
                health.clone(),
                telemetry.clone(),
                cluster_thread.handle(),
            )
        });
        let bus = Bus::start_in_arbiter(&core.handle(), move |ctx| {
            let bus = Bus::new(config, t);
            match recovery_setup {
                Some((config, health, t, thread)) => {
                    let me = ctx.address().recipient();
                    let recovery = Recovery::start_in_arbiter(&thread, move |_| {
                        Recovery::new(config, me, health, t)
                    });
                    bus.stream_fed(recovery.recipient())
                }
                None => bus,
            }
        });

        let config = RegistryConfig::from(&settings.registry);
        let (t, b, stream_bus) = (
            telemetry.clone(),
            bus.clone().recipient(),
            cluster.is_some().then(|| bus.clone()),
        );
        let registry = Registry::start_in_arbiter(&core.handle(), move |_| {
            let registry = Registry::new(config, b, t);
            match &stream_bus {
                Some(bus) => registry.stream_fed(bus),
                None => registry,
            }
        });

        let slack_config = wiring::slack_config(&settings.slack)?;
        // Cluster mode: alerts, presence and digests are claimed in Redis
        // by whichever instance asks first, and Slack messages wait in a
        // shared outbox there.
        let voice = cluster.as_ref().map(|(config, health, _, _)| {
            let limits = slack_config.as_ref().map(|c| voice::OutboxBounds {
                alerts: c.outbox_capacity,
                digests: c.digest_outbox_capacity,
            });
            Voice::start(
                &cluster_thread.handle(),
                config.clone(),
                limits,
                health.clone(),
                telemetry.clone(),
            )
        });
        let slack = match slack_config {
            Some(config) => {
                let (t, r) = (telemetry.clone(), registry.clone().recipient());
                let shared =
                    cluster
                        .as_ref()
                        .map(|(config, health, _, leadership)| slack::SharedOutbox {
                            config: config.clone(),
                            leadership: leadership.clone(),
                            health: health.clone(),
                        });
                Some(Slack::start_in_arbiter(
                    &alerts_thread.handle(),
                    move |_| {
                        let slack = Slack::new(config, Some(r), t);
                        match shared {
                            Some(shared) => slack.with_shared_outbox(shared),
                            None => slack,
                        }
                    },
                ))
            }
            None => {
                log::info!(
                    "Slack is off (`slack.webhook_url` is empty); alerts go to the bus only."
                );
                None
            }
        };

        let (config, t, b, c) = (
            AlertsConfig::from(&*settings),
            telemetry.clone(),
            bus.clone(),
            clock.clone(),
        );
        let s = slack.as_ref().map(|s| s.clone().recipient());
        // The writer thread ends when the actor (holding the journal) goes.
        let (journal, _writer) = Journal::open(
            Path::new(&settings.storage.data_dir),
            DEFAULT_JOURNAL_MAX_BYTES,
            telemetry.clone(),
        )
        .context("cannot start the alerts.jsonl writer")?;
        let alerts = Alerts::start_in_arbiter(&alerts_thread.handle(), move |_| {
            let alerts = Alerts::new(config, b, s, t, c).with_journal(journal);
            match voice {
                Some(voice) => alerts.stream_fed(voice),
                None => alerts,
            }
        });
        // Subscribed to the bus before ingest starts: no frame goes unseen.
        alerts
            .send(alerts::Stats)
            .await
            .context("the alerts actor did not start")?;

        let (t, r, b) = (
            telemetry.clone(),
            registry.clone().recipient(),
            bus.clone().recipient(),
        );
        // Cluster mode: the reader feeds the registry from the stream, from
        // now on (the alerts are subscribed), before ingest appends anything.
        if let Some((config, health, _, _)) = &cluster {
            StreamReader::start(
                &cluster_thread.handle(),
                config.clone(),
                registry.clone().recipient(),
                health.clone(),
                telemetry.clone(),
            );
        }
        // The NATS source shares ingest's thread: parsing stays off the bus's.
        let nats = nats_config.map(|config| {
            let (t, r, b) = (
                telemetry.clone(),
                registry.clone().recipient(),
                bus.clone().recipient(),
            );
            let w = cluster.as_ref().map(|(_, _, writer, _)| writer.clone());
            NatsIngest::start_in_arbiter(&ingest_thread.handle(), move |_| {
                let nats = NatsIngest::new(config, r, b, t);
                match w {
                    Some(writer) => nats.stream_fed(writer),
                    None => nats,
                }
            })
        });
        let w = cluster.as_ref().map(|(_, _, writer, _)| writer.clone());
        let ingest = Ingest::start_in_arbiter(&ingest_thread.handle(), move |_| {
            let mut ingest = Ingest::new(ingest_config, r, b, t);
            if let Some(link) = link {
                ingest = ingest.with_link(link);
            }
            if let Some(writer) = w {
                ingest = ingest.stream_fed(writer);
            }
            ingest
        });

        let bind = settings.http.bind;
        let listener = TcpListener::bind(bind)
            .with_context(|| format!("`http.bind`: cannot listen on {bind}"))?;
        let port = listener.local_addr()?.port();
        let mut auth = Auth::new(&settings, clock.clone());
        // Cluster mode: tickets and Idempotency-Keys hold across instances.
        let idempotency = match &settings.cluster {
            Some(cluster) => {
                let link = crate::cluster_store::Link::new(
                    cluster.redis_url.expose(),
                    telemetry.clone(),
                    "cluster_store",
                );
                auth.shared_tickets = Some(SharedTickets::new(
                    cluster,
                    &settings.sessions,
                    link.clone(),
                ));
                IdempotencyStore::Shared(Arc::new(SharedIdempotency::new(
                    cluster,
                    &settings.http,
                    link,
                )))
            }
            None => IdempotencyStore::Local(Arc::new(http::idempotency::Idempotency::new(
                &settings.http,
                clock,
            ))),
        };
        let auth = Arc::new(auth);
        if auth.is_open() {
            log::warn!(
                "OPEN DEV MODE: no auth.api_keys are configured, so anyone who can reach {bind} may \
                 read every stream and publish. Configure API keys before exposing edgebus."
            );
        }
        if let Some(jwt) = &settings.auth.jwt {
            log::info!(
                "JWTs accepted beside API keys: alg {:?}, issuer {:?}, audience {:?}.",
                jwt.algorithms,
                jwt.issuer,
                jwt.audience
            );
            if jwt.allow_query_token_on_streams {
                log::warn!(
                    "auth.jwt.allow_query_token_on_streams is on: a JWT in `?token=` opens SSE \
                     streams, and every proxy or server log that keeps URLs keeps it. Move \
                     clients to POST /v1/auth/ticket and `?ticket=`."
                );
            }
        }
        if auth.mode() == crate::auth::Mode::Legacy {
            log::info!(
                "Legacy token mode: auth.ws_token guards every stream and API call \
                 (`?token=` on streams, `Authorization: Bearer` elsewhere)."
            );
        }
        let limits = HostHealthLimits::from(&settings.host_health);
        let host_health = match &settings.cluster {
            // Every instance stores into and lists the same reports.
            Some(cluster) => HostHealthStore::Redis(RedisStore::new(
                cluster.redis_url.expose(),
                cluster.key("host-health"),
                limits,
                telemetry.clone(),
            )),
            None => HostHealthStore::Files(Arc::new(
                FileStore::open(&settings.storage.data_dir, limits)
                    .context("`storage.data_dir`: cannot read the host-health reports")?,
            )),
        };
        let uploads = if settings.uploads.enabled {
            Some(Arc::new(
                crate::uploads::Uploads::open(&settings, telemetry.registry())
                    .await
                    .context("`uploads`: cannot open the upload store")?,
            ))
        } else {
            None
        };
        let gate = &settings.uploads.version_gate;
        let version_gate = if settings.uploads.enabled && gate.enabled {
            Some(Arc::new(
                crate::uploads::gate::VersionGate::new(gate)
                    .context("`uploads.version_gate`: cannot read the allowed commits")?,
            ))
        } else {
            None
        };
        let state = web::Data::new(AppState {
            uploads,
            version_gate,
            bus: bus.clone(),
            registry,
            ingest: ingest.clone(),
            nats: nats.clone(),
            telemetry: telemetry.clone(),
            settings: settings.clone(),
            queues: crate::wiring::queue_budget(&settings),
            auth,
            idempotency,
            host_health: Arc::new(host_health),
            cluster: cluster.zip(settings.cluster.as_ref()).map(
                |((_, health, writer, _), settings_cluster)| http::ClusterState {
                    writer,
                    health,
                    streams: ClusterStreamSlots::start(
                        &cluster_thread.handle(),
                        settings_cluster,
                        settings.sessions.max_streams_per_identity,
                        telemetry.clone(),
                    ),
                },
            ),
        });
        let socketio = if settings.compat.securetea.enabled {
            Some(crate::securetea::socketio::start(state.clone())?)
        } else {
            None
        };
        let edgewatch = if settings.compat.edgewatch.enabled {
            let rules = wiring::frame_rules(&settings);
            if rules.lax {
                log::info!(
                    "EdgeWatch lax frames: numbers as strings, whole floats and booleans are \
                     coerced as the bridge's model did (edgebus_frames_coerced_total)."
                );
            }
            if rules.device_id_from_payload {
                log::warn!(
                    "EdgeWatch device_id_from_payload is on: a frame's device_id decides its \
                     device whatever its topic, so any publisher can speak for any device."
                );
            }
            Some(crate::edgewatch::start(state.clone())?)
        } else {
            None
        };
        let unacked_timeout = settings.sessions.write_timeout.saturating_mul(2);
        let cors_settings = settings.clone();
        let server = HttpServer::new(move || {
            App::new()
                .wrap(http::cors::cors(&cors_settings))
                .wrap(access_log())
                .app_data(state.clone())
                .configure(http::configure)
        })
        .workers(settings.http.worker_count())
        // A client's EOF ends its connection at once, so a closed SSE stream
        // frees its session and its identity's slot now, not at the next
        // keepalive write. (Clients that half-close after a request and then
        // wait for the answer are not supported; browsers never do.)
        .h1_allow_half_closed(false)
        .on_connect(http::unacked_timeout(unacked_timeout))
        .disable_signals()
        .shutdown_timeout(HTTP_SHUTDOWN.as_secs())
        .listen(listener)?
        .run();
        log::info!(
            "HTTP listening on http://{}:{port}.",
            settings.http.bind_host()
        );

        let handle = AppHandle {
            server: server.handle(),
            edgewatch: edgewatch.as_ref().map(|e| e.server.clone()),
            bus,
            ingest,
            nats,
            alerts,
            slack,
            slack_flush: settings.slack.shutdown_flush,
            telemetry,
            arbiters: [
                core.handle(),
                ingest_thread.handle(),
                alerts_thread.handle(),
                cluster_thread.handle(),
            ]
            .into_iter()
            .chain(socketio.as_ref().map(|s| s.arbiter.handle()))
            .collect(),
            broker,
        };
        Ok(Self {
            port,
            socketio_port: socketio.map(|s| s.port),
            edgewatch_port: edgewatch.map(|e| e.port),
            mqtt,
            server,
            handle,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The SecureTea Socket.IO listener's port (`compat.securetea.enabled`).
    pub fn socketio_port(&self) -> Option<u16> {
        self.socketio_port
    }

    /// The EdgeWatch dashboards' listener's port (`compat.edgewatch.enabled`).
    pub fn edgewatch_port(&self) -> Option<u16> {
        self.edgewatch_port
    }

    pub fn mqtt(&self) -> &MqttEndpoint {
        &self.mqtt
    }

    pub fn handle(&self) -> AppHandle {
        self.handle.clone()
    }

    /// Serves until SIGTERM/SIGINT (then shuts down in order) or until the
    /// server is stopped through an [`AppHandle`].
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let handle = self.handle.clone();
        let mut server = actix_web::rt::spawn(self.server);
        tokio::select! {
            signal = shutdown_signal() => {
                log::info!("Received {signal}; shutting down.");
                handle.shutdown().await;
                server.await??;
            }
            result = &mut server => result??,
        }
        log::info!("edgebus stopped.");
        Ok(())
    }
}

impl AppHandle {
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    pub fn bus(&self) -> &Addr<Bus> {
        &self.bus
    }

    pub fn alerts(&self) -> &Addr<Alerts> {
        &self.alerts
    }

    /// Stop accepting, disconnect from MQTT, close every session with a
    /// close frame, let in-flight requests finish while Slack delivers what
    /// it can within `slack.shutdown_flush_seconds`, stop the actor threads,
    /// and last close the embedded broker's listener and device connections.
    pub async fn shutdown(&self) {
        self.server.pause().await;
        if let Some(edgewatch) = &self.edgewatch {
            edgewatch.pause().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.ingest.send(ingest::Stop)).await;
        if let Some(nats) = &self.nats {
            let _ = tokio::time::timeout(Duration::from_secs(5), nats.send(NatsStop)).await;
        }
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_secs(2), self.bus.send(bus::Shutdown)).await
        {
            log::info!("Closed {n} streaming session(s).");
        }
        let flush = async {
            let Some(slack) = &self.slack else {
                return;
            };
            let deadline = self.slack_flush;
            let drain = slack.send(slack::Drain { deadline });
            match tokio::time::timeout(deadline + Duration::from_secs(1), drain).await {
                Ok(Ok(report)) => log::info!(
                    "Slack: {} message(s) delivered in this run, {} left undelivered at shutdown.",
                    report.sent,
                    report.dropped
                ),
                _ => log::warn!("Slack did not report before the shutdown deadline."),
            }
        };
        let edgewatch = async {
            if let Some(edgewatch) = &self.edgewatch {
                edgewatch.stop(true).await;
            }
        };
        tokio::join!(self.server.stop(true), edgewatch, flush);
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
        if let Some(broker) = &self.broker {
            broker.stop();
        }
    }

    /// Stops everything at once, without [`AppHandle::shutdown`]'s order:
    /// no close frames, no Slack flush, in-flight requests are cut. What a
    /// test's teardown needs: it is synchronous (a `Drop` may call it), and
    /// when it returns the HTTP server, every actor thread and the embedded
    /// broker's listener have been told to stop; their threads end moments
    /// later. Calling it again, or after `shutdown`, does nothing more.
    pub fn stop_now(&self) {
        // Sent at once; the server's own task does the rest, or its `Drop`
        // when the runtime that polls it ends first.
        drop(self.server.stop(false));
        if let Some(edgewatch) = &self.edgewatch {
            drop(edgewatch.stop(false));
        }
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
        if let Some(broker) = &self.broker {
            broker.stop();
        }
    }
}

/// The broker to use and, when edgebus embeds it, the local link ingest
/// reads it through and the broker's listener.
fn resolve_broker(
    settings: &Settings,
    telemetry: &Arc<Telemetry>,
) -> anyhow::Result<(MqttEndpoint, Option<(LocalLink, broker::Listener)>)> {
    let url = &settings.mqtt.url;
    let embed = match settings.mqtt.mode {
        MqttMode::External => false,
        MqttMode::Embedded => true,
        MqttMode::Auto => {
            let addr = broker::resolve(&url.host, url.port)?;
            let found = broker::answers(addr);
            if found {
                log::info!("Found an MQTT broker at {addr}; using it (mqtt.mode = auto).");
            }
            !found
        }
    };
    let embedded = if embed {
        let addr = broker::resolve(&url.host, url.port)?;
        Some(broker::start_embedded(&broker::Embedded::from_settings(
            settings,
            addr,
            telemetry.clone(),
        ))?)
    } else {
        None
    };
    let endpoint = MqttEndpoint {
        host: url.host.clone(),
        port: url.port,
        embedded: embed,
    };
    Ok((endpoint, embedded))
}

/// Access log without query strings: tickets and tokens travel there and
/// must never reach a log line.
fn access_log() -> Logger {
    Logger::new("%{request}xi %s %b %Dms %a")
        .custom_request_replace("request", |req| format!("{} {}", req.method(), req.path()))
}

async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
