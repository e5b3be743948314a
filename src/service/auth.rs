//! Passwords (argon2id) and tokens (HS256 JWTs with expiry). A token
//! carries its user's issue number (`jti`): the user's record says which
//! numbers are revoked (see `tokens`).

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::{AppError, AppResult};
use crate::model::ids::now_ms;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// The user id, as a decimal string.
    sub: String,
    /// Expiry, seconds since the epoch.
    exp: u64,
    iat: u64,
    /// Not valid before (seconds since the epoch); Herald issues none, but
    /// honours it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    /// The user's issue number of the token, as a decimal string. Tokens
    /// from before numbers existed have none and count as number 0, which
    /// any logout-all revokes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
}

/// Who a validly signed, unexpired token speaks for, and which token it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub user_id: u64,
    /// The token's issue number among the user's tokens.
    pub token_number: u64,
    /// When the token expires, ms since the epoch.
    pub expires_at_ms: i64,
}

pub struct AuthService {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_secs: u64,
    /// A real hash to verify against for unknown users, so a login's timing
    /// does not tell whether the username exists.
    dummy_hash: String,
    hashing: tokio::sync::Semaphore,
}

/// Password hashes computed at once (each takes a core and 19 MiB).
const HASH_CONCURRENCY: usize = 2;

/// An issued token.
pub struct IssuedToken {
    pub token: String,
    pub expires_at_ms: i64,
}

impl AuthService {
    pub fn new(secret: &[u8], ttl_secs: u64) -> AppResult<AuthService> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let dummy_hash = hash_password_blocking("herald-timing-equalizer")?;
        Ok(AuthService {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_secs,
            dummy_hash,
            hashing: tokio::sync::Semaphore::new(HASH_CONCURRENCY),
        })
    }

    /// Hashes on the blocking pool: argon2 takes tens of milliseconds and
    /// 19 MiB, so at most `HASH_CONCURRENCY` run at once.
    pub async fn hash_password(&self, password: String) -> AppResult<String> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|_| AppError::Unavailable("shutting down".into()))?;
        tokio::task::spawn_blocking(move || hash_password_blocking(&password))
            .await
            .map_err(|_| AppError::Unavailable("password hashing failed".into()))?
    }

    /// Verifies `password` against `hash` (or against a dummy when `None`).
    pub async fn verify_password(&self, password: String, hash: Option<String>) -> bool {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.clone());
        let Ok(_permit) = self.hashing.acquire().await else {
            return false;
        };
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        ok && known
    }

    /// Signs token `number` (the user's issue number) for `user_id`.
    pub fn issue(&self, user_id: u64, number: u64) -> AppResult<IssuedToken> {
        let now = (now_ms() / 1000) as u64;
        let exp = now + self.ttl_secs;
        let claims = Claims {
            sub: user_id.to_string(),
            exp,
            iat: now,
            nbf: None,
            jti: Some(number.to_string()),
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AppError::Unavailable(format!("cannot sign token: {e}")))?;
        Ok(IssuedToken {
            token,
            expires_at_ms: (exp * 1000) as i64,
        })
    }

    /// The caller of a validly signed token within its validity (`nbf` to
    /// `exp`). Whether its user exists and the token is not revoked is for
    /// `Tokens::authenticate` to say. The messages never show the JWT
    /// library's own (they named its internals).
    pub fn verify(&self, token: &str) -> AppResult<Caller> {
        let data =
            decode::<Claims>(token.trim(), &self.decoding, &self.validation).map_err(|e| {
                let (reason, message) = match e.kind() {
                    ErrorKind::ExpiredSignature => ("expired", "token expired"),
                    ErrorKind::ImmatureSignature => ("not_yet_valid", "token not yet valid"),
                    _ => ("invalid", "invalid token"),
                };
                tracing::debug!(error = %e, "token refused");
                rejected(reason, message)
            })?;
        let claims = data.claims;
        let user_id =
            parse_decimal(&claims.sub).ok_or_else(|| rejected("invalid", "invalid token"))?;
        let token_number = match claims.jti.as_deref() {
            None => 0,
            Some(jti) => parse_decimal(jti).ok_or_else(|| rejected("invalid", "invalid token"))?,
        };
        Ok(Caller {
            user_id,
            token_number,
            expires_at_ms: i64::try_from(claims.exp.saturating_mul(1000)).unwrap_or(i64::MAX),
        })
    }

    /// The token of an `Authorization` header value (`Bearer <token>`),
    /// verified as [`AuthService::verify`] does.
    pub fn verify_bearer(&self, header: Option<&str>) -> AppResult<Caller> {
        let header = header
            .ok_or_else(|| AppError::Unauthenticated("missing Authorization header".into()))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| {
                AppError::Unauthenticated("Authorization must be `Bearer <token>`".into())
            })?;
        self.verify(token)
    }
}

/// A refused token, counted by why.
pub(crate) fn rejected(reason: &'static str, message: &str) -> AppError {
    metrics::counter!("herald_tokens_rejected_total", "reason" => reason).increment(1);
    AppError::Unauthenticated(message.to_string())
}

/// A claim of decimal digits (no sign, no spaces).
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn hash_password_blocking(password: &str) -> AppResult<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AppError::Unavailable(format!("cannot hash password: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn sign(auth: &AuthService, header: &Header, claims: &serde_json::Value) -> String {
        encode(header, claims, &auth.encoding).unwrap()
    }

    fn now_secs() -> u64 {
        (now_ms() / 1000) as u64
    }

    #[tokio::test]
    async fn tokens_round_trip_and_reject_tampering() {
        let auth = AuthService::new(SECRET, 60).unwrap();
        let t = auth.issue(42, 7).unwrap();
        let caller = auth.verify(&t.token).unwrap();
        assert_eq!((caller.user_id, caller.token_number), (42, 7));
        assert_eq!(caller.expires_at_ms, t.expires_at_ms);
        let bearer = auth.verify_bearer(Some(&format!("Bearer {}", t.token)));
        assert_eq!(bearer.unwrap(), caller);
        let other = AuthService::new(b"another-secret-another-secret-xx", 60).unwrap();
        assert!(other.verify(&t.token).is_err());
        assert!(auth.verify("garbage").is_err());
        assert!(auth.verify_bearer(Some("Basic abc")).is_err());
        assert!(auth.verify_bearer(None).is_err());
    }

    #[tokio::test]
    async fn expired_and_immature_tokens_are_refused_by_name() {
        let auth = AuthService::new(SECRET, 0).unwrap();
        let header = Header::new(Algorithm::HS256);
        let expired = sign(
            &auth,
            &header,
            &serde_json::json!({"sub": "7", "exp": 1000, "iat": 900}),
        );
        assert_eq!(
            auth.verify(&expired).unwrap_err().to_string(),
            "token expired"
        );
        let later = now_secs() + 3600;
        let immature =
            serde_json::json!({"sub": "7", "exp": later + 60, "iat": now_secs(), "nbf": later});
        let err = auth.verify(&sign(&auth, &header, &immature)).unwrap_err();
        assert_eq!(err.to_string(), "token not yet valid");
        let legacy = serde_json::json!({"sub": "7", "exp": later, "iat": now_secs()});
        let caller = auth.verify(&sign(&auth, &header, &legacy)).unwrap();
        assert_eq!(caller.token_number, 0, "a token without jti is number 0");
    }

    #[tokio::test]
    async fn messages_never_show_library_internals() {
        let auth = AuthService::new(SECRET, 60).unwrap();
        let b64 = |v: &str| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
        };
        let exp = now_secs() + 60;
        let body = b64(&format!(r#"{{"sub":"7","exp":{exp},"iat":1}}"#));
        let unsigned = format!("{}.{body}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
        let numbered = serde_json::json!({"sub": "7", "exp": exp, "iat": 1, "jti": "x1"});
        let bad_jti = sign(&auth, &Header::new(Algorithm::HS256), &numbered);
        let bad_sub = serde_json::json!({"sub": "-7", "exp": exp, "iat": 1});
        let bad_sub = sign(&auth, &Header::new(Algorithm::HS256), &bad_sub);
        for token in [
            unsigned.as_str(),
            "a.b.c",
            "",
            bad_jti.as_str(),
            bad_sub.as_str(),
        ] {
            let err = auth.verify(token).unwrap_err();
            assert_eq!(err.to_string(), "invalid token", "{token}");
            assert_eq!(err.code(), "unauthenticated");
        }
    }

    #[tokio::test]
    async fn passwords_verify() {
        let auth = AuthService::new(SECRET, 60).unwrap();
        let h = auth.hash_password("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(
            auth.verify_password("correct horse".into(), Some(h.clone()))
                .await
        );
        assert!(!auth.verify_password("wrong".into(), Some(h)).await);
        assert!(
            !auth
                .verify_password("herald-timing-equalizer".into(), None)
                .await
        );
    }
}
