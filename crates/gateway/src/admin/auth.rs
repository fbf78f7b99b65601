//! The bearer token, and the actor every guarded request runs as.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use tracing::warn;

use super::AppState;
use super::error::ApiError;

/// The configured token, kept as its SHA-256 so comparing takes the same time whatever
/// the length or content of the candidate.
pub struct Token {
    digest: [u8; 32],
    name: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// The token `value`, recorded in the audit log as `name`.
    pub fn new(value: &str, name: &str) -> Token {
        Token {
            digest: sha256(value.as_bytes()),
            name: name.to_owned(),
        }
    }

    /// True when `candidate` is the token (constant time).
    pub fn matches(&self, candidate: &[u8]) -> bool {
        self.digest.ct_eq(&sha256(candidate)).into()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

/// Who made a request, for the audit log and the request log: the token's name (or
/// `local` without a token) and the client address.
#[derive(Debug, Clone)]
pub struct Actor {
    /// `[admin] token_name`, or `local`.
    pub name: String,
    /// The client's address.
    pub address: SocketAddr,
}

/// The actor recorded when no token is configured (loopback only).
pub const LOCAL: &str = "local";

/// Refuses a guarded request without the token (401, `WWW-Authenticate: Bearer`);
/// otherwise hands the [`Actor`] to the handler and back to the request log.
pub async fn require_token(
    State(state): State<AppState>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let name = match &state.token {
        None => LOCAL.to_owned(),
        Some(token) => {
            let presented = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| bearer(v.as_bytes()));
            match presented {
                Some(candidate) if token.matches(candidate) => token.name.clone(),
                Some(_) => {
                    warn!(%address, "admin API: wrong bearer token");
                    return unauthorized("wrong bearer token");
                }
                None => return unauthorized("this route needs Authorization: Bearer <token>"),
            }
        }
    };
    let actor = Actor { name, address };
    req.extensions_mut().insert(actor.clone());
    let mut response = next.run(req).await;
    response.extensions_mut().insert(actor);
    response
}

/// The credentials of an `Authorization: Bearer ...` header (scheme case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

fn unauthorized(reason: &str) -> Response {
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, reason).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bear"), None);
    }

    #[test]
    fn token_compare() {
        let t = Token::new("0123456789abcdef", "ci");
        assert!(t.matches(b"0123456789abcdef"));
        assert!(!t.matches(b"0123456789abcdeF"));
        assert!(!t.matches(b""));
        assert!(!format!("{t:?}").contains("0123"));
    }
}
