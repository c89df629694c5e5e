//! Who is calling, and what they may do.
//!
//! - API keys from `auth.api_keys` (the key itself or `sha256:<hex>` of it),
//!   presented as `Authorization: Bearer KEY`. Every stored key is compared
//!   against the SHA-256 of the presented one in constant time, and every key
//!   is always compared, so timing tells nothing about which came close.
//! - JWTs (`[auth.jwt]`), wherever an API key goes: a bearer that is no
//!   key and has a JWT's shape is verified as one ([`jwt`]). Its identity
//!   is `jwt:` and its identity claim, its roles what its roles claim names.
//!   In a URL a JWT never authenticates, except `?token=` on SSE streams
//!   when `auth.jwt.allow_query_token_on_streams` asks for it.
//! - Stream tickets: `POST /v1/auth/ticket` trades a bearer credential for an
//!   opaque, random, single-use ticket that expires after
//!   `sessions.ticket_ttl_seconds` on the injected [`Clock`]. Browsers pass it
//!   as `?ticket=` because EventSource cannot set headers. An API key in a URL
//!   is refused outright: it would end up in proxy logs.
//! - Per-identity caps on concurrent streams and outstanding tickets. Where
//!   callers share one identity (open mode, the legacy token) the caps count
//!   per source address instead, so one caller at its cap never blocks another.
//! - Three modes ([`Mode`]): API keys and/or JWTs; the seed bridge's shared `ws_token`
//!   alone, which then guards every stream and API call (its users set it to
//!   keep their data private, not to guard one path of several); and, with
//!   neither, open dev mode: every caller is the anonymous identity with every
//!   role.

pub mod jwt;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;

use edgebus_actors::alerts::Clock;

use crate::cluster_store::tickets::SharedTickets;
use crate::cluster_store::StoreError;
use crate::settings::{AuthSettings, Settings};

use self::jwt::{JwtError, JwtVerifier};

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

pub use crate::settings::Role;

fn role_bit(role: Role) -> u8 {
    match role {
        Role::Viewer => 1,
        Role::Publisher => 2,
        Role::Admin => 4,
    }
}

/// Which credentials this process accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No key and no token: anyone who reaches the port may do anything.
    Open,
    /// `auth.ws_token` and neither API keys nor JWTs: the token guards
    /// everything.
    Legacy,
    /// `auth.api_keys` and/or `[auth.jwt]` (the token, if also set, opens
    /// WebSockets only).
    Keys,
}

/// How a caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    ApiKey,
    /// A verified JWT (`Authorization: Bearer`, or `?token=` where allowed).
    Jwt,
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
            roles: role_bit(Role::Viewer) | role_bit(Role::Publisher) | role_bit(Role::Admin),
            proof: Proof::Open,
        }
    }

    /// The token holder may read and publish: what open mode allowed before
    /// the token was set, no more (no admin).
    fn legacy() -> Self {
        Self {
            name: "legacy-token".into(),
            roles: role_bit(Role::Viewer) | role_bit(Role::Publisher),
            proof: Proof::LegacyToken,
        }
    }

    /// A dashboard on the EdgeWatch listener (`[compat.edgewatch]`): it
    /// reads metrics and nothing else, and, the bridge's token being shared,
    /// its streams are capped by address.
    pub fn edgewatch() -> Self {
        Self {
            name: "edgewatch".into(),
            roles: role_bit(Role::Viewer),
            proof: Proof::LegacyToken,
        }
    }

    /// Admin may do everything; other roles are exactly what they say.
    pub fn has(&self, role: Role) -> bool {
        self.roles & (role_bit(role) | role_bit(Role::Admin)) != 0
    }

    pub fn roles(&self) -> Vec<&'static str> {
        [Role::Viewer, Role::Publisher, Role::Admin]
            .into_iter()
            .filter(|r| self.roles & role_bit(*r) != 0)
            .map(Role::as_str)
            .collect()
    }

    /// How a shared ticket store keeps this identity: roles, proof, name.
    pub(crate) fn to_record(&self) -> String {
        let proof = match self.proof {
            Proof::ApiKey => 'k',
            Proof::Jwt => 'j',
            Proof::Ticket => 't',
            Proof::LegacyToken => 'l',
            Proof::Open => 'o',
        };
        format!("{}{proof}{}", self.roles, self.name)
    }

    /// The inverse of [`Identity::to_record`]; `None` for anything else.
    pub(crate) fn from_record(record: &str) -> Option<Self> {
        let mut chars = record.chars();
        let roles = u8::try_from(chars.next()?.to_digit(8)?).ok()?;
        let proof = match chars.next()? {
            'k' => Proof::ApiKey,
            'j' => Proof::Jwt,
            't' => Proof::Ticket,
            'l' => Proof::LegacyToken,
            'o' => Proof::Open,
            _ => return None,
        };
        Some(Self {
            name: chars.as_str().into(),
            roles,
            proof,
        })
    }

    /// The identity a redeemed ticket stands for: a key's or a JWT's
    /// ticket is that key or token's identity; the shared token's stays
    /// shared.
    pub(crate) fn redeemed(self) -> Self {
        let proof = match self.proof {
            Proof::ApiKey | Proof::Jwt => Proof::Ticket,
            other => other,
        };
        Self { proof, ..self }
    }

    /// A verified JWT's bearer.
    fn from_jwt(bearer: jwt::Bearer) -> Self {
        Self {
            name: bearer.name.into(),
            roles: bearer.roles.iter().fold(0, |acc, r| acc | role_bit(*r)),
            proof: Proof::Jwt,
        }
    }

    /// Named keys and JWT subjects are capped by name. Open mode and the
    /// legacy shared token have no name that tells callers apart, so they
    /// are capped by address.
    pub fn is_named(&self) -> bool {
        matches!(self.proof, Proof::ApiKey | Proof::Jwt | Proof::Ticket)
    }

    /// Whom a per-caller cap counts against: the key's name, or for a shared
    /// identity the source address.
    pub fn owner(&self, peer: Option<IpAddr>) -> Arc<str> {
        if self.is_named() {
            self.name.clone()
        } else {
            match peer {
                Some(ip) => format!("{} from {ip}", self.name).into(),
                None => self.name.clone(),
            }
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing credentials: send Authorization: Bearer <api key>")]
    Missing,
    #[error("missing credentials: send Authorization: Bearer <auth.ws_token> (streams: ?token=)")]
    MissingToken,
    #[error("invalid API key")]
    InvalidKey,
    #[error("invalid token")]
    InvalidToken,
    #[error("malformed Authorization header: expected `Bearer <api key>`")]
    Malformed,
    #[error("an API key is never accepted in a URL; exchange it at POST /v1/auth/ticket and pass ?ticket=")]
    KeyInUrl,
    #[error("a JWT in a URL does not authenticate here; send it as Authorization: Bearer, or exchange it at POST /v1/auth/ticket and pass ?ticket=")]
    JwtInUrl,
    #[error(transparent)]
    Jwt(#[from] JwtError),
    #[error("ticket unknown, already used or expired: get a new one at POST /v1/auth/ticket")]
    BadTicket,
    #[error("only one {0} parameter is allowed")]
    Repeated(&'static str),
    #[error("this needs the {} role", .0.as_str())]
    Forbidden(Role),
    #[error("too many concurrent streams for {0:?} ({1} = {2})")]
    TooManyStreams(String, &'static str, usize),
    #[error(
        "{0:?} opens streams too fast (sessions.stream_opens_per_second = {1}); retry in {2} s"
    )]
    OpeningTooFast(String, u32, u64),
    #[error("too many outstanding tickets for {0:?} (sessions.max_tickets_per_identity = {1}); open a stream with one or let them expire")]
    TooManyTickets(String, usize),
    #[error("too many outstanding tickets (sessions.max_tickets = {0}); retry shortly")]
    TicketsFull(usize),
    #[error("the system random generator failed")]
    Random,
    /// The shared ticket store (cluster mode) failed.
    #[error(transparent)]
    Store(#[from] StoreError),
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

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Constant-time comparison of a presented secret with a configured one.
fn same_secret(presented: &str, expected: &str) -> bool {
    !expected.is_empty()
        && bool::from(sha256(presented.as_bytes()).ct_eq(&sha256(expected.as_bytes())))
}

impl KeyRing {
    pub fn new(settings: &AuthSettings) -> Self {
        let keys = settings
            .api_keys
            .iter()
            .map(|k| Key {
                name: k.name.as_str().into(),
                digest: k.key_sha256.0,
                roles: k.roles.iter().fold(0, |acc, r| acc | role_bit(*r)),
            })
            .collect();
        Self { keys }
    }

    /// No keys.
    pub fn is_empty(&self) -> bool {
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

/// Bytes one outstanding ticket costs at most: its map slot (up to 16/7 of
/// it just after the table doubled) and 64-character key, and up to two
/// expiry-queue slots with their copies of the key (redeemed tickets wait
/// there until compaction). For the memory formula in the docs; pinned by a
/// test.
pub const TICKET_BYTES: usize = 512;

struct Issued {
    identity: Identity,
    owner: Arc<str>,
    expires_ms: u64,
}

#[derive(Default)]
struct TicketBook {
    issued: HashMap<String, Issued>,
    /// Issue order = expiry order (one TTL for all). Redeemed tickets stay
    /// here until they expire or the queue is compacted.
    expiry: VecDeque<(u64, String)>,
    per_owner: HashMap<Arc<str>, usize>,
}

impl TicketBook {
    fn forget(&mut self, ticket: &str) -> Option<Issued> {
        let issued = self.issued.remove(ticket)?;
        if let Some(count) = self.per_owner.get_mut(&issued.owner) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_owner.remove(&issued.owner);
            }
        }
        Some(issued)
    }

    /// Drops expired tickets (amortised O(1): the queue is in expiry order)
    /// and keeps the queue within twice the live tickets.
    fn expire(&mut self, now_ms: u64) {
        while self.expiry.front().is_some_and(|(at, _)| *at <= now_ms) {
            if let Some((_, ticket)) = self.expiry.pop_front() {
                self.forget(&ticket);
            }
        }
        if self.expiry.len() > 2 * self.issued.len() + 64 {
            let issued = &self.issued;
            self.expiry.retain(|(_, t)| issued.contains_key(t));
        }
    }
}

/// Single-use stream tickets, in process. (A cluster keeps them in Redis:
/// [`SharedTickets`].)
pub struct Tickets {
    ttl_ms: u64,
    per_owner: usize,
    max: usize,
    clock: Arc<dyn Clock>,
    rng: SystemRandom,
    book: Mutex<TicketBook>,
}

impl Tickets {
    pub fn new(ttl_ms: u64, per_owner: usize, max: usize, clock: Arc<dyn Clock>) -> Self {
        Self {
            ttl_ms,
            per_owner,
            max,
            clock,
            rng: SystemRandom::new(),
            book: Mutex::new(TicketBook::default()),
        }
    }

    pub fn ttl_seconds(&self) -> u64 {
        self.ttl_ms / 1000
    }

    fn random(&self) -> Result<String, AuthError> {
        let mut bytes = [0u8; 32];
        self.rng.fill(&mut bytes).map_err(|_| AuthError::Random)?;
        Ok(to_hex(&bytes))
    }

    /// 256 random bits from the OS CSPRNG, hex-encoded, counted against
    /// `owner` (see [`Identity::owner`]).
    pub fn issue(&self, identity: &Identity, owner: Arc<str>) -> Result<String, AuthError> {
        let ticket = self.random()?;
        let now = self.clock.now_ms();
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        book.expire(now);
        let held = book.per_owner.get(&owner).copied().unwrap_or(0);
        if held >= self.per_owner {
            return Err(AuthError::TooManyTickets(owner.to_string(), self.per_owner));
        }
        if book.issued.len() >= self.max {
            return Err(AuthError::TicketsFull(self.max));
        }
        let expires_ms = now.saturating_add(self.ttl_ms);
        *book.per_owner.entry(owner.clone()).or_insert(0) += 1;
        book.expiry.push_back((expires_ms, ticket.clone()));
        book.issued.insert(
            ticket.clone(),
            Issued {
                identity: identity.clone(),
                owner,
                expires_ms,
            },
        );
        Ok(ticket)
    }

    /// A ticket in open mode: streams need none, so nothing is kept.
    pub fn issue_unrecorded(&self) -> Result<String, AuthError> {
        self.random()
    }

    /// Consumes a ticket: it authenticates once, and only before it expires.
    pub fn redeem(&self, ticket: &str) -> Result<Identity, AuthError> {
        let now = self.clock.now_ms();
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        match book.forget(ticket) {
            Some(issued) if issued.expires_ms > now => Ok(issued.identity.redeemed()),
            _ => Err(AuthError::BadTicket),
        }
    }

    /// Tickets held now (expired ones not yet swept included), and by `owner`.
    pub fn outstanding(&self, owner: &str) -> (usize, usize) {
        let book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        (
            book.issued.len(),
            book.per_owner.get(owner).copied().unwrap_or(0),
        )
    }
}

/// The one owner of the global stream cap.
const ALL_STREAMS: &str = "all callers";

/// Concurrent streams per owner (a key's name or a shared identity's address).
pub struct StreamLimits {
    max: usize,
    setting: &'static str,
    open: Mutex<HashMap<Arc<str>, usize>>,
}

/// One open stream's slot (and its slot under the global cap); dropping it
/// (the session ended) frees both.
pub struct StreamPermit {
    limits: Option<(Arc<StreamLimits>, Arc<str>)>,
    total: Option<Box<StreamPermit>>,
}

impl StreamPermit {
    /// Whose stream this is: the API key, or a shared identity's address.
    pub fn owner(&self) -> Option<&str> {
        self.limits.as_ref().map(|(_, owner)| &**owner)
    }
}

impl StreamLimits {
    pub fn new(max: usize, setting: &'static str) -> Arc<Self> {
        Arc::new(Self {
            max,
            setting,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Checks and takes a slot in one step.
    pub fn acquire(self: &Arc<Self>, owner: Arc<str>) -> Result<StreamPermit, AuthError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(owner.clone()).or_insert(0);
        if *count >= self.max {
            return Err(AuthError::TooManyStreams(
                owner.to_string(),
                self.setting,
                self.max,
            ));
        }
        *count += 1;
        Ok(StreamPermit {
            limits: Some((self.clone(), owner)),
            total: None,
        })
    }

    pub fn open_for(&self, owner: &str) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(owner).copied().unwrap_or(0)
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
/// How fast one owner may open streams. Every open costs the bus a
/// snapshot or a replay, and a client that opens and closes streams in a
/// loop never holds a slot long enough for the stream caps to stop it: a
/// token bucket per owner does.
pub struct OpenRate {
    per_second: u32,
    burst: u32,
    clock: Arc<dyn Clock>,
    /// Tokens (in thousandths) and when they were counted, per owner.
    buckets: Mutex<HashMap<Arc<str>, (u64, u64)>>,
    /// Owners remembered at once: addresses are unbounded. Owners whose
    /// bucket has refilled carry nothing and are forgotten first.
    max_owners: usize,
}

impl OpenRate {
    pub fn new(per_second: u32, burst: u32, max_owners: usize, clock: Arc<dyn Clock>) -> Self {
        Self {
            per_second,
            burst,
            clock,
            buckets: Mutex::new(HashMap::new()),
            max_owners: max_owners.max(1),
        }
    }

    fn full(&self) -> u64 {
        u64::from(self.burst) * 1000
    }

    /// Tokens (thousandths) after refilling from `at_ms` to `now_ms`.
    fn refilled(&self, tokens: u64, at_ms: u64, now_ms: u64) -> u64 {
        let gained = now_ms
            .saturating_sub(at_ms)
            .saturating_mul(u64::from(self.per_second));
        tokens.saturating_add(gained).min(self.full())
    }

    /// Takes one open for `owner`, or says how long to wait.
    pub fn take(&self, owner: &Arc<str>) -> Result<(), AuthError> {
        let now = self.clock.now_ms();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= self.max_owners && !buckets.contains_key(owner) {
            let full = self.full();
            buckets.retain(|_, (tokens, at)| self.refilled(*tokens, *at, now) < full);
        }
        let full = self.full();
        if buckets.len() >= self.max_owners && !buckets.contains_key(owner) {
            return Err(AuthError::OpeningTooFast(
                owner.to_string(),
                self.per_second,
                1,
            ));
        }
        let (tokens, at) = buckets.entry(owner.clone()).or_insert((full, now));
        let available = self.refilled(*tokens, *at, now);
        *at = now;
        if available < 1000 {
            *tokens = available;
            let wait_ms = (1000 - available).div_ceil(u64::from(self.per_second).max(1));
            return Err(AuthError::OpeningTooFast(
                owner.to_string(),
                self.per_second,
                wait_ms.div_ceil(1000).max(1),
            ));
        }
        *tokens = available - 1000;
        Ok(())
    }
}

pub struct Auth {
    pub keys: KeyRing,
    pub tickets: Tickets,
    /// Cluster mode: tickets live here instead of in `tickets`, so any
    /// instance redeems what any other minted.
    pub shared_tickets: Option<SharedTickets>,
    /// Named identities, under `sessions.max_streams_per_identity`.
    pub streams: Arc<StreamLimits>,
    /// Shared identities by address, under `sessions.max_streams_per_address`.
    pub addresses: Arc<StreamLimits>,
    /// Every stream, under `sessions.max_streams`: addresses are unbounded.
    pub total: Arc<StreamLimits>,
    /// Stream opens per owner, under `sessions.stream_opens_per_second`.
    pub opens: OpenRate,
    /// `Some` when `[auth.jwt]` configures a key.
    pub jwt: Option<JwtVerifier>,
    ws_token: String,
    metrics_token: String,
    mode: Mode,
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
    /// Legacy token and a wrong or missing `?token=` on a WebSocket: the seed
    /// bridge's clients expect an upgrade then close 1008, so the caller
    /// does that.
    LegacyRefused,
}

impl Auth {
    pub fn new(settings: &Settings, clock: Arc<dyn Clock>) -> Self {
        let s = &settings.sessions;
        let keys = KeyRing::new(&settings.auth);
        let jwt = settings
            .auth
            .jwt
            .as_ref()
            .map(|j| JwtVerifier::new(j, clock.clone()));
        let ws_token = settings.auth.ws_token.expose().to_owned();
        let mode = match (keys.is_empty() && jwt.is_none(), ws_token.is_empty()) {
            (false, _) => Mode::Keys,
            (true, false) => Mode::Legacy,
            (true, true) => Mode::Open,
        };
        Self {
            keys,
            shared_tickets: None,
            tickets: Tickets::new(
                u64::try_from(s.ticket_ttl.as_millis()).unwrap_or(u64::MAX),
                s.max_tickets_per_identity,
                s.max_tickets,
                clock.clone(),
            ),
            streams: StreamLimits::new(
                s.max_streams_per_identity,
                "sessions.max_streams_per_identity",
            ),
            addresses: StreamLimits::new(
                s.max_streams_per_address,
                "sessions.max_streams_per_address",
            ),
            total: StreamLimits::new(s.max_streams, "sessions.max_streams"),
            // Owners that opened lately: a few per stream allowed at once.
            opens: OpenRate::new(
                s.stream_opens_per_second,
                s.stream_opens_burst,
                s.max_streams.saturating_mul(4).max(1024),
                clock,
            ),
            jwt,
            ws_token,
            metrics_token: settings.http.metrics_token.expose().to_owned(),
            mode,
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Open dev mode: no key and no token.
    pub fn is_open(&self) -> bool {
        self.mode == Mode::Open
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
        match (self.mode, authorization) {
            (Mode::Open, _) => Ok(Identity::anonymous()),
            (_, Some(header)) => self.bearer(header),
            (Mode::Legacy, None) => Err(AuthError::MissingToken),
            (Mode::Keys, None) => Err(AuthError::Missing),
        }
    }

    fn bearer(&self, header: &str) -> Result<Identity, AuthError> {
        let (scheme, secret) = header.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed);
        }
        let secret = secret.trim();
        match self.mode {
            Mode::Legacy if same_secret(secret, &self.ws_token) => Ok(Identity::legacy()),
            Mode::Legacy => Err(AuthError::InvalidToken),
            _ => match (self.keys.verify(secret), &self.jwt) {
                (Some(identity), _) => Ok(identity),
                (None, Some(verifier)) if jwt::is_shaped(secret) => {
                    Ok(Identity::from_jwt(verifier.verify(secret)?))
                }
                (None, _) => Err(AuthError::InvalidKey),
            },
        }
    }

    /// A `?token=` on a stream that is to be verified as a JWT: one with a
    /// JWT's shape, when JWTs are on, that is not the legacy token.
    fn url_jwt<'a>(&self, token: Option<&'a str>) -> Option<&'a str> {
        token.filter(|t| self.jwt.is_some() && jwt::is_shaped(t) && !same_secret(t, &self.ws_token))
    }

    /// `GET /metrics`: open in open mode; otherwise `http.metrics_token`,
    /// any API key whatever its roles, or (legacy mode) the token.
    pub fn metrics(&self, authorization: Option<&str>) -> Result<(), AuthError> {
        if let Some(header) = authorization {
            let token = header
                .trim()
                .split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim());
            if token.is_some_and(|t| same_secret(t, &self.metrics_token)) {
                return Ok(());
            }
        }
        if self.is_open() && self.metrics_token.is_empty() {
            return Ok(());
        }
        match authorization {
            // Any edgebus role: a JWT that carries none is only a caller
            // the issuer knows, not one this service granted anything.
            Some(header) => match self.bearer(header)? {
                identity if identity.roles == 0 => Err(AuthError::Forbidden(Role::Viewer)),
                _ => Ok(()),
            },
            None if self.mode == Mode::Legacy => Err(AuthError::MissingToken),
            None => Err(AuthError::Missing),
        }
    }

    /// A ticket for `identity`, counted against its owner. In open mode no
    /// stream needs one, so none is kept.
    pub fn issue_ticket(
        &self,
        identity: &Identity,
        peer: Option<IpAddr>,
    ) -> Result<String, AuthError> {
        if self.is_open() {
            return self.tickets.issue_unrecorded();
        }
        self.tickets.issue(identity, identity.owner(peer))
    }

    /// [`Auth::issue_ticket`], or in cluster mode a ticket every instance
    /// can redeem.
    pub async fn mint_ticket(
        &self,
        identity: &Identity,
        peer: Option<IpAddr>,
    ) -> Result<String, AuthError> {
        match &self.shared_tickets {
            Some(shared) if !self.is_open() => {
                let ticket = self.tickets.issue_unrecorded()?;
                shared
                    .issue(&ticket, identity, &identity.owner(peer))
                    .await?;
                Ok(ticket)
            }
            _ => self.issue_ticket(identity, peer),
        }
    }

    /// [`Auth::stream`], redeeming a ticket from the shared store in
    /// cluster mode. A ticket decides only where `stream` would redeem one:
    /// no bearer header, and not open mode.
    pub async fn stream_shared(
        &self,
        creds: &StreamCredentials<'_>,
        websocket: bool,
    ) -> Result<StreamAuth, AuthError> {
        match (&self.shared_tickets, creds.authorization, creds.ticket) {
            (Some(shared), None, Some(ticket)) if !self.is_open() => {
                let identity = shared.redeem(ticket).await?;
                if !identity.has(Role::Viewer) {
                    return Err(AuthError::Forbidden(Role::Viewer));
                }
                Ok(StreamAuth::Granted(identity))
            }
            _ => self.stream(creds, websocket),
        }
    }

    /// Takes a stream slot: per key name, or per address for shared
    /// identities (open mode, the legacy token).
    pub fn acquire_stream(
        &self,
        identity: &Identity,
        peer: Option<IpAddr>,
    ) -> Result<StreamPermit, AuthError> {
        let limits = if identity.is_named() {
            &self.streams
        } else {
            &self.addresses
        };
        let owner = identity.owner(peer);
        self.opens.take(&owner)?;
        let mut permit = limits.acquire(owner)?;
        permit.total = Some(Box::new(self.total.acquire(ALL_STREAMS.into())?));
        Ok(permit)
    }

    /// Refuses a request whose URL carries a valid API key, or (JWTs on) a
    /// JWT, in any of the parameters a credential might be pasted into; a
    /// JWT in `?token=` passes only when
    /// `auth.jwt.allow_query_token_on_streams` admits it (SSE; see
    /// [`Auth::stream`]).
    pub fn refuse_keys_in_url(&self, query: &str) -> Result<(), AuthError> {
        if self.mode != Mode::Keys {
            return Ok(());
        }
        let query_jwt_ok = self.jwt.as_ref().is_some_and(|j| j.query_token_on_streams);
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            if !URL_SECRET_PARAMS.contains(&name.as_ref()) {
                continue;
            }
            if self.keys.verify(&value).is_some() {
                return Err(AuthError::KeyInUrl);
            }
            if self.url_jwt(Some(&value)).is_some() && !(query_jwt_ok && name == "token") {
                return Err(AuthError::JwtInUrl);
            }
        }
        Ok(())
    }

    /// A stream (SSE or WebSocket): a bearer header, a ticket, a JWT as
    /// `?token=` (SSE, and only when `auth.jwt.allow_query_token_on_streams`
    /// asks for it: older DECNET frontends), or the legacy shared token as
    /// `?token=` (WebSockets whenever it is set; every stream in legacy
    /// mode). Needs `viewer`.
    pub fn stream(
        &self,
        creds: &StreamCredentials<'_>,
        websocket: bool,
    ) -> Result<StreamAuth, AuthError> {
        let token_opens = !self.ws_token.is_empty() && (websocket || self.mode == Mode::Legacy);
        let identity = if let Some(header) = creds.authorization {
            self.bearer(header)?
        } else if let Some(ticket) = creds.ticket.filter(|_| !self.is_open()) {
            self.tickets.redeem(ticket)?
        } else if let Some(token) = self.url_jwt(creds.token) {
            match &self.jwt {
                Some(verifier) if verifier.query_token_on_streams && !websocket => {
                    Identity::from_jwt(verifier.verify(token)?)
                }
                _ => return Err(AuthError::JwtInUrl),
            }
        } else if token_opens {
            match creds.token {
                Some(presented) if same_secret(presented, &self.ws_token) => Identity::legacy(),
                _ if websocket => return Ok(StreamAuth::LegacyRefused),
                Some(_) => return Err(AuthError::InvalidToken),
                None => return Err(AuthError::MissingToken),
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
    use edgebus_actors::alerts::ManualClock;
    use std::time::Duration;

    const KEY: &str = "viewer-key-0123456789";
    const PUB: &str = "publisher-key-0123456789";

    fn auth_with_clock(extra: &str, clock: Arc<ManualClock>) -> Auth {
        let toml = format!(
            r#"[auth]
{extra}
api_keys = [
  {{ name = "ops", key = "{KEY}", roles = ["viewer"] }},
  {{ name = "tool", key = "sha256:{}", roles = ["publisher"] }},
]"#,
            to_hex(&sha256(PUB.as_bytes()))
        );
        let s = Settings::from_toml(&format!(
            "[sessions]\nmax_streams_per_identity = 2\nmax_tickets_per_identity = 3\n{toml}"
        ))
        .unwrap();
        Auth::new(&s, clock)
    }

    fn auth(extra: &str) -> Auth {
        auth_with_clock(extra, Arc::new(ManualClock::new(1_000_000)))
    }

    fn from_toml(toml: &str) -> Auth {
        Auth::new(
            &Settings::from_toml(toml).unwrap(),
            Arc::new(ManualClock::new(0)),
        )
    }

    fn granted(result: Result<StreamAuth, AuthError>) -> Identity {
        match result {
            Ok(StreamAuth::Granted(identity)) => identity,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    fn ops(a: &Auth) -> Identity {
        a.require(Some(&format!("Bearer {KEY}")), Role::Viewer)
            .unwrap()
    }

    #[test]
    fn plain_and_hashed_keys_verify_and_carry_their_roles() {
        let a = auth("");
        assert_eq!(a.mode(), Mode::Keys);
        assert_eq!(&*ops(&a).name, "ops");
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
            roles: role_bit(Role::Admin),
            proof: Proof::ApiKey,
        };
        assert!(admin.has(Role::Viewer) && admin.has(Role::Publisher));
        let open = from_toml("");
        assert!(open.is_open());
        assert_eq!(open.require(None, Role::Admin).unwrap().proof, Proof::Open);
    }

    #[test]
    fn an_owner_opening_streams_in_a_loop_is_slowed_to_its_rate_and_others_are_not() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let opens = OpenRate::new(2, 3, 2, clock.clone());
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        for _ in 0..3 {
            assert!(opens.take(&a).is_ok(), "the burst");
        }
        assert!(matches!(
            opens.take(&a),
            Err(AuthError::OpeningTooFast(_, 2, 1))
        ));
        assert!(opens.take(&b).is_ok(), "another owner is not slowed");
        clock.advance(Duration::from_millis(499));
        assert!(opens.take(&a).is_err(), "not yet half a second");
        clock.advance(Duration::from_millis(1));
        assert!(opens.take(&a).is_ok(), "one more every 1/rate");
        // Remembered owners are bounded: a third must wait while both
        // others are still refilling, and gets in once one has refilled.
        assert!(opens.take(&b).is_ok() && opens.take(&b).is_ok());
        assert!(opens.take(&c).is_err());
        clock.advance(Duration::from_secs(2));
        assert!(opens.take(&c).is_ok());
    }

    #[test]
    fn tickets_are_single_use_random_and_expire_on_the_clock() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let a = auth_with_clock("", clock.clone());
        let ops = ops(&a);
        let t1 = a.issue_ticket(&ops, None).unwrap();
        let t2 = a.issue_ticket(&ops, None).unwrap();
        assert_ne!(t1, t2);
        assert_eq!(t1.len(), 64);
        let creds = StreamCredentials {
            ticket: Some(&t1),
            ..Default::default()
        };
        let got = granted(a.stream(&creds, false));
        assert_eq!((&*got.name, got.proof), ("ops", Proof::Ticket));
        assert_eq!(a.stream(&creds, false), Err(AuthError::BadTicket));

        // One millisecond short of the TTL it still works; at the TTL it does not.
        let t3 = a.issue_ticket(&ops, None).unwrap();
        clock.advance(Duration::from_millis(59_999));
        assert!(a.tickets.redeem(&t2).is_ok());
        clock.advance(Duration::from_millis(1));
        assert_eq!(a.tickets.redeem(&t3), Err(AuthError::BadTicket));
    }

    #[test]
    fn one_identity_at_its_ticket_cap_never_blocks_another() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let a = auth_with_clock("", clock.clone());
        let ops = ops(&a);
        for _ in 0..3 {
            a.issue_ticket(&ops, None).unwrap();
        }
        assert_eq!(
            a.issue_ticket(&ops, None),
            Err(AuthError::TooManyTickets("ops".into(), 3))
        );
        let root = Identity {
            name: "root".into(),
            roles: role_bit(Role::Admin),
            proof: Proof::ApiKey,
        };
        assert!(a.issue_ticket(&root, None).is_ok());
        // Redeeming or expiry gives the slots back.
        clock.advance(Duration::from_secs(60));
        assert!(a.issue_ticket(&ops, None).is_ok());
        assert_eq!(a.tickets.outstanding("ops"), (1, 1));
    }

    #[test]
    fn the_global_ticket_cap_bounds_memory_without_sweeping_on_every_call() {
        let clock = Arc::new(ManualClock::new(0));
        let tickets = Tickets::new(1_000, 100, 5, clock.clone());
        let who = Identity::legacy();
        for i in 0..5 {
            tickets.issue(&who, format!("a{i}").into()).unwrap();
        }
        assert_eq!(
            tickets.issue(&who, "b".into()),
            Err(AuthError::TicketsFull(5))
        );
        clock.advance(Duration::from_secs(1));
        assert!(tickets.issue(&who, "b".into()).is_ok());
        assert_eq!(tickets.outstanding("b"), (1, 1));
        // Mint-and-redeem churn keeps the expiry queue bounded.
        for _ in 0..1_000 {
            let t = tickets.issue(&who, "c".into()).unwrap();
            tickets.redeem(&t).unwrap();
        }
        let book = tickets.book.lock().unwrap();
        assert!(book.expiry.len() <= 2 * book.issued.len() + 65);
    }

    #[test]
    fn open_mode_keeps_no_tickets() {
        let open = from_toml("");
        for _ in 0..100 {
            open.issue_ticket(&Identity::anonymous(), None).unwrap();
        }
        assert_eq!(open.tickets.outstanding("anonymous"), (0, 0));
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
    fn beside_keys_the_legacy_token_only_opens_websockets() {
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
        assert_eq!(
            a.require(Some("Bearer shared-secret"), Role::Viewer),
            Err(AuthError::InvalidKey)
        );
    }

    #[test]
    fn the_legacy_token_alone_guards_everything() {
        let a = from_toml("[auth]\nws_token = \"shared-secret\"");
        assert_eq!(a.mode(), Mode::Legacy);
        assert!(!a.is_open());
        assert_eq!(
            a.require(None, Role::Publisher),
            Err(AuthError::MissingToken)
        );
        assert_eq!(
            a.require(Some("Bearer shared-secreT"), Role::Viewer),
            Err(AuthError::InvalidToken)
        );
        let holder = a
            .require(Some("Bearer shared-secret"), Role::Publisher)
            .unwrap();
        assert_eq!(holder.proof, Proof::LegacyToken);
        assert_eq!(
            a.require(Some("Bearer shared-secret"), Role::Admin),
            Err(AuthError::Forbidden(Role::Admin))
        );
        let sse = |token| StreamCredentials {
            token,
            ..Default::default()
        };
        assert_eq!(a.stream(&sse(None), false), Err(AuthError::MissingToken));
        assert_eq!(
            a.stream(&sse(Some("nope")), false),
            Err(AuthError::InvalidToken)
        );
        granted(a.stream(&sse(Some("shared-secret")), false));
        assert_eq!(a.metrics(None), Err(AuthError::MissingToken));
        assert!(a.metrics(Some("Bearer shared-secret")).is_ok());
        // A ticket minted with the token stays a shared identity.
        let t = a.issue_ticket(&holder, None).unwrap();
        let creds = StreamCredentials {
            ticket: Some(&t),
            ..Default::default()
        };
        assert_eq!(granted(a.stream(&creds, false)).proof, Proof::LegacyToken);
    }

    #[test]
    fn metrics_are_open_only_in_open_mode_unless_a_metrics_token_is_set() {
        assert!(from_toml("").metrics(None).is_ok());
        let a = auth("");
        assert_eq!(a.metrics(None), Err(AuthError::Missing));
        assert!(a.metrics(Some(&format!("Bearer {PUB}"))).is_ok());
        let scrape = "[http]\nmetrics_token = \"scrape-token-0123456789\"";
        let open = from_toml(scrape);
        assert_eq!(open.metrics(None), Err(AuthError::Missing));
        assert!(open.metrics(Some("Bearer scrape-token-0123456789")).is_ok());
    }

    #[test]
    fn stream_permits_cap_each_identity_and_free_on_drop() {
        let a = auth("");
        let ops = ops(&a);
        let p1 = a.acquire_stream(&ops, None).unwrap();
        let _p2 = a.acquire_stream(&ops, None).unwrap();
        assert!(matches!(
            a.acquire_stream(&ops, None),
            Err(AuthError::TooManyStreams(_, _, 2))
        ));
        drop(p1);
        assert_eq!(a.streams.open_for("ops"), 1);
        let _p3 = a.acquire_stream(&ops, None).unwrap();
    }

    #[test]
    fn shared_identities_are_capped_per_address() {
        let a = from_toml("[sessions]\nmax_streams_per_address = 2");
        let anon = Identity::anonymous();
        let here: IpAddr = "10.0.0.1".parse().unwrap();
        let there: IpAddr = "10.0.0.2".parse().unwrap();
        let _held: Vec<_> = (0..2)
            .map(|_| a.acquire_stream(&anon, Some(here)).unwrap())
            .collect();
        assert!(matches!(
            a.acquire_stream(&anon, Some(here)),
            Err(AuthError::TooManyStreams(
                _,
                "sessions.max_streams_per_address",
                2
            ))
        ));
        assert!(a.acquire_stream(&anon, Some(there)).is_ok());
    }

    #[test]
    fn the_global_stream_cap_holds_over_every_address_and_frees_on_drop() {
        let a = from_toml("[sessions]\nmax_streams = 3\nmax_streams_per_address = 2");
        let anon = Identity::anonymous();
        let ips: Vec<IpAddr> = (1..=4)
            .map(|i| format!("10.0.0.{i}").parse().unwrap())
            .collect();
        let first = a.acquire_stream(&anon, Some(ips[0])).unwrap();
        let _held: Vec<_> = ips[1..3]
            .iter()
            .map(|ip| a.acquire_stream(&anon, Some(*ip)).unwrap())
            .collect();
        assert!(matches!(
            a.acquire_stream(&anon, Some(ips[3])),
            Err(AuthError::TooManyStreams(_, "sessions.max_streams", 3))
        ));
        // The refused attempt took no per-address slot.
        assert_eq!(a.addresses.open_for("anonymous from 10.0.0.4"), 0);
        drop(first);
        let _last = a.acquire_stream(&anon, Some(ips[3])).unwrap();
        assert_eq!(a.total.open_for(ALL_STREAMS), 3);
    }

    #[test]
    fn a_shared_ticket_record_gives_back_the_identity_and_nothing_else() {
        let a = auth("");
        let ops = a.keys.verify(KEY).unwrap();
        let record = ops.to_record();
        assert_eq!(Identity::from_record(&record), Some(ops.clone()));
        assert_eq!(
            Identity::from_record(&record).map(Identity::redeemed),
            Some(Identity {
                proof: Proof::Ticket,
                ..ops
            })
        );
        let legacy = Identity::legacy();
        assert_eq!(Identity::from_record(&legacy.to_record()), Some(legacy));
        for bad in ["", "1", "9kops", "1xops"] {
            assert_eq!(Identity::from_record(bad), None, "{bad:?}");
        }
    }

    const JWT_SECRET: &str = "unit-hs256-secret-of-at-least-32-bytes";

    fn jwt_auth(extra: &str) -> Auth {
        from_toml(&format!(
            "[auth.jwt]\nhs256_secret = \"{JWT_SECRET}\"\nissuer = \"i\"\naudience = \"a\"\n{extra}"
        ))
    }

    fn jwt_for(sub: &str, roles: &[&str]) -> String {
        let claims = serde_json::json!({
            "sub": sub, "iss": "i", "aud": "a", "exp": 600, "roles": roles,
        });
        let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()).unwrap();
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    }

    #[test]
    fn a_jwt_alone_locks_the_service_and_stands_beside_keys() {
        let a = jwt_auth("");
        assert_eq!(a.mode(), Mode::Keys, "JWTs alone are no open mode");
        assert_eq!(a.require(None, Role::Viewer), Err(AuthError::Missing));
        let viewer = a
            .require(
                Some(&format!("Bearer {}", jwt_for("alice", &["viewer"]))),
                Role::Viewer,
            )
            .unwrap();
        assert_eq!((&*viewer.name, viewer.proof), ("jwt:alice", Proof::Jwt));
        assert_eq!(
            a.require(
                Some(&format!("Bearer {}", jwt_for("alice", &["viewer"]))),
                Role::Publisher
            ),
            Err(AuthError::Forbidden(Role::Publisher))
        );
        assert!(matches!(
            a.identify(Some("Bearer a.b.c")),
            Err(AuthError::Jwt(JwtError::Malformed))
        ));
        assert_eq!(
            a.identify(Some("Bearer not-a-key-nor-a-jwt")),
            Err(AuthError::InvalidKey)
        );
        // Beside keys: the key is tried first, then the JWT.
        let both = from_toml(&format!(
            "[auth]\napi_keys = [{{ name = \"ops\", key = \"{KEY}\", roles = [\"viewer\"] }}]\n\
             [auth.jwt]\nhs256_secret = \"{JWT_SECRET}\"\nissuer = \"i\"\naudience = \"a\""
        ));
        assert_eq!(&*ops(&both).name, "ops");
        let jwt = both
            .identify(Some(&format!("Bearer {}", jwt_for("ops", &[]))))
            .unwrap();
        assert_eq!(&*jwt.name, "jwt:ops", "a subject never takes a key's name");
    }

    #[test]
    fn a_jwt_identity_round_trips_a_shared_ticket_and_is_capped_by_name() {
        let a = jwt_auth("");
        let alice = a
            .identify(Some(&format!("Bearer {}", jwt_for("alice", &["viewer"]))))
            .unwrap();
        assert!(alice.is_named());
        assert_eq!(
            &*alice.owner(Some("10.0.0.1".parse().unwrap())),
            "jwt:alice"
        );
        let record = alice.to_record();
        assert_eq!(Identity::from_record(&record), Some(alice.clone()));
        let t = a.issue_ticket(&alice, None).unwrap();
        let creds = StreamCredentials {
            ticket: Some(&t),
            ..Default::default()
        };
        let redeemed = granted(a.stream(&creds, false));
        assert_eq!(
            (&*redeemed.name, redeemed.proof),
            ("jwt:alice", Proof::Ticket)
        );
    }

    #[test]
    fn a_jwt_in_a_url_opens_sse_only_behind_the_flag() {
        let token = jwt_for("alice", &["viewer"]);
        let query = format!("topic=a&token={token}");
        let sse = StreamCredentials {
            token: Some(&token),
            ..Default::default()
        };
        let strict = jwt_auth("");
        assert_eq!(strict.refuse_keys_in_url(&query), Err(AuthError::JwtInUrl));
        assert_eq!(strict.stream(&sse, false), Err(AuthError::JwtInUrl));

        let compat = jwt_auth("allow_query_token_on_streams = true");
        assert!(compat.refuse_keys_in_url(&query).is_ok());
        assert_eq!(&*granted(compat.stream(&sse, false)).name, "jwt:alice");
        assert_eq!(
            compat.stream(&sse, true),
            Err(AuthError::JwtInUrl),
            "not WebSockets"
        );
        assert_eq!(
            compat.refuse_keys_in_url(&format!("access_token={token}")),
            Err(AuthError::JwtInUrl),
            "only ?token="
        );
        let nobody = jwt_for("eve", &[]);
        let no_role = StreamCredentials {
            token: Some(&nobody),
            ..Default::default()
        };
        assert_eq!(
            compat.stream(&no_role, false),
            Err(AuthError::Forbidden(Role::Viewer))
        );
    }

    #[test]
    fn a_ticket_costs_at_most_the_documented_bytes() {
        let key = 64;
        let slot = (std::mem::size_of::<(String, Issued)>() + 1) * 16 / 7 + key;
        let queued = 2 * (std::mem::size_of::<(u64, String)>() + key);
        assert!(
            slot + queued <= TICKET_BYTES,
            "{} > {TICKET_BYTES}",
            slot + queued
        );
    }
}
