//! The Registry actor: the live device table.
//!
//! State: a [`DeviceTable`]. Accepts [`Observe`] from Ingest and HTTP publish
//! (`try_send`), [`ListDevices`] and [`GetDevice`] from HTTP (`send`). Sends
//! admitted frames on to the Bus with `try_send`; a device refused by the cap
//! is counted and reported on `edgebus/rejects`, and nothing else happens.

pub mod table;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::bus::{Bus, Preload, Publish, PublishBatch};
use crate::event::{now_ms, Draft, Payload};
use crate::frame::Rejection;
use crate::reject::reject_draft;
use crate::telemetry::{DropReason, Telemetry};

pub use crate::devices::{DeviceView, ListDevices};
pub use table::{Admission, DeviceTable};

/// Mailbox bound: absorbs ingest bursts; beyond it ingest counts `overload`.
pub const REGISTRY_MAILBOX: usize = 65_536;

/// A device unseen this long is forgotten and its slot under `max_devices`
/// freed. A day, so "silent" detection (which looks back 24 h) still sees it.
pub const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

const SWEEP_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub max_devices: usize,
    /// The "active" window (`registry.prune_seconds`).
    pub active_window: Duration,
}

pub struct Registry {
    table: DeviceTable,
    bus: Recipient<Publish>,
    /// Cluster mode: where stream batches go.
    stream_bus: Option<StreamBus>,
    telemetry: Arc<Telemetry>,
}

/// The bus's two cluster-mode inputs.
struct StreamBus {
    batch: Recipient<PublishBatch>,
    preload: Recipient<Preload>,
}

impl Registry {
    pub fn new(config: RegistryConfig, bus: Recipient<Publish>, telemetry: Arc<Telemetry>) -> Self {
        Self {
            table: DeviceTable::new(config.max_devices, config.active_window.as_millis() as u64),
            bus,
            stream_bus: None,
            telemetry,
        }
    }

    /// Cluster mode: forwards [`ObserveStream`] batches to `bus`.
    pub fn stream_fed(mut self, bus: &Addr<Bus>) -> Self {
        self.stream_bus = Some(StreamBus {
            batch: bus.clone().recipient(),
            preload: bus.clone().recipient(),
        });
        self
    }

    fn forward(&self, draft: Draft) {
        if self.bus.try_send(Publish(draft)).is_err() {
            self.telemetry.events_dropped(DropReason::Overload, 1);
        }
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(REGISTRY_MAILBOX);
        ctx.run_interval(SWEEP_EVERY, |act, _| {
            let cutoff = now_ms().saturating_sub(FORGET_AFTER.as_millis() as u64);
            act.table.forget_before(cutoff);
            act.telemetry.devices_known.set(act.table.len() as i64);
        });
    }
}

/// A validated metrics frame arrived (`try_send` from Ingest / HTTP publish).
#[derive(Message)]
#[rtype(result = "Admission")]
pub struct Observe(pub Draft);

impl Handler<Observe> for Registry {
    type Result = MessageResult<Observe>;

    fn handle(&mut self, msg: Observe, _: &mut Context<Self>) -> Self::Result {
        let draft = msg.0;
        let Payload::Metrics(frame) = &draft.body else {
            // Only metrics describe devices; anything else goes straight on.
            self.forward(draft);
            return MessageResult(Admission::Updated);
        };
        let admission = self.table.observe(frame, draft.ts_ms);
        match admission {
            Admission::Refused => {
                let device = frame.device_id.to_string();
                self.telemetry
                    .frame_rejected(&draft.topic, &Rejection::DeviceCap);
                let reject = reject_draft(
                    &draft.topic,
                    Some(&device),
                    &Rejection::DeviceCap,
                    b"",
                    draft.ts_ms,
                );
                self.forward(reject);
            }
            Admission::New => {
                self.telemetry.devices_known.set(self.table.len() as i64);
                self.telemetry.frames_accepted.inc();
                self.forward(draft);
            }
            Admission::Updated => {
                self.telemetry.frames_accepted.inc();
                self.forward(draft);
            }
        }
        MessageResult(admission)
    }
}

/// Cluster mode: events read from the stream, numbered, in stream order
/// (`try_send` from the stream reader). Metrics among them update the table
/// (admitted already: the cap was checked in Redis); all of them go on to
/// the bus in one message, in the same order, so every instance's bus sees
/// one sequence. `preload`: the stream's tail read at start, kept by the bus
/// but routed to nobody.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ObserveStream {
    pub drafts: Vec<Draft>,
    pub preload: bool,
}

impl Handler<ObserveStream> for Registry {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: ObserveStream, _: &mut Context<Self>) -> Self::Result {
        for draft in &msg.drafts {
            if let Payload::Metrics(frame) = &draft.body {
                if self.table.admit(frame, draft.ts_ms) == Admission::Refused {
                    log::warn!(
                        "registry: device {} not kept locally (twice registry.max_devices known)",
                        frame.device_id
                    );
                }
            }
        }
        self.telemetry.devices_known.set(self.table.len() as i64);
        let n = msg.drafts.len() as u64;
        let Some(bus) = self.stream_bus.as_ref() else {
            self.telemetry.events_dropped(DropReason::Overload, n);
            return Box::pin(async {});
        };
        // Waits for room in the bus's mailbox, and the stream reader waits
        // for this answer: a bus that falls behind slows the reader (which
        // shows as lag in /readyz), it never drops a batch.
        let (batch, preload, telemetry) = (
            bus.batch.clone(),
            bus.preload.clone(),
            self.telemetry.clone(),
        );
        Box::pin(async move {
            let sent = if msg.preload {
                preload.send(Preload(msg.drafts)).await
            } else {
                batch.send(PublishBatch(msg.drafts)).await
            };
            if sent.is_err() {
                telemetry.events_dropped(DropReason::Overload, n);
            }
        })
    }
}

impl Handler<ListDevices> for Registry {
    type Result = MessageResult<ListDevices>;

    fn handle(&mut self, _: ListDevices, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.table.active(now_ms()))
    }
}

/// One device, active or not (`send` from HTTP); `None` if unknown.
#[derive(Message)]
#[rtype(result = "Option<DeviceView>")]
pub struct GetDevice(pub String);

impl Handler<GetDevice> for Registry {
    type Result = MessageResult<GetDevice>;

    fn handle(&mut self, msg: GetDevice, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.table.get(&msg.0, now_ms()))
    }
}
