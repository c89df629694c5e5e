//! # edgebus-actors: the engine
//!
//! Every actor of edgebus, the messages it accepts, and the pure rules it
//! calls. Knows nothing of HTTP routes: the service shell (`src/`) wires these
//! actors to actix-web.
//!
//! ```text
//!  MQTT broker ──► Ingest ──► Registry ──► Bus ──► WsSession (one per client)
//!  (embedded or    (parse,    (device      (topic    └► Alerts ──► Slack (webhook)
//!   external)       validate)  table, cap)  router,      │  ▲          │
//!                                           history,     │  └ summary ─┘ ListDevices → Registry
//!                                           snapshot) ◄──┘ alert and presence events
//! ```
//!
//! # Layout
//!
//! Bottom first: plain data and pure rules, then the bus, then the actors.
//!
//! - [`topic`]: topic names, filters (`+`, `#`), the filter index.
//! - [`families`]: every topic family: how it is spelled, its event name and
//!   delivery class, the reserved ones, and where a publish goes first
//!   (metrics to the registry, everything else to the bus).
//! - [`frame`]: the domain types: metrics frames and their [`frame::Field`]s,
//!   device ids (and the safe-id rule attacker ids and sources follow too),
//!   rejections, and the strict frame rules (and the lax ones under
//!   [`frame::FrameRules`]).
//! - [`lax`]: the coercions the EdgeWatch bridge's pydantic model applied,
//!   for `[compat.edgewatch] lax_frames`.
//! - [`inflight`]: the byte budget of accepted events on their way to the
//!   bus (what its mailboxes may hold).
//! - [`notice`]: the Slack message the Alerts actor hands the Slack actor,
//!   and the labels of Slack's counters.
//! - [`event`]: event ids (epoch + seq, or a stream entry id), drafts, numbered events and their
//!   per-event wire forms, serialised once; no parsed payload tree is kept.
//!   [`event::wire`] has every other form (WS control frames and snapshots,
//!   SSE framing and snapshots, edgewatch), each written in one place;
//!   [`event::decnet`] DECNET's per-attacker SSE form (`[compat.decnet]`).
//! - [`telemetry`]: Prometheus metrics and rate-limited log lines, together
//!   (alerts and Slack delivery counted apart: `AlertMetrics`, `SlackMetrics`).
//! - [`devices`]: what the registry tells others about a device
//!   ([`devices::DeviceView`]) and the message that asks for the active ones
//!   ([`devices::ListDevices`]), so the Slack summary needs no Registry.
//! - [`reject`]: the `edgebus/rejects` event for a refused frame.
//! - [`subscription`]: topic filter + payload equality predicates.
//! - [`bus`]: the Bus actor: numbering, last values, history, fan-out with the
//!   slow-consumer policy (conflate metrics, drop-and-tell for the rest), and
//!   its delivery protocol: [`bus::Delivery`], [`bus::Snapshot`],
//!   [`bus::SessionId`] and the bounded per-subscriber queue ([`bus::queue`]).
//! - [`registry`]: the Registry actor and its pure device table.
//! - [`session`]: the WebSocket and SSE session actors (bus subscribers).
//! - [`slack`]: the Slack delivery actor (awc): bounded outbox, pacing,
//!   retries, mrkdwn escaping, periodic summaries.
//! - [`cluster`]: cluster mode on Redis: the stream writer (batched,
//!   device cap checked in Redis), the stream reader that feeds the
//!   registry and bus in stream order, recovery of a resuming client's
//!   missed events from the stream, and the health `/readyz` reports.
//! - [`ingest`]: the Ingest actor (rumqttc), reconnect back-off, TLS; in
//!   cluster mode a shared subscription acknowledged after the append.
//! - [`alerts`]: the Alerts actor (a bus subscriber): threshold rules with
//!   cooldown, silent / rejecting device detectors, silent / fatal-only /
//!   unstamped upload detectors (journalled to `alerts.jsonl`), presence,
//!   security digests.
//!
//! Dependencies run one way, from the actors down to plain data and pure
//! rules; `layers.rs` (a test) fails when a lower module names a higher one:
//!
//! ```text
//!  ingest, alerts                      actors that feed others
//!  cluster                             the Redis stream: writer, reader, recovery
//!  registry, session, slack            actors that talk to the bus or nobody
//!  bus                                 the bus and its delivery protocol
//!  reject, subscription                rules over events
//!  event, telemetry, devices           the envelope and wire forms, metrics
//!  topic, families, frame, inflight,   plain data and pure rules
//!  notice
//! ```
//!
//! Every send that could meet a full mailbox uses `try_send` and counts what
//! did not fit; nothing on the event path ever awaits a client.

pub mod alerts;
pub mod bus;
pub mod cluster;
pub mod devices;
pub mod event;
pub mod families;
pub mod frame;
pub mod inflight;
pub mod ingest;
pub mod lax;
#[cfg(test)]
mod layers;
pub mod notice;
pub mod registry;
pub mod reject;
pub mod session;
pub mod slack;
pub mod subscription;
pub mod telemetry;
pub mod topic;
