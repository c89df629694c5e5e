//! JSON Web Tokens as bearer credentials (`[auth.jwt]`).
//!
//! The signature, `alg`, `iss` and `aud` are checked by `jsonwebtoken`;
//! `exp` and `nbf` here, on the injected [`Clock`], so tests move time
//! instead of waiting and every time rule in edgebus reads one clock. A
//! token is bounded in size before anything parses it.

use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Map, Value};

use edgebus_actors::alerts::Clock;

use crate::settings::{JwtSettings, Role, JWT_NAME_PREFIX};

/// Largest token parsed: real ones are well under 2 KiB, and a bearer is
/// read on every request.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Longest identity claim value taken as a name (it keys caps and logs).
const MAX_IDENTITY: usize = 256;

/// Why a token was refused. Every one is a 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("JWT refused: over {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("JWT refused: malformed (expected header.payload.signature in base64url JSON)")]
    Malformed,
    #[error("JWT refused: signature does not verify")]
    BadSignature,
    #[error("JWT refused: its alg is not one of auth.jwt.algorithms")]
    Algorithm,
    #[error("JWT refused: expired")]
    Expired,
    #[error("JWT refused: not valid yet (nbf)")]
    NotYetValid,
    #[error("JWT refused: wrong issuer (iss)")]
    Issuer,
    #[error("JWT refused: wrong audience (aud)")]
    Audience,
    #[error("JWT refused: claim `{0}` missing or malformed")]
    Claim(String),
    #[error("JWT refused: invalid")]
    Invalid,
}

/// What a verified token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bearer {
    /// `jwt:` and the identity claim.
    pub name: String,
    /// The edgebus roles it names; others are ignored.
    pub roles: Vec<Role>,
}

/// Three non-empty base64url parts: what is verified as a JWT rather than
/// compared with API keys.
pub fn is_shaped(token: &str) -> bool {
    let mut parts = 0;
    for part in token.split('.') {
        parts += 1;
        if parts > 3
            || part.is_empty()
            || !part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return false;
        }
    }
    parts == 3
}

pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    leeway_s: u64,
    roles_claim: String,
    default_roles: Vec<Role>,
    identity_claim: String,
    /// `?token=<jwt>` opens SSE streams.
    pub query_token_on_streams: bool,
    clock: Arc<dyn Clock>,
}

impl JwtVerifier {
    pub fn new(settings: &JwtSettings, clock: Arc<dyn Clock>) -> Self {
        let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.algorithms = settings.algorithms.clone();
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        // Checked in `verify` on the injected clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.validate_aud = true;
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        Self {
            key: settings.key.0.clone(),
            validation,
            leeway_s: settings.leeway.as_secs(),
            roles_claim: settings.roles_claim.clone(),
            default_roles: settings.default_roles.clone(),
            identity_claim: settings.identity_claim.clone(),
            query_token_on_streams: settings.allow_query_token_on_streams,
            clock,
        }
    }

    /// The bearer of a valid token: signature, `alg`, `iss`, `aud`, `exp`,
    /// `nbf`, and a usable identity claim.
    pub fn verify(&self, token: &str) -> Result<Bearer, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::TooLarge);
        }
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| refusal(e.kind()))?
            .claims;
        let now_s = self.clock.now_ms() / 1000;
        let exp = numeric_date(claims.get("exp")).ok_or_else(|| JwtError::Claim("exp".into()))?;
        if now_s >= exp.saturating_add(self.leeway_s) {
            return Err(JwtError::Expired);
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = numeric_date(Some(nbf)).ok_or_else(|| JwtError::Claim("nbf".into()))?;
            if now_s.saturating_add(self.leeway_s) < nbf {
                return Err(JwtError::NotYetValid);
            }
        }
        let name = match claim(&claims, &self.identity_claim) {
            Some(Value::String(name))
                if !name.is_empty()
                    && name.len() <= MAX_IDENTITY
                    && !name.chars().any(char::is_control) =>
            {
                format!("{JWT_NAME_PREFIX}{name}")
            }
            _ => return Err(JwtError::Claim(self.identity_claim.clone())),
        };
        let roles = match claim(&claims, &self.roles_claim) {
            None => self.default_roles.clone(),
            some => roles(some).ok_or_else(|| JwtError::Claim(self.roles_claim.clone()))?,
        };
        Ok(Bearer { name, roles })
    }
}

fn refusal(kind: &ErrorKind) -> JwtError {
    match kind {
        ErrorKind::InvalidSignature => JwtError::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName => JwtError::Algorithm,
        ErrorKind::InvalidIssuer => JwtError::Issuer,
        ErrorKind::InvalidAudience => JwtError::Audience,
        ErrorKind::ExpiredSignature => JwtError::Expired,
        ErrorKind::ImmatureSignature => JwtError::NotYetValid,
        ErrorKind::MissingRequiredClaim(c) | ErrorKind::InvalidClaimFormat(c) => {
            JwtError::Claim(c.clone())
        }
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => JwtError::Malformed,
        _ => JwtError::Invalid,
    }
}

/// Seconds since the epoch (RFC 7519 allows fractions; they are dropped).
fn numeric_date(value: Option<&Value>) -> Option<u64> {
    let number = value?.as_number()?;
    number.as_u64().or_else(|| {
        number
            .as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f as u64)
    })
}

/// A claim by its exact name (`roles`, `https://example.com/roles`), else
/// by a dotted path into nested objects (`realm_access.roles`).
fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(name) {
        return Some(value);
    }
    let mut parts = name.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// The edgebus roles in a roles claim: a list of names, or one string of
/// space-separated names (OAuth `scope` style). Absent = none; any other
/// shape is `None` (refused).
fn roles(value: Option<&Value>) -> Option<Vec<Role>> {
    let mut out = Vec::new();
    let mut add = |name: &str| {
        if let Some(role) = Role::parse(name) {
            if !out.contains(&role) {
                out.push(role);
            }
        }
    };
    match value {
        None | Some(Value::Null) => {}
        Some(Value::String(names)) => names.split_whitespace().for_each(&mut add),
        Some(Value::Array(names)) => {
            for name in names {
                add(name.as_str()?);
            }
        }
        Some(_) => return None,
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use serde_json::json;

    use super::*;
    use crate::settings::Settings;
    use edgebus_actors::alerts::ManualClock;

    const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes";
    const NOW_S: u64 = 1_800_000_000;
    const ES_PRIVATE: &str = include_str!("../../tests/fixtures/jwt/es256_private.pem");
    const ES_PUBLIC: &str = include_str!("../../tests/fixtures/jwt/es256_public.pem");
    const OTHER_ES_PRIVATE: &str = include_str!("../../tests/fixtures/jwt/other_es256_private.pem");
    const RS_PRIVATE: &str = include_str!("../../tests/fixtures/jwt/rs256_private.pem");
    const RS_PUBLIC: &str = include_str!("../../tests/fixtures/jwt/rs256_public.pem");

    fn verifier(jwt_toml: &str) -> (JwtVerifier, Arc<ManualClock>) {
        let settings = Settings::from_toml(&format!(
            "[auth.jwt]\nissuer = \"https://idp.example\"\naudience = \"edgebus\"\n{jwt_toml}"
        ))
        .unwrap();
        let clock = Arc::new(ManualClock::new(NOW_S * 1000));
        (
            JwtVerifier::new(settings.auth.jwt.as_ref().unwrap(), clock.clone()),
            clock,
        )
    }

    fn hs() -> (JwtVerifier, Arc<ManualClock>) {
        verifier(&format!("hs256_secret = \"{SECRET}\""))
    }

    fn claims() -> Value {
        json!({
            "sub": "alice",
            "iss": "https://idp.example",
            "aud": "edgebus",
            "exp": NOW_S + 300,
            "roles": ["viewer", "publisher", "dba"],
        })
    }

    fn sign_hs(claims: &Value) -> String {
        let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        encode(&Header::new(Algorithm::HS256), claims, &key).unwrap()
    }

    fn with(changes: Value) -> Value {
        let mut c = claims();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    }

    #[test]
    fn a_good_hs256_token_names_its_subject_and_known_roles() {
        let (v, _) = hs();
        assert_eq!(
            v.verify(&sign_hs(&claims())),
            Ok(Bearer {
                name: "jwt:alice".into(),
                roles: vec![Role::Viewer, Role::Publisher],
            })
        );
    }

    #[test]
    fn es256_and_rs256_keys_verify_their_own_signatures_only() {
        let (es, _) = verifier(&format!("public_key_pem = \"\"\"\n{ES_PUBLIC}\"\"\""));
        let es_key = EncodingKey::from_ec_pem(ES_PRIVATE.as_bytes()).unwrap();
        let token = encode(&Header::new(Algorithm::ES256), &claims(), &es_key).unwrap();
        assert_eq!(es.verify(&token).unwrap().name, "jwt:alice");
        let other = EncodingKey::from_ec_pem(OTHER_ES_PRIVATE.as_bytes()).unwrap();
        let forged = encode(&Header::new(Algorithm::ES256), &claims(), &other).unwrap();
        assert_eq!(es.verify(&forged), Err(JwtError::BadSignature));

        let (rs, _) = verifier(&format!("public_key_pem = \"\"\"\n{RS_PUBLIC}\"\"\""));
        let rs_key = EncodingKey::from_rsa_pem(RS_PRIVATE.as_bytes()).unwrap();
        let token = encode(&Header::new(Algorithm::RS256), &claims(), &rs_key).unwrap();
        assert_eq!(rs.verify(&token).unwrap().name, "jwt:alice");
        // The ES256 token is refused by the RSA key for its alg alone.
        let es_token = encode(&Header::new(Algorithm::ES256), &claims(), &es_key).unwrap();
        assert_eq!(rs.verify(&es_token), Err(JwtError::Algorithm));
    }

    #[test]
    fn an_hs256_token_signed_with_the_public_key_is_refused() {
        // The classic confusion: HS256 keyed with the verifier's public key.
        let (es, _) = verifier(&format!("public_key_pem = \"\"\"\n{ES_PUBLIC}\"\"\""));
        let key = EncodingKey::from_secret(ES_PUBLIC.as_bytes()).unwrap();
        let token = encode(&Header::new(Algorithm::HS256), &claims(), &key).unwrap();
        assert_eq!(es.verify(&token), Err(JwtError::Algorithm));
    }

    #[test]
    fn expiry_and_not_before_follow_the_clock_with_leeway() {
        let (v, clock) = hs();
        let token = sign_hs(&with(json!({ "exp": NOW_S + 10, "nbf": NOW_S + 40 })));
        // nbf is 40 s ahead: with 30 s of leeway, 10 s more make it valid.
        assert_eq!(v.verify(&token), Err(JwtError::NotYetValid));
        clock.advance(Duration::from_secs(10));
        assert!(v.verify(&token).is_ok());
        // exp + leeway = NOW + 40: valid one second before, expired at it.
        clock.advance(Duration::from_secs(29));
        assert!(v.verify(&token).is_ok());
        clock.advance(Duration::from_secs(1));
        assert_eq!(v.verify(&token), Err(JwtError::Expired));
    }

    #[test]
    fn each_wrong_claim_gets_its_own_refusal() {
        let (v, _) = hs();
        let table = [
            (json!({ "iss": "https://evil.example" }), JwtError::Issuer),
            (json!({ "aud": "someone-else" }), JwtError::Audience),
            (json!({ "aud": ["a", "b"] }), JwtError::Audience),
            (json!({ "iss": null }), JwtError::Claim("iss".into())),
            (json!({ "aud": null }), JwtError::Claim("aud".into())),
            (json!({ "exp": null }), JwtError::Claim("exp".into())),
            (json!({ "exp": "tomorrow" }), JwtError::Claim("exp".into())),
            (json!({ "exp": NOW_S - 31 }), JwtError::Expired),
            (json!({ "sub": null }), JwtError::Claim("sub".into())),
            (json!({ "sub": "" }), JwtError::Claim("sub".into())),
            (json!({ "sub": "a\nb" }), JwtError::Claim("sub".into())),
            (json!({ "sub": 42 }), JwtError::Claim("sub".into())),
            (json!({ "roles": 7 }), JwtError::Claim("roles".into())),
            (
                json!({ "roles": ["viewer", 7] }),
                JwtError::Claim("roles".into()),
            ),
        ];
        for (changes, expected) in table {
            let token = sign_hs(&with(changes.clone()));
            assert_eq!(v.verify(&token), Err(expected), "{changes}");
        }
        // An audience list naming edgebus among others is fine.
        assert!(v
            .verify(&sign_hs(&with(json!({ "aud": ["x", "edgebus"] }))))
            .is_ok());
    }

    #[test]
    fn roles_may_be_a_space_separated_string_nested_or_absent() {
        let (v, _) = hs();
        let scope = v.verify(&sign_hs(&with(json!({ "roles": "admin openid" }))));
        assert_eq!(scope.unwrap().roles, vec![Role::Admin]);
        let none = v.verify(&sign_hs(&with(json!({ "roles": null }))));
        assert_eq!(none.unwrap().roles, vec![]);

        let (nested, _) = verifier(&format!(
            "hs256_secret = \"{SECRET}\"\nroles_claim = \"realm_access.roles\"\nidentity_claim = \"preferred_username\""
        ));
        let token = sign_hs(&with(json!({
            "realm_access": { "roles": ["viewer"] },
            "preferred_username": "bob",
        })));
        assert_eq!(
            nested.verify(&token),
            Ok(Bearer {
                name: "jwt:bob".into(),
                roles: vec![Role::Viewer]
            })
        );
    }

    #[test]
    fn tampering_oversize_and_garbage_are_refused_before_any_claim_is_read() {
        let (v, _) = hs();
        let token = sign_hs(&claims());
        let (head, sig) = token.rsplit_once('.').unwrap();
        let admin = with(json!({ "roles": ["admin"] }));
        let forged_payload = sign_hs(&admin);
        let payload = forged_payload.split('.').nth(1).unwrap();
        let header = head.split('.').next().unwrap();
        let tampered = format!("{header}.{payload}.{sig}");
        assert_eq!(v.verify(&tampered), Err(JwtError::BadSignature));

        let huge = format!("{head}.{}", "A".repeat(MAX_TOKEN_BYTES));
        assert_eq!(v.verify(&huge), Err(JwtError::TooLarge));
        assert_eq!(v.verify("a.b.c"), Err(JwtError::Malformed));
        // alg "none" is never accepted.
        let none = format!("eyJhbGciOiJub25lIn0.{payload}.");
        assert!(v.verify(&none).is_err());
    }

    #[test]
    fn only_three_base64url_parts_look_like_a_jwt() {
        assert!(is_shaped("eyJh.eyJz.c2ln"));
        assert!(is_shaped("a-_.b.c"));
        for not in [
            "viewer-key-0123456789",
            "a.b",
            "a.b.c.d",
            "a..c",
            "a.b.",
            "a.b+.c",
            "a.b.c=",
        ] {
            assert!(!is_shaped(not), "{not}");
        }
    }

    #[test]
    fn settings_refuse_what_cannot_work() {
        let err = |toml: &str| Settings::from_toml(toml).unwrap_err().to_string();
        let base = "[auth.jwt]\nissuer = \"i\"\naudience = \"a\"\n";
        let table = [
            (format!("{base}hs256_secret = \"short\""), "auth.jwt.hs256_secret"),
            (
                format!("[auth.jwt]\naudience = \"a\"\nhs256_secret = \"{SECRET}\""),
                "auth.jwt.issuer",
            ),
            (
                format!("[auth.jwt]\nissuer = \"i\"\nhs256_secret = \"{SECRET}\""),
                "auth.jwt.audience",
            ),
            (
                format!("{base}hs256_secret = \"{SECRET}\"\npublic_key_pem = \"x\""),
                "auth.jwt",
            ),
            (format!("{base}public_key_pem = \"not a key\""), "auth.jwt.public_key_pem"),
            (
                format!("{base}public_key_pem = \"\"\"\n{ES_PRIVATE}\"\"\""),
                "auth.jwt.public_key_pem",
            ),
            (
                format!("{base}public_key_file = \"/nonexistent/key.pem\""),
                "auth.jwt.public_key_file",
            ),
            (
                format!("{base}public_key_pem = \"\"\"\n{ES_PUBLIC}\"\"\"\nalgorithms = [\"HS256\"]"),
                "auth.jwt.algorithms",
            ),
            (
                format!("{base}hs256_secret = \"{SECRET}\"\nalgorithms = [\"HS257\"]"),
                "auth.jwt.algorithms",
            ),
            (
                "[auth.jwt]\nallow_query_token_on_streams = true".to_owned(),
                "auth.jwt.allow_query_token_on_streams",
            ),
            (
                "[auth]\napi_keys = [{ name = \"jwt:x\", key = \"0123456789abcdef\", roles = [\"viewer\"] }]"
                    .to_owned(),
                "auth.api_keys[0].name",
            ),
        ];
        for (toml, key) in table {
            let line = err(&toml);
            assert!(line.contains(&format!("`{key}`")), "{toml:?} gave {line:?}");
        }
        assert!(Settings::from_toml("").unwrap().auth.jwt.is_none());
        let file = Settings::from_toml(&format!(
            "{base}public_key_file = \"{}/tests/fixtures/jwt/rs256_public.pem\"",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let jwt = file.auth.jwt.unwrap();
        assert_eq!(jwt.algorithms, vec![Algorithm::RS256]);
        assert!(
            !format!("{jwt:?}").contains("MII"),
            "no key material in Debug"
        );
        let hs = Settings::from_toml(&format!("{base}hs256_secret = \"{SECRET}\"")).unwrap();
        assert!(!format!("{hs:?}").contains(SECRET));
    }
}
