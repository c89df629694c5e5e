//! From settings to each component's config: one translation per config,
//! so startup only starts things and wires them together.

use std::sync::Arc;

use anyhow::Context as _;

use edgebus_actors::alerts::AlertsConfig;
use edgebus_actors::bus::{BusConfig, QueueBudget, QueueLimits, QueuePool};
use edgebus_actors::cluster::ClusterConfig;
use edgebus_actors::frame::FrameRules;
use edgebus_actors::ingest::nats::{NatsAuth, NatsConfig};
use edgebus_actors::ingest::subject::SubjectMap;
use edgebus_actors::ingest::tls::{client_config, TlsFiles};
use edgebus_actors::ingest::IngestConfig;
use edgebus_actors::registry::RegistryConfig;
use edgebus_actors::session::{OpLimits, SseForm, SseSessionConfig, WireFormat, WsSessionConfig};
use edgebus_actors::slack::SlackConfig;

use crate::host_health::HostHealthLimits;
use crate::settings::{HostHealthSettings, NatsLogin, RegistrySettings, Settings, SlackSettings};
use crate::startup::MqttEndpoint;

impl From<&Settings> for BusConfig {
    fn from(settings: &Settings) -> Self {
        let b = &settings.bus;
        Self {
            queue_capacity: b.queue_capacity,
            history: b.history,
            history_bytes: b.history_bytes,
            last_values_bytes: b.last_values_bytes,
            snapshot_max_events: b.snapshot_max_events,
            metrics_snapshot_window: settings.registry.active_window,
        }
    }
}

impl From<&RegistrySettings> for RegistryConfig {
    fn from(r: &RegistrySettings) -> Self {
        Self {
            max_devices: r.max_devices,
            active_window: r.active_window,
        }
    }
}

impl From<&Settings> for AlertsConfig {
    fn from(settings: &Settings) -> Self {
        let (a, r) = (&settings.alerts, &settings.registry);
        Self {
            rules: a.rules.clone(),
            offline_after: r.active_window,
            silent_after: r.silent_after,
            rejecting_window: a.rejecting_window,
            digest_window: a.digest_window,
            max_digests_per_window: a.max_digests_per_window,
            max_devices: r.max_devices,
            uploads_silent_after: settings.uploads.silent_after,
            uploads_fatal_window: settings.uploads.fatal_window,
            max_upload_hosts: settings.uploads.max_hosts,
        }
    }
}

impl From<&HostHealthSettings> for HostHealthLimits {
    fn from(h: &HostHealthSettings) -> Self {
        Self {
            max_hosts: h.max_hosts,
            max_concurrent_lists: h.max_concurrent_lists,
        }
    }
}

/// The Slack actor's config, or `None` when `slack.webhook_url` is empty.
/// Fails only if TLS for an `https://` webhook cannot be set up.
pub fn slack_config(s: &SlackSettings) -> anyhow::Result<Option<SlackConfig>> {
    let Some((url, https)) = s.webhook() else {
        return Ok(None);
    };
    let tls = if https {
        Some(
            client_config(&TlsFiles::default())
                .context("`slack.webhook_url`: cannot set up TLS for the webhook")?,
        )
    } else {
        log::warn!("`slack.webhook_url` is plain http://: alerts travel unencrypted.");
        None
    };
    Ok(Some(SlackConfig {
        webhook_url: url.to_owned(),
        tls,
        timeout: s.timeout,
        outbox_capacity: s.outbox_capacity,
        digest_outbox_capacity: s.digest_outbox_capacity,
        pace: s.pace,
        retry_min: s.retry_min,
        retry_max: s.retry_max,
        summary_interval: s.summary_interval,
    }))
}

/// Ingest's config for the broker resolved at start. Fails only if the
/// `mqtts://` TLS files cannot be read.
pub fn ingest_config(settings: &Settings, broker: &MqttEndpoint) -> anyhow::Result<IngestConfig> {
    let m = &settings.mqtt;
    let tls = if m.url.tls {
        let files = TlsFiles {
            ca_cert: m.ca_cert.clone(),
            client_cert: m.client_cert.clone(),
            client_key: m.client_key.clone(),
        };
        Some(client_config(&files)?)
    } else {
        None
    };
    // Cluster mode: each instance is one member of a shared subscription
    // (the broker hands each frame to one of them), under its own client id.
    let (topics, client_id) = match &settings.cluster {
        Some(c) => (
            m.topic_strings()
                .into_iter()
                .map(|t| format!("$share/{}/{t}", c.group))
                .collect(),
            format!("{}-{}", m.client_id, c.instance_id),
        ),
        None => (m.topic_strings(), m.client_id.clone()),
    };
    Ok(IngestConfig {
        host: broker.host.clone(),
        port: broker.port,
        tls,
        client_id,
        credentials: (!m.username.is_empty())
            .then(|| (m.username.clone(), m.password.expose().to_owned())),
        topics,
        backoff_min: m.backoff_min,
        backoff_max: m.backoff_max,
        max_payload_bytes: m.max_payload_bytes,
        keep_alive: m.keep_alive,
        // The embedded broker keeps nothing across our restart anyway. In
        // cluster mode a persistent member of a shared subscription that
        // never returns (a new instance id after every restart) would keep
        // receiving its share of the frames, queued for nobody: clean
        // sessions only.
        persistent_session: m.persistent_session && !broker.embedded && settings.cluster.is_none(),
        inflight_bytes: settings.bus.inflight_bytes,
        frame_rules: frame_rules(settings),
    })
}

/// The metrics frame rules MQTT ingest applies: strict, unless
/// `[compat.edgewatch]` is on and loosens them for the bridge's publishers.
pub fn frame_rules(settings: &Settings) -> FrameRules {
    let ew = &settings.compat.edgewatch;
    FrameRules {
        lax: ew.enabled && ew.lax_frames,
        device_id_from_payload: ew.enabled && ew.device_id_from_payload,
    }
}

/// Every session queue's bounds, with the one pool they share and an
/// allowance per owner of `bus.queue_bytes` from it: built once at start.
pub fn queue_budget(settings: &Settings) -> QueueBudget {
    let b = &settings.bus;
    let base = QueueLimits::new(
        b.queue_capacity,
        b.queue_bytes,
        b.queue_reserved_bytes,
        Arc::new(QueuePool::new(b.queue_pool_bytes)),
    );
    QueueBudget::new(base, b.queue_bytes)
}

/// A WebSocket session's config, in the wire format the client asked for.
pub fn ws_session_config(
    settings: &Settings,
    queue: &QueueLimits,
    format: WireFormat,
) -> WsSessionConfig {
    let s = &settings.sessions;
    WsSessionConfig {
        heartbeat: s.ws_heartbeat,
        timeout: s.ws_timeout,
        write_deadline: s.write_timeout,
        queue: queue.clone(),
        format,
        limits: OpLimits {
            ops_per_second: s.ws_ops_per_second,
            ops_burst: s.ws_ops_burst,
            filters_per_second: s.ws_filters_per_second,
            filters_burst: s.ws_filters_burst,
            snapshot_events_per_second: s.ws_snapshot_events_per_second,
            snapshot_events_burst: s.ws_snapshot_events_burst,
        },
    }
}

/// An SSE session's config, in edgebus's own form.
pub fn sse_session_config(settings: &Settings, queue: &QueueLimits) -> SseSessionConfig {
    let s = &settings.sessions;
    SseSessionConfig {
        keepalive: s.keepalive,
        write_deadline: s.write_timeout,
        queue: queue.clone(),
        retry: s.sse_retry,
        form: SseForm::Envelope,
    }
}

/// Cluster mode's engine settings; `None` for one instance.
pub fn cluster_config(settings: &Settings) -> Option<ClusterConfig> {
    let c = settings.cluster.as_ref()?;
    Some(ClusterConfig {
        redis_url: c.redis_url.expose().to_owned(),
        instance_id: c.instance_id.clone(),
        stream_key: c.stream_key(),
        devices_key: c.key("devices"),
        leader_key: c.key("leader"),
        key_prefix: c.key_prefix.clone(),
        stream_max_len: c.stream_max_len,
        max_devices: settings.registry.max_devices,
        forget_after: edgebus_actors::registry::FORGET_AFTER,
        history: settings.bus.history,
        history_bytes: settings.bus.history_bytes,
        max_reader_lag: c.max_reader_lag,
    })
}

/// The NATS source's config; `None` when `nats.url` is empty. A NATS frame
/// may land on `mqtt.topics` (the configured families) or `nats.allow_topics`.
pub fn nats_config(settings: &Settings) -> Option<NatsConfig> {
    let n = settings.nats.as_ref()?;
    let auth = match &n.login {
        NatsLogin::None => NatsAuth::None,
        NatsLogin::UserPassword { user, password } => {
            NatsAuth::UserPassword(user.clone(), password.expose().to_owned())
        }
        NatsLogin::Token(token) => NatsAuth::Token(token.expose().to_owned()),
        NatsLogin::CredsFile(path) => NatsAuth::CredsFile(path.clone()),
    };
    let mut allowed = settings.mqtt.topics.clone();
    allowed.extend(n.allow_topics.iter().cloned());
    // Cluster mode: one queue group over all instances, as MQTT's shared
    // subscription: each message is taken by one of them.
    let (queue_group, name) = match &settings.cluster {
        Some(c) => (
            Some(c.group.clone()),
            format!("{}-{}", settings.mqtt.client_id, c.instance_id),
        ),
        None => (None, settings.mqtt.client_id.clone()),
    };
    Some(NatsConfig {
        url: n.url.clone(),
        auth,
        ca_cert: n.ca_cert.clone(),
        subjects: n.subjects.clone(),
        map: SubjectMap::new(n.map.clone(), allowed),
        queue_group,
        name,
        backoff_min: n.backoff_min,
        backoff_max: n.backoff_max,
        max_payload_bytes: settings.mqtt.max_payload_bytes,
        inflight_bytes: settings.bus.inflight_bytes,
    })
}
