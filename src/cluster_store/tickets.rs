//! Stream tickets shared by every instance: a ticket minted through one
//! instance opens a stream on any, once.
//!
//! - A ticket is kept as `{prefix}:ticket:{sha256 hex of the ticket}`, never
//!   the ticket itself (a reader of Redis cannot open streams), holding the
//!   owner's digest and the identity, with the ticket's TTL (`SET … PX ttl
//!   NX`). Redeeming is `GETDEL`: of two instances redeeming one ticket at
//!   the same moment exactly one gets it.
//! - The caps count live tickets in two sorted sets (member: the ticket's
//!   digest, score: when it expires, on Redis's clock):
//!   `{prefix}:tickets-of:{sha256 hex of the owner}` per owner and
//!   `{prefix}:tickets` for all. Minting prunes expired members, checks
//!   both `ZCARD`s and stores the ticket in one script, so instances racing
//!   for an owner's last ticket cannot both have it; redeeming removes the
//!   digest from both in the `GETDEL`'s script. So Redis holds at most
//!   `sessions.max_tickets` tickets (each key, and its two members), and a
//!   set with nothing live left expires with its last ticket.

use std::sync::Arc;

use super::{sha256_hex, Link, StoreError, NOW_MS_LUA};
use crate::auth::{AuthError, Identity};
use crate::settings::{ClusterSettings, SessionSettings};

/// KEYS: ticket, owner's set, all tickets. ARGV: digest, record, ttl ms,
/// per-owner cap, total cap. 0 = stored, 1 = owner full, 2 = all full,
/// 3 = the digest exists (a 256-bit collision: never in practice).
const MINT_SCRIPT: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return 1 end
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[5]) then return 2 end
if not redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3], 'NX') then return 3 end
local expires = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], expires, ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], expires, ARGV[1])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return 0
";

/// KEYS: ticket, all tickets. ARGV: digest, the owner sets' key prefix.
/// The record (or nil); the owner's set is named by the record's first 64
/// characters, which only this module writes.
const REDEEM_SCRIPT: &str = r"
local record = redis.call('GETDEL', KEYS[1])
if not record then return false end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', ARGV[2] .. string.sub(record, 1, 64), ARGV[1])
return record
";

/// Length of a ticket [`crate::auth::Tickets`] mints: 32 random bytes, hex.
const TICKET_LEN: usize = 64;

/// Tickets in Redis, for cluster mode.
#[derive(Debug)]
pub struct SharedTickets {
    link: Link,
    ttl_ms: u64,
    per_owner: usize,
    max: usize,
    /// `{prefix}:` and the derived key prefixes.
    ticket_prefix: String,
    owner_prefix: String,
    all_key: String,
    mint: redis::Script,
    redeem: redis::Script,
}

impl SharedTickets {
    pub fn new(cluster: &ClusterSettings, sessions: &SessionSettings, link: Link) -> Self {
        Self {
            link,
            ttl_ms: u64::try_from(sessions.ticket_ttl.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            per_owner: sessions.max_tickets_per_identity,
            max: sessions.max_tickets,
            ticket_prefix: cluster.key("ticket:"),
            owner_prefix: cluster.key("tickets-of:"),
            all_key: cluster.key("tickets"),
            mint: redis::Script::new(&format!("{NOW_MS_LUA}{MINT_SCRIPT}")),
            redeem: redis::Script::new(REDEEM_SCRIPT),
        }
    }

    /// Stores `ticket` (minted by the caller) for `identity`, counted
    /// against `owner` and against every instance's tickets.
    pub async fn issue(
        &self,
        ticket: &str,
        identity: &Identity,
        owner: &Arc<str>,
    ) -> Result<(), AuthError> {
        let digest = sha256_hex(ticket.as_bytes());
        let owner_hex = sha256_hex(owner.as_bytes());
        let record = format!("{owner_hex}{}", identity.to_record());
        let mut invocation = self.mint.key(format!("{}{digest}", self.ticket_prefix));
        invocation
            .key(format!("{}{owner_hex}", self.owner_prefix))
            .key(&self.all_key)
            .arg(&digest)
            .arg(record)
            .arg(self.ttl_ms)
            .arg(self.per_owner)
            .arg(self.max);
        let outcome: i64 = self.link.run("mint a ticket", &invocation).await?;
        match outcome {
            0 => Ok(()),
            1 => Err(AuthError::TooManyTickets(owner.to_string(), self.per_owner)),
            2 => Err(AuthError::TicketsFull(self.max)),
            _ => Err(AuthError::Store(StoreError::Redis(
                "a new ticket's digest is already stored".into(),
            ))),
        }
    }

    /// Consumes `ticket`: it authenticates once, on whichever instance
    /// redeems it first, and only before it expires.
    pub async fn redeem(&self, ticket: &str) -> Result<Identity, AuthError> {
        // Nothing else was ever minted: no need to ask Redis (and a
        // malformed ticket is a 401 even while Redis is away).
        if ticket.len() != TICKET_LEN || !ticket.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AuthError::BadTicket);
        }
        let digest = sha256_hex(ticket.as_bytes());
        let mut invocation = self.redeem.key(format!("{}{digest}", self.ticket_prefix));
        invocation
            .key(&self.all_key)
            .arg(&digest)
            .arg(&self.owner_prefix);
        let record: Option<String> = self.link.run("redeem a ticket", &invocation).await?;
        let record = record.ok_or(AuthError::BadTicket)?;
        record
            .get(TICKET_LEN..)
            .and_then(Identity::from_record)
            .map(Identity::redeemed)
            .ok_or_else(|| {
                AuthError::Store(StoreError::Redis(
                    "a stored ticket is not in this version's form".into(),
                ))
            })
    }
}
