//! Every topic family edgebus knows, in one place: how its topics are
//! spelled, the event name each carries, how a slow subscriber is served
//! (its delivery class), and which ones no publisher may use.
//!
//! | family                                   | event name                        | class    |
//! |------------------------------------------|-----------------------------------|----------|
//! | `devices/{id}/metrics`                   | `metrics`                         | conflate |
//! | `devices/{id}/presence` (edgebus's own)  | `device.online/offline`           | queue    |
//! | `alerts/{device}/{rule}` (edgebus's own) | `alert`                           | queue    |
//! | `uploads/{host}` (edgebus's own)         | `upload.stored/duplicate/refused` | queue    |
//! | `attackers/{id}/observation/{kind}`      | `observation`                     | queue    |
//! | `attackers/{id}/fingerprint_rotated`     | `fingerprint.rotated`             | queue    |
//! | `attackers/{id}/scored`                  | `attacker.scored`                 | queue    |
//! | `attribution/profile/{change}`           | the change                        | queue    |
//! | `notifications/{source}`                 | `notification`                    | queue    |
//! | `edgebus/rejects` (reserved prefix)      | `reject`                          | queue    |
//! | anything else                            | `message`                         | queue    |
//!
//! Metrics go to the registry (which admits devices), everything else
//! straight to the bus: [`route`].

/// The filter of every device's metrics.
pub const METRICS_FILTER: &str = "devices/+/metrics";

/// Every attacker observation (`attackers/{id}/observation/{kind}`).
pub const ATTACKER_OBSERVATIONS_FILTER: &str = "attackers/+/observation/+";

/// Every attacker score (`attackers/{id}/scored`).
pub const ATTACKER_SCORES_FILTER: &str = "attackers/+/scored";

/// Every attribution change.
pub const ATTRIBUTION_FILTER: &str = "attribution/#";

/// Every host's upload outcomes (`uploads/{host}`).
pub const UPLOADS_FILTER: &str = "uploads/+";

/// Event names of an upload outcome (one topic, three names, like presence).
pub const UPLOAD_STORED: &str = "upload.stored";
pub const UPLOAD_DUPLICATE: &str = "upload.duplicate";
pub const UPLOAD_REFUSED: &str = "upload.refused";

/// The topic every rejection is published on.
pub const REJECTS_TOPIC: &str = "edgebus/rejects";

/// Topics under this prefix are edgebus's own; no publisher may use them.
pub const RESERVED_PREFIX: &str = "edgebus/";

/// `devices/{device}/metrics`.
pub fn metrics_topic(device: &str) -> String {
    format!("devices/{device}/metrics")
}

/// `devices/{device}/presence`.
pub fn presence_topic(device: &str) -> String {
    format!("devices/{device}/presence")
}

/// `alerts/{device}/{rule}`.
pub fn alert_topic(device: &str, rule: &str) -> String {
    format!("alerts/{device}/{rule}")
}

/// `uploads/{host}`.
pub fn uploads_topic(host: &str) -> String {
    format!("uploads/{host}")
}

/// The `{host}` of an `uploads/{host}` topic.
pub fn uploads_host(topic: &str) -> Option<&str> {
    let host = topic.strip_prefix("uploads/")?;
    (!host.is_empty() && !host.contains('/')).then_some(host)
}

/// `notifications/{source}`.
pub fn notification_topic(source: &str) -> String {
    format!("notifications/{source}")
}

/// What a device's stream shows: its own topics and its alerts.
pub fn device_filters(device: &str) -> [String; 2] {
    [format!("devices/{device}/#"), format!("alerts/{device}/#")]
}

/// What an attacker's stream shows: `attackers/{attacker}/#`.
pub fn attacker_filter(attacker: &str) -> String {
    format!("attackers/{attacker}/#")
}

/// Where an accepted publish goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Metrics: the registry admits the device (or refuses it at the cap)
    /// and forwards the frame to the bus.
    Registry,
    /// Everything else goes on the bus as it is.
    Bus,
}

/// Metrics go to the registry, everything else to the bus.
pub fn route(topic: &str) -> Route {
    if metrics_device(topic).is_some() {
        Route::Registry
    } else {
        Route::Bus
    }
}

/// `alerts/…`, `devices/{id}/presence` and `uploads/…`: edgebus's own
/// events, which no publisher may forge.
pub fn is_own_topic(topic: &str) -> bool {
    let first = topic.split('/').next().unwrap_or(topic);
    if first == "alerts" || first == "uploads" {
        return true;
    }
    let mut levels = topic.split('/');
    matches!(
        (levels.next(), levels.next(), levels.next(), levels.next()),
        (Some("devices"), Some(_), Some("presence"), None)
    )
}

/// What the Alerts actor reads from an attacker topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttackerTopic<'a> {
    /// `attackers/{attacker}/observation/{primitive}`.
    Observation {
        attacker: &'a str,
        primitive: &'a str,
    },
    /// `attackers/{attacker}/scored`.
    Scored { attacker: &'a str },
}

/// The attacker and what happened, for the two attacker families the
/// security digests count; `None` for every other topic.
pub fn attacker_topic(topic: &str) -> Option<AttackerTopic<'_>> {
    let mut levels = topic.split('/');
    match (levels.next(), levels.next(), levels.next(), levels.next()) {
        (Some("attackers"), Some(attacker), Some("observation"), Some(primitive)) => {
            Some(AttackerTopic::Observation {
                attacker,
                primitive,
            })
        }
        (Some("attackers"), Some(attacker), Some("scored"), None) => {
            Some(AttackerTopic::Scored { attacker })
        }
        _ => None,
    }
}

/// How a slow session is treated for a topic: see `bus` for the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryClass {
    /// Only the newest value per topic matters (device metrics): conflate.
    Conflate,
    /// Every event matters: queue, and on overflow drop and report `lagged`.
    Queue,
}

/// Event name of a topic outside every family. It is the EventSource
/// default: a browser hands it to `onmessage`, never to an error path.
pub const DEFAULT_EVENT_NAME: &str = "message";

/// The families of DESIGN.md: the event name a topic carries and how it is
/// delivered to a session that falls behind.
///
/// Names come from this fixed set only. A name taken from the topic would
/// let a publisher pick it: `attackers/a1/error` would send SSE
/// `event: error`, which fires a browser's error path and its reconnect.
pub fn classify(topic: &str) -> (&'static str, DeliveryClass) {
    // Called for every frame: look at the first four levels without allocating.
    let mut it = topic.split('/');
    let head = [it.next(), it.next(), it.next(), it.next()];
    let name = match head {
        // `route` and `metrics_device` agree with this arm.
        [Some("devices"), Some(_), Some("metrics"), None] => {
            return ("metrics", DeliveryClass::Conflate)
        }
        [Some("attackers"), Some(_), Some("observation"), Some(_)] => "observation",
        [Some("attackers"), Some(_), Some("fingerprint_rotated"), None] => "fingerprint.rotated",
        [Some("attackers"), Some(_), Some("scored"), None] => "attacker.scored",
        [Some("alerts"), Some(_), Some(_), None] => "alert",
        [Some("notifications"), ..] => "notification",
        [Some("edgebus"), Some("rejects"), None, None] => "reject",
        // Attribution profile changes, as the per-attacker stream names them.
        [Some("attribution"), Some("profile"), Some("state_changed"), None] => "state_changed",
        [Some("attribution"), Some("profile"), Some("multi_actor_suspected"), None] => {
            "multi_actor_suspected"
        }
        _ => DEFAULT_EVENT_NAME,
    };
    (name, DeliveryClass::Queue)
}

/// Event names edgebus sets itself where the topic alone cannot tell
/// (presence: one topic, two names; uploads: three). Cluster mode carries
/// them through the Redis stream as text and maps them back to these.
pub const EXPLICIT_EVENT_NAMES: &[&str] = &[
    "device.online",
    "device.offline",
    UPLOAD_STORED,
    UPLOAD_DUPLICATE,
    UPLOAD_REFUSED,
];

/// `name` as one of [`EXPLICIT_EVENT_NAMES`].
pub fn explicit_event_name(name: &str) -> Option<&'static str> {
    EXPLICIT_EVENT_NAMES.iter().copied().find(|n| *n == name)
}

/// The `{device_id}` of a `devices/{device_id}/metrics` topic.
pub fn metrics_device(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix("devices/")?;
    let (device, tail) = rest.split_once('/')?;
    (tail == "metrics").then_some(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_give_design_event_names() {
        assert_eq!(
            classify("devices/d1/metrics"),
            ("metrics", DeliveryClass::Conflate)
        );
        assert_eq!(classify("attackers/u/observation/dns").0, "observation");
        assert_eq!(
            classify("attackers/u/fingerprint_rotated").0,
            "fingerprint.rotated"
        );
        assert_eq!(classify("attackers/u/scored").0, "attacker.scored");
        assert_eq!(classify("alerts/d1/cpu_high").0, "alert");
        assert_eq!(classify("notifications/ci").0, "notification");
        assert_eq!(classify("edgebus/rejects").0, "reject");
        assert_eq!(
            classify("attribution/profile/state_changed").0,
            "state_changed"
        );
        assert_eq!(
            classify("attribution/profile/multi_actor_suspected").0,
            "multi_actor_suspected"
        );
        assert_eq!(
            classify("plant/line4/status"),
            ("message", DeliveryClass::Queue)
        );
    }

    #[test]
    fn a_publisher_never_chooses_the_event_name() {
        for topic in [
            "attackers/a1/error",
            "attackers/a1/open",
            "attackers/a1/snapshot",
            "attackers/a1/lagged",
            "attackers/a1/observation",
            "devices/d1/close",
            "devices/d1/presence",
            "alerts/d1",
            "attribution/profile/error",
            "attribution/x/state_changed",
            "edgebus/rejects/error",
            "error",
        ] {
            assert_eq!(classify(topic).0, DEFAULT_EVENT_NAME, "{topic}");
        }
    }

    #[test]
    fn alert_presence_and_upload_topics_are_edgebus_s_own() {
        for topic in [
            "alerts",
            "alerts/d1/cpu_high",
            "devices/d1/presence",
            "uploads",
            "uploads/lab-01",
            "uploads/lab-01/extra",
        ] {
            assert!(is_own_topic(topic), "{topic}");
        }
        for topic in [
            "alertsx/d1",
            "uploadsx/lab-01",
            "devices/d1/metrics",
            "devices/d1/presence/x",
            "plant/uploads/x",
        ] {
            assert!(!is_own_topic(topic), "{topic}");
        }
    }

    #[test]
    fn upload_topics_name_the_host_and_carry_explicit_names() {
        assert_eq!(uploads_topic("lab-01"), "uploads/lab-01");
        assert_eq!(uploads_host("uploads/lab-01"), Some("lab-01"));
        assert_eq!(uploads_host("uploads/"), None);
        assert_eq!(uploads_host("uploads/a/b"), None);
        assert_eq!(uploads_host("alerts/lab-01"), None);
        for name in [UPLOAD_STORED, UPLOAD_DUPLICATE, UPLOAD_REFUSED] {
            assert_eq!(explicit_event_name(name), Some(name));
        }
        assert_eq!(
            classify("uploads/lab-01").0,
            DEFAULT_EVENT_NAME,
            "the name is set by edgebus, never taken from the topic"
        );
    }

    #[test]
    fn metrics_device_reads_the_device_level() {
        assert_eq!(metrics_device("devices/d1/metrics"), Some("d1"));
        assert_eq!(metrics_device("devices/d1/presence"), None);
        assert_eq!(metrics_device("other/d1/metrics"), None);
    }

    #[test]
    fn metrics_alone_go_through_the_registry() {
        assert_eq!(route("devices/d1/metrics"), Route::Registry);
        assert_eq!(route("devices/d1/presence"), Route::Bus);
        assert_eq!(route("attackers/a/scored"), Route::Bus);
    }

    #[test]
    fn attacker_topics_name_the_attacker() {
        assert_eq!(
            attacker_topic("attackers/a/observation/dns"),
            Some(AttackerTopic::Observation {
                attacker: "a",
                primitive: "dns"
            })
        );
        assert_eq!(
            attacker_topic("attackers/a/scored"),
            Some(AttackerTopic::Scored { attacker: "a" })
        );
        assert_eq!(attacker_topic("attackers/a/scored/x"), None);
        assert_eq!(attacker_topic("devices/a/metrics"), None);
    }
}
