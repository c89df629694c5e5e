//! What edgebus shares with the CIS490 fleet tools (the lab hosts' shipper,
//! doctor and fleet-health scripts): the version of the episode schema they
//! speak, and the header a lab host names itself with.
//!
//! `POST /v1/ping` reports both, and an upload event carries
//! [`SCHEMA_VERSION`], so the shipper and edgebus agree on one number.

use crate::host_health::validate_host;

/// The episode schema edgebus's receiver speaks (the receiver's
/// `SCHEMA_VERSION`).
pub const SCHEMA_VERSION: u32 = 2;

/// The header a lab host sends its own id in (`cis490-shipper --ping`).
pub const LAB_HOST_HEADER: &str = "x-lab-host";

/// The host id a lab host claims, when it is one: the host id rule
/// (`^[A-Za-z0-9._-]{1,64}$`, no leading dot). Anything else is `None`
/// rather than echoed, so an answer never carries bytes a client chose
/// outside that alphabet.
pub fn lab_host(value: Option<&[u8]>) -> Option<String> {
    let text = std::str::from_utf8(value?).ok()?;
    validate_host(text)
        .ok()
        .map(|host| host.as_str().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_host_id_is_taken_from_the_lab_host_header() {
        assert_eq!(
            lab_host(Some(b"lab-01.cs_490")),
            Some("lab-01.cs_490".into())
        );
        assert_eq!(lab_host(None), None);
        let long = "h".repeat(65);
        for bad in [
            &b""[..],
            b".hidden",
            b"lab 01",
            b"<script>",
            b"a/b",
            b"caf\xc3\xa9",
            b"\xff",
            long.as_bytes(),
        ] {
            assert_eq!(lab_host(Some(bad)), None, "{bad:?}");
        }
    }
}
