//! What an upload request says about itself, read and checked before a byte
//! of its body: the names in its path and its headers, by the seed
//! receiver's rules and in the seed's order, so its shipper sees the same
//! answer to the same mistake.

use std::collections::BTreeSet;

use actix_web::http::header::HeaderMap;

use crate::host_health::validate_host;
use edgebus_actors::frame::DeviceId;

/// Every upload is a zstd-compressed tarball.
pub const SUFFIX: &str = ".tar.zst";

/// What an upload without `X-Schema-Version` is taken to be.
const SCHEMA_VERSION: i64 = crate::cis490::SCHEMA_VERSION as i64;

/// A refusal of the request itself, with the seed's `error` text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("expected {SUFFIX} suffix")]
    Suffix,
    #[error("bad host_id or episode_id")]
    BadId,
    #[error("X-Content-SHA256 header (64 hex chars) required")]
    Sha,
    #[error("bad X-Schema-Version")]
    SchemaVersion,
    #[error("bad Content-Length")]
    ContentLength,
}

/// An episode id: the host id rule (`^[A-Za-z0-9._-]{1,64}$`, no leading
/// dot), which keeps every name a single safe path segment.
pub type EpisodeId = DeviceId;

/// The path's names: `{host_id}/{episode_id}.tar.zst`.
pub fn parse_names(host: &str, file: &str) -> Result<(DeviceId, EpisodeId), RequestError> {
    let episode = file.strip_suffix(SUFFIX).ok_or(RequestError::Suffix)?;
    match (validate_host(host), validate_host(episode)) {
        (Ok(host), Ok(episode)) => Ok((host, episode)),
        _ => Err(RequestError::BadId),
    }
}

/// The SHA-256 the body must have, lowercase.
pub fn parse_sha(headers: &HeaderMap) -> Result<String, RequestError> {
    let value = header(headers, "x-content-sha256").ok_or(RequestError::Sha)?;
    if value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(RequestError::Sha)
    }
}

/// `X-Schema-Version`, an integer, [`SCHEMA_VERSION`] when absent.
pub fn parse_schema_version(headers: &HeaderMap) -> Result<i64, RequestError> {
    match header(headers, "x-schema-version") {
        None => Ok(SCHEMA_VERSION),
        Some(v) => v.trim().parse().map_err(|_| RequestError::SchemaVersion),
    }
}

/// The declared body length, if any.
pub fn parse_content_length(headers: &HeaderMap) -> Result<Option<u64>, RequestError> {
    match headers.get(actix_web::http::header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .map(Some)
            .ok_or(RequestError::ContentLength),
    }
}

/// An optional label from a closed set: lowercased and trimmed; a value
/// outside the set is dropped (`Err` carries it, for the log) so a drifting
/// shipper cannot write garbage into the index.
pub fn closed_label(
    headers: &HeaderMap,
    name: &str,
    allowed: &BTreeSet<String>,
) -> Result<Option<String>, String> {
    let Some(value) = header(headers, name) else {
        return Ok(None);
    };
    let value = value.trim().to_ascii_lowercase();
    if value.is_empty() {
        Ok(None)
    } else if allowed.contains(&value) {
        Ok(Some(value))
    } else {
        Err(value.chars().take(64).collect())
    }
}

/// A header's value as text; a value that is not visible ASCII counts as
/// absent.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn names_need_the_suffix_and_the_id_rule() {
        let (h, e) = parse_names("lab-01", "ep_1.tar.zst").unwrap();
        assert_eq!((h.as_str(), e.as_str()), ("lab-01", "ep_1"));
        assert_eq!(parse_names("lab", "ep.tar.gz"), Err(RequestError::Suffix));
        for (host, file) in [
            ("lab", ".tar.zst"),
            ("lab", ".hidden.tar.zst"),
            (".lab", "ep.tar.zst"),
            ("lab", "a b.tar.zst"),
            ("lab", &format!("{}.tar.zst", "e".repeat(65))),
        ] {
            assert_eq!(
                parse_names(host, file),
                Err(RequestError::BadId),
                "{host} {file}"
            );
        }
    }

    #[test]
    fn the_sha_header_is_64_hex_digits_and_is_lowercased() {
        let upper = "AB".repeat(32);
        assert_eq!(
            parse_sha(&headers(&[("x-content-sha256", &upper)])).unwrap(),
            "ab".repeat(32)
        );
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(65)] {
            assert_eq!(
                parse_sha(&headers(&[("x-content-sha256", bad)])),
                Err(RequestError::Sha)
            );
        }
        assert_eq!(parse_sha(&headers(&[])), Err(RequestError::Sha));
    }

    #[test]
    fn schema_version_defaults_to_two_and_must_be_an_integer() {
        assert_eq!(parse_schema_version(&headers(&[])), Ok(2));
        assert_eq!(
            parse_schema_version(&headers(&[("x-schema-version", "3")])),
            Ok(3)
        );
        assert_eq!(
            parse_schema_version(&headers(&[("x-schema-version", "two")])),
            Err(RequestError::SchemaVersion)
        );
    }

    #[test]
    fn labels_outside_their_closed_set_are_dropped() {
        let allowed: BTreeSet<String> = ["control".to_owned()].into();
        let h = headers(&[("x-episode-type", " Control ")]);
        assert_eq!(
            closed_label(&h, "x-episode-type", &allowed),
            Ok(Some("control".into()))
        );
        let h = headers(&[("x-episode-type", "weird")]);
        assert_eq!(
            closed_label(&h, "x-episode-type", &allowed),
            Err("weird".into())
        );
        assert_eq!(
            closed_label(&headers(&[]), "x-episode-type", &allowed),
            Ok(None)
        );
    }
}
