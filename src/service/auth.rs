//! Passwords (argon2id) and tokens (HS256 JWTs with expiry).

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
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

    pub fn issue(&self, user_id: u64) -> AppResult<IssuedToken> {
        let now = (now_ms() / 1000) as u64;
        let exp = now + self.ttl_secs;
        let claims = Claims {
            sub: user_id.to_string(),
            exp,
            iat: now,
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AppError::Unavailable(format!("cannot sign token: {e}")))?;
        Ok(IssuedToken {
            token,
            expires_at_ms: (exp * 1000) as i64,
        })
    }

    /// The user id of a valid, unexpired token.
    pub fn verify(&self, token: &str) -> AppResult<u64> {
        let data = decode::<Claims>(token.trim(), &self.decoding, &self.validation)
            .map_err(|e| AppError::Unauthenticated(format!("invalid token: {e}")))?;
        data.claims
            .sub
            .parse::<u64>()
            .map_err(|_| AppError::Unauthenticated("invalid token subject".into()))
    }

    /// The user id of an `Authorization` header value (`Bearer <token>`).
    pub fn verify_bearer(&self, header: Option<&str>) -> AppResult<u64> {
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

    #[tokio::test]
    async fn tokens_round_trip_and_reject_tampering() {
        let auth = AuthService::new(b"0123456789abcdef0123456789abcdef", 60).unwrap();
        let t = auth.issue(42).unwrap();
        assert_eq!(auth.verify(&t.token).unwrap(), 42);
        assert_eq!(
            auth.verify_bearer(Some(&format!("Bearer {}", t.token)))
                .unwrap(),
            42
        );
        let other = AuthService::new(b"another-secret-another-secret-xx", 60).unwrap();
        assert!(other.verify(&t.token).is_err());
        assert!(auth.verify("garbage").is_err());
        assert!(auth.verify_bearer(Some("Basic abc")).is_err());
        assert!(auth.verify_bearer(None).is_err());
    }

    #[tokio::test]
    async fn expired_tokens_are_rejected() {
        let auth = AuthService::new(b"0123456789abcdef0123456789abcdef", 0).unwrap();
        let claims = Claims {
            sub: "7".into(),
            exp: 1_000,
            iat: 900,
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &auth.encoding).unwrap();
        assert!(auth.verify(&token).is_err());
    }

    #[tokio::test]
    async fn passwords_verify() {
        let auth = AuthService::new(b"0123456789abcdef0123456789abcdef", 60).unwrap();
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
