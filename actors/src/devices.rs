//! What the registry tells others about devices, and the message that asks
//! for it: plain data, so a consumer (the Slack summary, HTTP) needs only a
//! `Recipient<ListDevices>`, never the Registry actor.

use actix::prelude::*;
use serde::Serialize;

use crate::frame::{DeviceId, MetricsFrame};

/// One device as the registry knows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceView {
    pub device_id: DeviceId,
    /// Receive time of the latest frame, ms since the epoch (edgebus's clock,
    /// not the device's, which may be wrong).
    pub last_seen: u64,
    pub active: bool,
    pub metrics: MetricsFrame,
}

/// Active devices, sorted by id (`send` from HTTP and the Slack summary;
/// the Registry answers).
#[derive(Message)]
#[rtype(result = "Vec<DeviceView>")]
pub struct ListDevices;
