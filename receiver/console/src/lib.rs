//! Lifeline's web console, served by the receiver (`lifeline-receiver serve
//! --console-listen ADDR`) over HTTPS, in the receiver's process and on its
//! management database: the provider's staff and its customers' users sign
//! in and see, each, only what their customer owns.
//!
//! - [`serve`]: the listener and its bounds.
//! - [`session`]: who is calling (a session cookie or an API token), CSRF.
//! - [`api`]: the one typed API: each operation is a function taking the
//!   caller, used by the JSON routes (`/api/v1/...`, described by
//!   `/api/v1/openapi.json`) and by the pages alike.
//! - [`pages`]: server-rendered pages (minijinja templates compiled into
//!   the binary, htmx vendored: no JavaScript build step).

pub mod api;
pub mod mail;
pub mod pages;
pub mod ratelimit;
pub mod serve;
pub mod service;
pub mod session;
pub mod setup;
pub mod totp;

use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use lifeline_store::{Db, StoreLayout};

pub use serve::{serve, Limits, Peer};

/// Database connections the console's requests share.
const CONNECTIONS: usize = 4;

/// The largest request body: a form or a JSON request, never a file.
pub const BODY_LIMIT: usize = 64 << 10;

/// A connection lent from the pool, given back however the work on it ends
/// (a panic included: a lost connection would leave the pool short for
/// good).
struct Lent<'a> {
    db: Option<Db>,
    pool: &'a crossbeam_channel::Sender<Db>,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(db) = self.db.take() {
            let _ = self.pool.send(db);
        }
    }
}

/// What the receiver knows of a machine now and the database does not hold
/// (the receiver's replication, its history's alarm).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LiveState {
    /// Its agent is connected and replicating.
    pub connected: bool,
    /// When the receiver last applied a change of it (UTC), since it started.
    pub last_change: Option<String>,
    /// Changes applied since the receiver started.
    pub changes: u64,
    /// A standing ransomware or mass-deletion alarm, in words.
    pub alarm: Option<String>,
}

/// Where the console learns [`LiveState`]s: the receiver's services.
pub trait LiveStates: Send + Sync {
    fn of(&self, machine: &str) -> LiveState;
}

/// How the receiver runs its console.
#[derive(Default)]
pub struct Options {
    /// Served over TLS: cookies carry `Secure`.
    pub secure: bool,
    /// How boot media are made (none without an agent binary).
    pub media: service::MediaConfig,
    /// Notices also go by mail.
    pub mailer: Option<mail::Mailer>,
    /// The console's address, for links in mail
    /// (`https://console.example.net:7443`).
    pub public_url: Option<String>,
    /// Anyone may sign up as a new customer (`/signup`).
    pub signup: bool,
    /// The machines' live states (none: the lists show the database's
    /// facts only).
    pub live: Option<Arc<dyn LiveStates>>,
}

/// Sign-in attempts one address may make per [`SIGN_IN_WINDOW`].
pub const SIGN_INS_PER_WINDOW: u32 = 100;
pub const SIGN_IN_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);
/// Sign-ups one address may make per hour.
pub const SIGN_UPS_PER_HOUR: u32 = 3;

/// What every handler shares.
pub struct Console {
    store: StoreLayout,
    /// Connections to the database, each used by one request at a time:
    /// SQLite in WAL mode reads on all of them at once.
    pool: (crossbeam_channel::Sender<Db>, crossbeam_channel::Receiver<Db>),
    templates: minijinja::Environment<'static>,
    /// Cookies carry `Secure` (the console is served over TLS).
    secure: bool,
    media: service::MediaConfig,
    mailer: Option<mail::Mailer>,
    /// The console's own address, for links in mail.
    public_url: Option<String>,
    signup: bool,
    live: Option<Arc<dyn LiveStates>>,
    sign_ins: ratelimit::RateLimit,
    sign_ups: ratelimit::RateLimit,
}

impl Console {
    /// The console over `store`'s database. `secure`: served over TLS (the
    /// receiver always is; in-process tests may go without).
    pub fn new(store: &StoreLayout, secure: bool) -> anyhow::Result<Arc<Console>> {
        Console::with(store, Options { secure, ..Options::default() })
    }

    pub fn with(store: &StoreLayout, o: Options) -> anyhow::Result<Arc<Console>> {
        let mut db = Db::open(store.root())?;
        let stale = db.fail_unfinished_media_requests()?;
        if stale > 0 {
            tracing::warn!("console: {stale} boot media left unmade by a stopped receiver are marked failed");
        }
        Ok(Arc::new(Console {
            store: store.clone(),
            pool: {
                let (tx, rx) = crossbeam_channel::bounded(CONNECTIONS);
                tx.send(db).expect("room for one");
                for _ in 1..CONNECTIONS {
                    tx.send(Db::open(store.root())?).expect("room for each");
                }
                (tx, rx)
            },
            templates: pages::templates()?,
            secure: o.secure,
            media: o.media,
            mailer: o.mailer,
            public_url: o.public_url,
            signup: o.signup,
            live: o.live,
            sign_ins: ratelimit::RateLimit::new(SIGN_INS_PER_WINDOW, SIGN_IN_WINDOW),
            sign_ups: ratelimit::RateLimit::new(SIGN_UPS_PER_HOUR, std::time::Duration::from_secs(3600)),
        }))
    }

    /// Runs `f` on the database off the async threads (password hashing
    /// takes tens of milliseconds of CPU; queries may wait on a lock).
    pub async fn db<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Db) -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, Error> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut lent = Lent { db: Some(me.pool.1.recv().expect("the pool outlives its users")), pool: &me.pool.0 };
            f(lent.db.as_mut().expect("lent until dropped"))
        })
        .await
        .map_err(|e| Error::Internal(anyhow::anyhow!("a database task failed: {e}")))?
        .map_err(Error::from)
    }

    /// The routes, pages and API, with the headers every answer carries.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/", get(pages::home))
            .route("/login", get(pages::login_form).post(pages::login))
            .route("/login/second-factor", get(pages::second_factor_form).post(pages::second_factor))
            .route("/logout", post(pages::logout))
            .route("/signup", get(pages::signup_form).post(pages::signup))
            .route("/machines", get(pages::machines))
            .route("/machines/new", get(pages::register_form).post(pages::register))
            .route("/machines/{id}", get(pages::machine))
            .route("/machines/{id}/media", post(pages::ask_media))
            .route("/media/{id}/arm", post(pages::arm))
            .route("/media/{id}/revoke", post(pages::revoke))
            .route("/media/{id}/download", get(pages::download))
            .route("/ca.crt", get(pages::ca))
            .route("/customers", get(pages::customers).post(pages::add_customer))
            .route("/audit", get(pages::audit))
            .route("/images", get(pages::images))
            .route("/jobs", get(pages::jobs))
            .route("/account", get(pages::account))
            .route("/account/tokens", post(pages::add_token))
            .route("/account/tokens/{id}/revoke", post(pages::revoke_token))
            .route("/users", get(pages::users).post(pages::add_user))
            .route("/users/{id}/remove", post(pages::remove_user))
            .route("/account/password", post(pages::change_password))
            .route("/account/second-factor/start", post(pages::second_factor_start))
            .route("/account/second-factor", post(pages::second_factor_confirm))
            .route("/static/htmx.min.js", get(pages::htmx))
            .route("/static/console.css", get(pages::css))
            .nest("/api/v1", api::routes())
            .fallback(|| async { Error::NotFound })
            .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
            .layer(axum::middleware::map_response(security_headers))
            .layer(axum::middleware::from_fn(server_timing))
            .with_state(self.clone())
    }
}

/// What no answer goes without: no framing, no sniffing, no referrer
/// leaking ids, scripts and styles from the console itself only, and pages
/// not kept in caches (they hold a customer's data).
async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    r
}

/// How long the console took over an answer (until its headers), in a
/// `Server-Timing` header: what the load test measures, and what a
/// browser's developer tools show.
async fn server_timing(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let started = std::time::Instant::now();
    let mut r = next.run(req).await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(v) = HeaderValue::from_str(&format!("app;dur={ms:.2}")) {
        r.headers_mut().insert("server-timing", v);
    }
    r
}

/// Why a request was not answered with what it asked.
#[derive(Debug)]
pub enum Error {
    /// Not signed in (pages: to the sign-in form).
    SignIn,
    /// Signed in, but this is not the user's to do.
    Forbidden(String),
    /// No such object, or another customer's: the same answer.
    NotFound,
    BadRequest(String),
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Error {
        Error::Internal(e)
    }
}

impl Error {
    fn status(&self) -> StatusCode {
        match self {
            Error::SignIn => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound => StatusCode::NOT_FOUND,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(&self) -> String {
        match self {
            Error::SignIn => "sign in first".into(),
            Error::Forbidden(why) => why.clone(),
            Error::NotFound => "not found".into(),
            Error::BadRequest(why) => why.clone(),
            // The details are for the log, not for whoever asked.
            Error::Internal(e) => {
                tracing::error!("console: {e:#}");
                "the console failed to answer; the receiver's log says why".into()
            }
        }
    }
}

/// Pages answer errors as a short HTML page (the sign-in form for
/// [`Error::SignIn`]).
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if let Error::SignIn = self {
            return axum::response::Redirect::to("/login").into_response();
        }
        let status = self.status();
        let body = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{status}</title>\
             <link rel=\"stylesheet\" href=\"/static/console.css\"></head><body><main><h1>{}</h1><p>{}</p>\
             <p><a href=\"/\">Back to the console</a></p></main></body></html>",
            status.canonical_reason().unwrap_or("Error"),
            minijinja::HtmlEscape(&self.message())
        );
        (status, Html(body)).into_response()
    }
}

#[cfg(test)]
mod tests;
