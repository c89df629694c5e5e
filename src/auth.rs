//! Who is calling, and what they may do.
//!
//! - API keys from `auth.api_keys` (the key itself or `sha256:<hex>` of it),
//!   presented as `Authorization: Bearer KEY`. Every stored key is compared
//!   against the SHA-256 of the presented one in constant time, and every key
//!   is always compared, so timing tells nothing about which came close.
//! - Stream tickets: `POST /v1/auth/ticket` trades a bearer key for an opaque,
//!   random, single-use ticket that expires after `sessions.ticket_ttl_seconds`.
//!   Browsers pass it as `?ticket=` because EventSource cannot set headers. An
//!   API key in a URL is refused outright: it would end up in proxy logs.
//! - A per-identity cap on concurrent streams, held by a [`StreamPermit`]
//!   that gives its slot back when the session that owns it ends.
//! - With no key configured edgebus runs in open dev mode: every caller is
//!   the anonymous identity with every role.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;

use crate::settings::AuthSettings;

/// Most tickets outstanding at once; a client minting more gets 429.
pub const MAX_OUTSTANDING_TICKETS: usize = 100_000;

/// Query parameters a confused client might carry a key in. A value there
/// that is a valid API key is refused, never accepted.
const URL_SECRET_PARAMS: [&str; 7] = [
    "ticket",
    "token",
    "access_token",
    "api_key",
    "apikey",
    "key",
    "bearer",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Viewer,
    Publisher,
    Admin,
}

impl Role {
    fn bit(self) -> u8 {
        match self {
            Role::Viewer => 1,
            Role::Publisher => 2,
            Role::Admin => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Publisher => "publisher",
            Role::Admin => "admin",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name {
            "viewer" => Some(Role::Viewer),
            "publisher" => Some(Role::Publisher),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// How a caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    ApiKey,
    Ticket,
    /// The seed bridge's shared WebSocket token (legacy mode).
    LegacyToken,
    /// Open dev mode: no key is configured.
    Open,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: Arc<str>,
    roles: u8,
    pub proof: Proof,
}

impl Identity {
    pub fn anonymous() -> Self {
        Self {
            name: "anonymous".into(),
            roles: Role::Viewer.bit() | Role::Publisher.bit() | Role::Admin.bit(),
            proof: Proof::Open,
        }
    }

    fn legacy() -> Self {
        Self {
            name: "legacy-token".into(),
            roles: Role::Viewer.bit(),
            proof: Proof::LegacyToken,
        }
    }

    /// Admin may do everything; other roles are exactly what they say.
    pub fn has(&self, role: Role) -> bool {
        self.roles & (role.bit() | Role::Admin.bit()) != 0
    }

    pub fn roles(&self) -> Vec<&'static str> {
        [Role::Viewer, Role::Publisher, Role::Admin]
            .into_iter()
            .filter(|r| self.roles & r.bit() != 0)
            .map(Role::as_str)
            .collect()
    }

    /// Whether this identity counts against `max_streams_per_identity`:
    /// only named keys do. Open dev mode and the legacy shared token have no
    /// identity to tell callers apart (the seed bridge had no cap either).
    fn is_capped(&self) -> bool {
        matches!(self.proof, Proof::ApiKey | Proof::Ticket)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing credentials: send Authorization: Bearer <api key>")]
    Missing,
    #[error("invalid API key")]
    InvalidKey,
    #[error("malformed Authorization header: expected `Bearer <api key>`")]
    Malformed,
    #[error("an API key is never accepted in a URL; exchange it at POST /v1/auth/ticket and pass ?ticket=")]
    KeyInUrl,
    #[error("ticket unknown, already used or expired: get a new one at POST /v1/auth/ticket")]
    BadTicket,
    #[error("only one {0} parameter is allowed")]
    Repeated(&'static str),
    #[error("this needs the {} role", .0.as_str())]
    Forbidden(Role),
    #[error("too many concurrent streams for {0:?} (sessions.max_streams_per_identity = {1})")]
    TooManyStreams(String, usize),
    #[error("too many outstanding tickets; retry shortly")]
    TooManyTickets,
}

struct Key {
    name: Arc<str>,
    digest: [u8; 32],
    roles: u8,
}

/// The configured API keys.
pub struct KeyRing {
    keys: Vec<Key>,
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, data).as_ref());
    out
}

fn from_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl KeyRing {
    /// Settings were validated at start: a malformed hash cannot reach here,
    /// and is skipped rather than trusted if it somehow does.
    pub fn new(settings: &AuthSettings) -> Self {
        let keys = settings
            .api_keys
            .iter()
            .filter_map(|k| {
                let secret = k.key.expose();
                let digest = match secret.strip_prefix("sha256:") {
                    Some(hex) => from_hex(&hex.to_ascii_lowercase())?,
                    None => sha256(secret.as_bytes()),
                };
                let roles = k
                    .roles
                    .iter()
                    .filter_map(|r| Role::parse(r))
                    .fold(0, |acc, r| acc | r.bit());
                Some(Key {
                    name: k.name.as_str().into(),
                    digest,
                    roles,
                })
            })
            .collect();
        Self { keys }
    }

    /// No keys: open dev mode.
    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn verify(&self, presented: &str) -> Option<Identity> {
        let presented = sha256(presented.as_bytes());
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.digest.ct_eq(&presented)) {
                found = Some(key);
            }
        }
        found.map(|k| Identity {
            name: k.name.clone(),
            roles: k.roles,
            proof: Proof::ApiKey,
        })
    }
}

/// Single-use stream tickets, in process. (Several instances would keep
/// them in Redis with `GETDEL`; one instance needs nothing but this map.)
pub struct Tickets {
    ttl: Duration,
    rng: SystemRandom,
    issued: Mutex<HashMap<String, (Identity, Instant)>>,
}

impl Tickets {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            rng: SystemRandom::new(),
            issued: Mutex::new(HashMap::new()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// 256 random bits from the OS CSPRNG, hex-encoded.
    pub fn issue(&self, identity: &Identity) -> Result<String, AuthError> {
        let mut bytes = [0u8; 32];
        self.rng
            .fill(&mut bytes)
            .map_err(|_| AuthError::TooManyTickets)?;
        let ticket = to_hex(&bytes);
        let now = Instant::now();
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        if issued.len() >= MAX_OUTSTANDING_TICKETS {
            issued.retain(|_, (_, expires)| *expires > now);
            if issued.len() >= MAX_OUTSTANDING_TICKETS {
                return Err(AuthError::TooManyTickets);
            }
        }
        issued.insert(ticket.clone(), (identity.clone(), now + self.ttl));
        Ok(ticket)
    }

    /// Consumes a ticket: it authenticates once, and only before it expires.
    pub fn redeem(&self, ticket: &str) -> Result<Identity, AuthError> {
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        match issued.remove(ticket) {
            Some((identity, expires)) if expires > Instant::now() => Ok(Identity {
                proof: Proof::Ticket,
                ..identity
            }),
            _ => Err(AuthError::BadTicket),
        }
    }
}

/// Concurrent streams per identity.
pub struct StreamLimits {
    max: usize,
    open: Mutex<HashMap<Arc<str>, usize>>,
}

/// One open stream's slot; dropping it (the session ended) frees the slot.
pub struct StreamPermit {
    limits: Option<(Arc<StreamLimits>, Arc<str>)>,
}

impl StreamLimits {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Checks and takes a slot in one step.
    pub fn acquire(self: &Arc<Self>, identity: &Identity) -> Result<StreamPermit, AuthError> {
        if !identity.is_capped() {
            return Ok(StreamPermit { limits: None });
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(identity.name.clone()).or_insert(0);
        if *count >= self.max {
            return Err(AuthError::TooManyStreams(
                identity.name.to_string(),
                self.max,
            ));
        }
        *count += 1;
        Ok(StreamPermit {
            limits: Some((self.clone(), identity.name.clone())),
        })
    }

    pub fn open_for(&self, name: &str) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(name).copied().unwrap_or(0)
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let Some((limits, name)) = self.limits.take() else {
            return;
        };
        let mut open = limits.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&name) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&name);
            }
        }
    }
}

/// Everything a handler needs to authenticate a request.
pub struct Auth {
    pub keys: KeyRing,
    pub tickets: Tickets,
    pub streams: Arc<StreamLimits>,
    ws_token: String,
}

/// What a stream request carried.
#[derive(Debug, Default)]
pub struct StreamCredentials<'a> {
    pub authorization: Option<&'a str>,
    pub ticket: Option<&'a str>,
    pub token: Option<&'a str>,
}

/// How a WebSocket request fared against the legacy shared token.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamAuth {
    Granted(Identity),
    /// Legacy mode and a wrong or missing `?token=`: the seed bridge's
    /// clients expect an upgrade then close 1008, so the caller does that.
    LegacyRefused,
}

impl Auth {
    pub fn new(settings: &AuthSettings, ticket_ttl: Duration, max_streams: usize) -> Self {
        Self {
            keys: KeyRing::new(settings),
            tickets: Tickets::new(ticket_ttl),
            streams: StreamLimits::new(max_streams),
            ws_token: settings.ws_token.expose().to_owned(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.keys.is_open()
    }

    /// A plain API call: `Authorization: Bearer KEY` with `role`.
    pub fn require(&self, authorization: Option<&str>, role: Role) -> Result<Identity, AuthError> {
        let identity = self.identify(authorization)?;
        if identity.has(role) {
            Ok(identity)
        } else {
            Err(AuthError::Forbidden(role))
        }
    }

    /// Who is calling, whatever their roles.
    pub fn identify(&self, authorization: Option<&str>) -> Result<Identity, AuthError> {
        if self.is_open() {
            return Ok(Identity::anonymous());
        }
        self.bearer(authorization.ok_or(AuthError::Missing)?)
    }

    fn bearer(&self, header: &str) -> Result<Identity, AuthError> {
        let (scheme, key) = header.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed);
        }
        self.keys.verify(key.trim()).ok_or(AuthError::InvalidKey)
    }

    /// Refuses a request whose URL carries a valid API key in any of the
    /// parameters a key might be pasted into.
    pub fn refuse_keys_in_url(&self, query: &str) -> Result<(), AuthError> {
        if self.is_open() {
            return Ok(());
        }
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            if URL_SECRET_PARAMS.contains(&name.as_ref()) && self.keys.verify(&value).is_some() {
                return Err(AuthError::KeyInUrl);
            }
        }
        Ok(())
    }

    /// A stream (SSE or WebSocket): a bearer header, a ticket, or (WebSocket
    /// only, when configured) the legacy shared token. Needs `viewer`.
    pub fn stream(
        &self,
        creds: &StreamCredentials<'_>,
        legacy_allowed: bool,
    ) -> Result<StreamAuth, AuthError> {
        let legacy = legacy_allowed && !self.ws_token.is_empty();
        let identity = if let Some(header) = creds.authorization {
            self.bearer(header)?
        } else if let Some(ticket) = creds.ticket.filter(|_| !self.is_open()) {
            self.tickets.redeem(ticket)?
        } else if legacy {
            let presented = creds.token.unwrap_or("");
            if bool::from(presented.as_bytes().ct_eq(self.ws_token.as_bytes())) {
                Identity::legacy()
            } else {
                return Ok(StreamAuth::LegacyRefused);
            }
        } else if self.is_open() {
            Identity::anonymous()
        } else {
            return Err(AuthError::Missing);
        };
        if !identity.has(Role::Viewer) {
            return Err(AuthError::Forbidden(Role::Viewer));
        }
        Ok(StreamAuth::Granted(identity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;

    const KEY: &str = "viewer-key-0123456789";
    const PUB: &str = "publisher-key-0123456789";

    fn auth(extra: &str) -> Auth {
        let toml = format!(
            r#"[auth]
{extra}
api_keys = [
  {{ name = "ops", key = "{KEY}", roles = ["viewer"] }},
  {{ name = "tool", key = "sha256:{}", roles = ["publisher"] }},
]"#,
            to_hex(&sha256(PUB.as_bytes()))
        );
        let s = Settings::from_toml(&toml).unwrap();
        Auth::new(&s.auth, Duration::from_secs(60), 2)
    }

    fn granted(result: Result<StreamAuth, AuthError>) -> Identity {
        match result {
            Ok(StreamAuth::Granted(identity)) => identity,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    #[test]
    fn plain_and_hashed_keys_verify_and_carry_their_roles() {
        let a = auth("");
        let ops = a
            .require(Some(&format!("Bearer {KEY}")), Role::Viewer)
            .unwrap();
        assert_eq!(&*ops.name, "ops");
        let tool = a
            .require(Some(&format!("bearer {PUB}")), Role::Publisher)
            .unwrap();
        assert_eq!(&*tool.name, "tool");
        assert_eq!(
            a.require(Some(&format!("Bearer {KEY}")), Role::Publisher),
            Err(AuthError::Forbidden(Role::Publisher))
        );
        assert_eq!(
            a.require(Some("Bearer nope-nope-nope-nope"), Role::Viewer),
            Err(AuthError::InvalidKey)
        );
        assert_eq!(a.require(None, Role::Viewer), Err(AuthError::Missing));
        assert_eq!(
            a.require(Some(&format!("Basic {KEY}")), Role::Viewer),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn admin_has_every_role_and_open_mode_lets_anyone_in() {
        let admin = Identity {
            name: "root".into(),
            roles: Role::Admin.bit(),
            proof: Proof::ApiKey,
        };
        assert!(admin.has(Role::Viewer) && admin.has(Role::Publisher));
        let open = Auth::new(
            &Settings::from_toml("").unwrap().auth,
            Duration::from_secs(1),
            1,
        );
        assert!(open.is_open());
        assert_eq!(open.require(None, Role::Admin).unwrap().proof, Proof::Open);
    }

    #[test]
    fn tickets_are_single_use_random_and_expire() {
        let a = auth("");
        let ops = a
            .require(Some(&format!("Bearer {KEY}")), Role::Viewer)
            .unwrap();
        let t1 = a.tickets.issue(&ops).unwrap();
        let t2 = a.tickets.issue(&ops).unwrap();
        assert_ne!(t1, t2);
        assert_eq!(t1.len(), 64);
        let creds = StreamCredentials {
            ticket: Some(&t1),
            ..Default::default()
        };
        let got = granted(a.stream(&creds, false));
        assert_eq!((&*got.name, got.proof), ("ops", Proof::Ticket));
        assert_eq!(a.stream(&creds, false), Err(AuthError::BadTicket));

        let short = Tickets::new(Duration::ZERO);
        let t = short.issue(&ops).unwrap();
        assert_eq!(short.redeem(&t), Err(AuthError::BadTicket));
    }

    #[test]
    fn a_key_in_the_url_is_refused_wherever_it_hides() {
        let a = auth("");
        for q in [
            format!("ticket={KEY}"),
            format!("topic=x&access_token={KEY}"),
            format!("key={PUB}"),
        ] {
            assert_eq!(a.refuse_keys_in_url(&q), Err(AuthError::KeyInUrl), "{q}");
        }
        assert!(a.refuse_keys_in_url("ticket=abc&topic=x").is_ok());
    }

    #[test]
    fn publisher_only_keys_cannot_open_streams() {
        let a = auth("");
        let header = format!("Bearer {PUB}");
        let creds = StreamCredentials {
            authorization: Some(&header),
            ..Default::default()
        };
        assert_eq!(
            a.stream(&creds, false),
            Err(AuthError::Forbidden(Role::Viewer))
        );
    }

    #[test]
    fn the_legacy_token_only_opens_websockets() {
        let a = auth(r#"ws_token = "shared-secret""#);
        let good = StreamCredentials {
            token: Some("shared-secret"),
            ..Default::default()
        };
        assert_eq!(granted(a.stream(&good, true)).proof, Proof::LegacyToken);
        let bad = StreamCredentials {
            token: Some("shared-secreT"),
            ..Default::default()
        };
        assert_eq!(a.stream(&bad, true), Ok(StreamAuth::LegacyRefused));
        assert_eq!(a.stream(&good, false), Err(AuthError::Missing));
    }

    #[test]
    fn stream_permits_cap_each_identity_and_free_on_drop() {
        let a = auth("");
        let ops = a
            .require(Some(&format!("Bearer {KEY}")), Role::Viewer)
            .unwrap();
        let p1 = a.streams.acquire(&ops).unwrap();
        let _p2 = a.streams.acquire(&ops).unwrap();
        assert!(matches!(
            a.streams.acquire(&ops),
            Err(AuthError::TooManyStreams(_, 2))
        ));
        drop(p1);
        assert_eq!(a.streams.open_for("ops"), 1);
        let _p3 = a.streams.acquire(&ops).unwrap();
        // Open mode and the legacy token are not capped.
        for _ in 0..5 {
            std::mem::forget(a.streams.acquire(&Identity::anonymous()).unwrap());
        }
        assert_eq!(a.streams.open_for("anonymous"), 0);
    }
}
