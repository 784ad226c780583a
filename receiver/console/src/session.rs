//! Who is calling: a browser's session cookie or a program's API token, and
//! the checks a change must pass (CSRF, same origin, role, token scope).
//!
//! A session's secret lives in an `HttpOnly; SameSite=Strict` cookie; the
//! database keeps its blake3 only. Every change made with a session carries
//! the session's CSRF token (a form field, or the `X-CSRF-Token` header for
//! htmx and the API) and must not come from another site
//! (`Sec-Fetch-Site`). API tokens come as `Authorization: Bearer llt_...`,
//! act for their user with no more than the user's rights, and write only
//! when made to.

use std::sync::Arc;

use axum::http::{header, HeaderMap};
use lifeline_store::db::console::{Role, Scope, User};

use crate::{Console, Error};

/// The session cookie's name.
pub const COOKIE: &str = "ll_session";

/// A signed-in caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: User,
    how: How,
}

#[derive(Debug, Clone)]
enum How {
    Session { csrf: String },
    Token { write: bool },
}

impl Caller {
    pub fn scope(&self) -> Scope {
        self.user.scope()
    }

    /// The CSRF token pages put in their forms (`None` for API tokens).
    pub fn csrf(&self) -> Option<&str> {
        match &self.how {
            How::Session { csrf } => Some(csrf),
            How::Token { .. } => None,
        }
    }

    /// Refuses unless the caller's role is at least `role`.
    pub fn require(&self, role: Role) -> Result<(), Error> {
        if self.user.role >= role {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "this needs the role {} (you are {})",
                role.as_str(),
                self.user.role.as_str()
            )))
        }
    }

    /// May this request change something? A session must show its CSRF
    /// token (`given`: the form field or the header) and come from the
    /// console's own pages; a token must be a write token.
    pub fn may_change(&self, headers: &HeaderMap, given: Option<&str>) -> Result<(), Error> {
        match &self.how {
            How::Token { write: true } => Ok(()),
            How::Token { write: false } => Err(Error::Forbidden("this API token is read-only".into())),
            How::Session { csrf } => {
                if cross_site(headers) {
                    return Err(Error::Forbidden("a change must come from the console's own pages".into()));
                }
                let given = given.or_else(|| headers.get("x-csrf-token").and_then(|v| v.to_str().ok()));
                match given {
                    Some(g) if constant_time_eq(g.as_bytes(), csrf.as_bytes()) => Ok(()),
                    _ => Err(Error::Forbidden(
                        "the form was stale or not the console's (CSRF check): reload the page and try again".into(),
                    )),
                }
            }
        }
    }
}

/// The browser says the request comes from another site.
pub fn cross_site(headers: &HeaderMap) -> bool {
    headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()).is_some_and(|s| s == "cross-site" || s == "same-site")
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// The value of cookie `name`.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value for `name` (`None`: remove it).
pub fn set_cookie(name: &str, value: Option<&str>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match value {
        Some(v) => format!("{name}={v}; Path=/; HttpOnly; SameSite=Strict{secure}"),
        None => format!("{name}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

/// What a session cookie stands for, second factor given or not.
pub struct Seen {
    pub user: User,
    pub csrf: String,
    pub verified: bool,
    pub secret: String,
}

/// The session of the request's cookie, if live.
pub async fn session(console: &Arc<Console>, headers: &HeaderMap) -> Result<Option<Seen>, Error> {
    let Some(secret) = cookie(headers, COOKIE).filter(|s| s.len() <= 128).map(str::to_owned) else {
        return Ok(None);
    };
    let now = now();
    let s2 = secret.clone();
    let found = console.db(move |db| db.session(&s2, now)).await?;
    Ok(found.map(|s| Seen { user: s.user, csrf: s.csrf, verified: s.verified, secret }))
}

/// The caller of a request: its API token, else its session (with the
/// second factor given).
pub async fn caller(console: &Arc<Console>, headers: &HeaderMap) -> Result<Caller, Error> {
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        let token = auth
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .filter(|t| t.starts_with("llt_") && t.len() <= 128)
            .map(str::to_owned)
            .ok_or(Error::SignIn)?;
        let found = console.db(move |db| db.api_token(&token)).await?;
        let (user, write) = found.ok_or(Error::SignIn)?;
        return Ok(Caller { user, how: How::Token { write } });
    }
    match session(console, headers).await? {
        Some(s) if s.verified => Ok(Caller { user: s.user, how: How::Session { csrf: s.csrf } }),
        _ => Err(Error::SignIn),
    }
}
