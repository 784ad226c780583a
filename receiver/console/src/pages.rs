//! The console's pages: each a thin shell over an [`crate::api`] operation,
//! rendered by a template compiled into the binary. Lists answer htmx's
//! requests (`HX-Request`) with the list alone, so that a search updates in
//! place; every page also works without JavaScript.

use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use lifeline_store::db::console::{Login, Role};
use minijinja::{context, Environment, Value};
use serde::Deserialize;

use crate::api::{self, AuditQuery, ListQuery, NewCustomer};
use crate::service::{self, AskMedia, RegisterPc};
use crate::session::{self, caller, cookie, cross_site, now, set_cookie, Caller, COOKIE};
use crate::{totp, Console, Error, Peer};

/// The cookie holding the sign-in form's CSRF token (there is no session
/// yet to hold it).
const LOGIN_COOKIE: &str = "ll_login";

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../templates/base.html")),
    ("pager.html", include_str!("../templates/pager.html")),
    ("login.html", include_str!("../templates/login.html")),
    ("second_factor.html", include_str!("../templates/second_factor.html")),
    ("machines.html", include_str!("../templates/machines.html")),
    ("machines_list.html", include_str!("../templates/machines_list.html")),
    ("state.html", include_str!("../templates/state.html")),
    ("machine.html", include_str!("../templates/machine.html")),
    ("customers.html", include_str!("../templates/customers.html")),
    ("audit.html", include_str!("../templates/audit.html")),
    ("account.html", include_str!("../templates/account.html")),
    ("register.html", include_str!("../templates/register.html")),
    ("images.html", include_str!("../templates/images.html")),
    ("users.html", include_str!("../templates/users.html")),
    ("jobs.html", include_str!("../templates/jobs.html")),
    ("jobs_list.html", include_str!("../templates/jobs_list.html")),
    ("signup.html", include_str!("../templates/signup.html")),
    ("registered.html", include_str!("../templates/registered.html")),
    ("media_list.html", include_str!("../templates/media_list.html")),
];

/// The templates, parsed once (autoescaping HTML: they end in `.html`).
pub fn templates() -> anyhow::Result<Environment<'static>> {
    let mut env = Environment::new();
    env.add_filter("bytes", human_bytes);
    for (name, source) in TEMPLATES {
        env.add_template(name, source).map_err(|e| anyhow::anyhow!("template {name}: {e}"))?;
    }
    Ok(env)
}

/// `1536` as "1.5 KiB": sizes as people read them.
fn human_bytes(n: i64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

impl Console {
    fn render(&self, name: &str, ctx: Value) -> Result<Html<String>, Error> {
        let t = self.templates.get_template(name).map_err(|e| Error::Internal(e.into()))?;
        Ok(Html(t.render(ctx).map_err(|e| Error::Internal(anyhow::anyhow!("rendering {name}: {e:#}")))?))
    }

    /// A page for a signed-in caller: what every page's frame needs, and
    /// `ctx`.
    async fn page(
        self: &Arc<Self>,
        name: &str,
        section: &str,
        caller: &Caller,
        ctx: Value,
    ) -> Result<Html<String>, Error> {
        let me = api::me(self, caller).await?;
        self.render(name, context! { me, section, csrf => caller.csrf(), ..ctx })
    }
}

pub async fn home(State(c): State<Arc<Console>>, h: HeaderMap) -> Result<Redirect, Error> {
    caller(&c, &h).await?;
    Ok(Redirect::to("/machines"))
}

pub async fn htmx() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=86400")],
        include_str!("../static/htmx.min.js"),
    )
}

pub async fn css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=3600")],
        include_str!("../static/console.css"),
    )
}

/// The sign-in form, with a fresh CSRF token in a cookie and the form.
fn login_page(c: &Console, login: &str, problem: Option<String>, status: StatusCode) -> Result<Response, Error> {
    let token = lifeline_store::db::console::new_secret();
    let html = c.render("login.html", context! { login_csrf => token, login, problem, signup => c.signup })?;
    Ok((status, [(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, Some(&token), c.secure))], html).into_response())
}

pub async fn login_form(State(c): State<Arc<Console>>) -> Result<Response, Error> {
    login_page(&c, "", None, StatusCode::OK)
}

#[derive(Deserialize)]
pub struct LoginForm {
    csrf: String,
    login: String,
    password: String,
}

/// The sign-in form's CSRF token must match its cookie, and the form must
/// be the console's own.
fn login_csrf_ok(h: &HeaderMap, given: &str) -> bool {
    !cross_site(h) && cookie(h, LOGIN_COOKIE).is_some_and(|c| !c.is_empty() && c == given)
}

pub async fn login(
    State(c): State<Arc<Console>>,
    peer: Option<axum::Extension<Peer>>,
    h: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Result<Response, Error> {
    if !login_csrf_ok(&h, &f.csrf) {
        return login_page(&c, &f.login, Some("The form was stale: sign in again.".into()), StatusCode::FORBIDDEN);
    }
    if let Some(p) = &peer {
        if !c.sign_ins.allow(p.0 .0.ip()) {
            return login_page(
                &c,
                &f.login,
                Some("Too many sign-ins from your address: wait ten minutes.".into()),
                StatusCode::TOO_MANY_REQUESTS,
            );
        }
    }
    if f.login.len() > 254 || f.password.len() > 1024 {
        return login_page(&c, "", Some("Wrong login or password.".into()), StatusCode::UNAUTHORIZED);
    }
    let from = peer.map_or("?".to_string(), |p| p.0 .0.ip().to_string());
    let now = now();
    let (login, password) = (f.login.clone(), f.password);
    let outcome = c.db(move |db| db.check_login(&login, &password, now, &from)).await?;
    match outcome {
        Login::Ok(user) => {
            let verified = !user.has_totp;
            let (secret, _) = c.db(move |db| db.open_session(&user, verified, now)).await?;
            let to = if verified { "/machines" } else { "/login/second-factor" };
            // Two cookies: `AppendHeaders`, as an array of pairs would keep
            // only the last.
            Ok((
                axum::response::AppendHeaders([
                    (header::SET_COOKIE, set_cookie(COOKIE, Some(&secret), c.secure)),
                    (header::SET_COOKIE, set_cookie(LOGIN_COOKIE, None, c.secure)),
                ]),
                Redirect::to(to),
            )
                .into_response())
        }
        Login::Refused => login_page(&c, &f.login, Some("Wrong login or password.".into()), StatusCode::UNAUTHORIZED),
        Login::Locked { until } => login_page(
            &c,
            &f.login,
            Some(format!(
                "Too many failed sign-ins: this account is locked for {} more minutes. Your administrator can see it in the audit trail.",
                (until - now + 59) / 60
            )),
            StatusCode::TOO_MANY_REQUESTS,
        ),
    }
}

pub async fn second_factor_form(State(c): State<Arc<Console>>, h: HeaderMap) -> Result<Response, Error> {
    let Some(s) = session::session(&c, &h).await? else { return Err(Error::SignIn) };
    if s.verified {
        return Ok(Redirect::to("/machines").into_response());
    }
    Ok(c.render("second_factor.html", context! { login_csrf => s.csrf })?.into_response())
}

#[derive(Deserialize)]
pub struct CodeForm {
    csrf: String,
    code: String,
}

pub async fn second_factor(
    State(c): State<Arc<Console>>,
    h: HeaderMap,
    Form(f): Form<CodeForm>,
) -> Result<Response, Error> {
    let Some(s) = session::session(&c, &h).await? else { return Err(Error::SignIn) };
    if cross_site(&h) || f.csrf != s.csrf {
        return Err(Error::Forbidden("the form was stale: sign in again".into()));
    }
    let user = s.user.clone();
    let secret = c.db(move |db| db.totp_secret(user.id)).await?.ok_or(Error::SignIn)?;
    let now = now();
    let user = s.user.clone();
    let accepted = match totp::step_of(&secret, &f.code, now) {
        Some(step) => c.db(move |db| db.use_totp_step(&user, step)).await?,
        None => false,
    };
    if accepted {
        let secret = s.secret.clone();
        c.db(move |db| db.verify_session(&secret)).await?;
        return Ok(Redirect::to("/machines").into_response());
    }
    let user = s.user.clone();
    match c.db(move |db| db.login_failed(&user, now, "wrong second-factor code")).await? {
        Login::Locked { .. } => {
            // The sign-in form shown must work when the lock ends: with its
            // CSRF token and cookie, as every sign-in form has.
            let mut r = login_page(
                &c,
                &s.user.login,
                Some("Too many wrong codes: this account is locked for 15 minutes.".into()),
                StatusCode::TOO_MANY_REQUESTS,
            )?;
            let gone = header::HeaderValue::from_str(&set_cookie(COOKIE, None, c.secure))
                .map_err(|e| Error::Internal(anyhow::anyhow!("a cookie header: {e}")))?;
            r.headers_mut().append(header::SET_COOKIE, gone);
            Ok(r)
        }
        _ => Ok((
            StatusCode::UNAUTHORIZED,
            c.render(
                "second_factor.html",
                context! { login_csrf => s.csrf, problem => "Wrong or used code: try the next one." },
            )?,
        )
            .into_response()),
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn logout(State(c): State<Arc<Console>>, h: HeaderMap, Form(f): Form<CsrfForm>) -> Result<Response, Error> {
    let caller = caller(&c, &h).await?;
    caller.may_change(&h, Some(&f.csrf))?;
    if let Some(secret) = cookie(&h, COOKIE).map(str::to_owned) {
        c.db(move |db| db.end_session(&secret)).await?;
    }
    Ok(([(header::SET_COOKIE, set_cookie(COOKIE, None, c.secure))], Redirect::to("/login")).into_response())
}

pub async fn machines(
    State(c): State<Arc<Console>>,
    h: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Html<String>, Error> {
    let caller = caller(&c, &h).await?;
    let page = api::machines(&c, &caller, q.clone()).await?;
    // htmx's search asks for the list alone.
    if h.contains_key("hx-request") {
        return c.page("machines_list.html", "machines", &caller, context! { page, q => q.q }).await;
    }
    let scope = caller.scope();
    let notifications = c.db(move |db| db.notifications(scope, 5)).await?;
    c.page("machines.html", "machines", &caller, context! { page, q => q.q, notifications }).await
}

pub async fn machine(
    State(c): State<Arc<Console>>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Result<Html<String>, Error> {
    let caller = caller(&c, &h).await?;
    let m = api::machine(&c, &caller, id).await?;
    let name = m.name.clone();
    let media = c.db(move |db| db.media_requests_of(&name)).await?;
    let making = media.iter().any(|r| r.state == "making");
    let can_make = c.media.agent.is_some();
    // htmx polls the media list while some are being made.
    let list = if h.contains_key("hx-request") { "media_list.html" } else { "machine.html" };
    c.page(list, "machines", &caller, context! { m, media, making, can_make }).await
}

pub async fn register_form(State(c): State<Arc<Console>>, h: HeaderMap) -> Result<Html<String>, Error> {
    let caller = caller(&c, &h).await?;
    c.page("register.html", "machines", &caller, context! { pc => context! { style => "receiver" } }).await
}

#[derive(Deserialize)]
pub struct RegisterForm {
    csrf: String,
    #[serde(flatten)]
    pc: RegisterPc,
}

pub async fn register(
    State(c): State<Arc<Console>>,
    h: HeaderMap,
    Form(f): Form<RegisterForm>,
) -> Result<Response, Error> {
    let caller = caller(&c, &h).await?;
    caller.may_change(&h, Some(&f.csrf))?;
    let pc = f.pc.clone();
    match service::register_pc(&c, &caller, f.pc).await {
        Ok(r) => Ok(c.page("registered.html", "machines", &caller, context! { r }).await?.into_response()),
        Err(Error::BadRequest(why)) => Ok((
            StatusCode::BAD_REQUEST,
            c.page(
                "register.html",
                "machines",
                &caller,
                context! { problem => why, pc => context! {
                name => pc.name, mac => pc.mac, ip => pc.ip, style => pc.style, notes => pc.notes } },
            )
            .await?,
        )
            .into_response()),
        Err(e) => Err(e),
    }
}

#[derive(Deserialize)]
pub struct MediaForm {
    csrf: String,
    #[serde(flatten)]
    ask: AskMedia,
}

pub async fn ask_media(
    State(c): State<Arc<Console>>,
    h: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<MediaForm>,
) -> Result<Response, Error> {
    let caller = caller(&c, &h).await?;
    caller.may_change(&h, Some(&f.csrf))?;
    match service::ask_media(&c, &caller, id.clone(), f.ask).await {
        Ok(r) => Ok(Redirect::to(&format!("/machines/{id}#media-{}", r.public_id)).into_response()),
        Err(Error::BadRequest(why) | Error::Forbidden(why)) => {
            let m = api::machine(&c, &caller, id).await?;
            let name = m.name.clone();
            let media = c.db(move |db| db.media_requests_of(&name)).await?;
            let can_make = c.media.agent.is_some();
            Ok((
                StatusCode::BAD_REQUEST,
                c.page("machine.html", "machines", &caller, context! { m, media, can_make, problem => why }).await?,
            )
                .into_response())
        }
        Err(e) => Err(e),
    }
}

#[derive(Deserialize)]
pub struct ArmForm {
    csrf: String,
    minutes: u64,
}

pub async fn arm(
    State(c): State<Arc<Console>>,
    h: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<ArmForm>,
) -> Result<Response, Error> {
    let caller = caller(&c, &h).await?;
    caller.may_change(&h, Some(&f.csrf))?;
    let r = service::arm(&c, &caller, id, f.minutes).await?;
    back_to_machine(&c, &caller, &r.machine, &r.public_id).await
}

pub async fn revoke(
    State(c): State<Arc<Console>>,
    h: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Result<Response, Error> {
    let caller = caller(&c, &h).await?;
    caller.may_change(&h, Some(&f.csrf))?;
    let r = service::revoke(&c, &caller, id).await?;
    back_to_machine(&c, &caller, &r.machine, &r.public_id).await
}

/// To the machine page of `machine` (a name), at media `media`.
async fn back_to_machine(c: &Arc<Console>, caller: &Caller, machine: &str, media: &str) -> Result<Response, Error> {
    let (scope, name) = (caller.scope(), machine.to_string());
    let page = c.db(move |db| db.machines_page(scope, &name, 0, 200)).await?;
    let m = page.items.into_iter().find(|m| m.name == machine).ok_or(Error::NotFound)?;
    Ok(Redirect::to(&format!("/machines/{}#media-{media}", m.public_id)).into_response())
}

/// The file of ISO or USB media, streamed.
pub async fn download(State(c): State<Arc<Console>>, h: HeaderMap, Path(id): Path<String>) -> Result<Response, Error> {
    let caller = caller(&c, &h).await?;
    let (path, name) = service::media_file(&c, &caller, id).await?;
    let file =
        tokio::fs::File::open(&path).await.map_err(|e| Error::Internal(anyhow::anyhow!("{}: {e}", path.display())))?;
    let len = file.metadata().await.map_err(|e| Error::Internal(e.into()))?.len();
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 256 << 10));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
        ],
        body,
    )
        .into_response())
}

/// The receiver's CA, which agents trust (`--ca`): public.
pub async fn ca(State(c): State<Arc<Console>>) -> Result<Response, Error> {
    let pem = std::fs::read(c.store.ca_cert()).map_err(|_| Error::NotFound)?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-pem-file"),
            (header::CONTENT_DISPOSITION, "attachment; filename=\"lifeline-ca.crt\""),
        ],
        pem,
    )
        .into_response())
}

pub async fn images(
    State(c): State<Arc<Console>>,
    h: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Html<String>, Error> {
    let caller = caller(&c, &h).await?;
    let page = api::images(&c, &caller, q.clone()).await?;
    c.page("images.html", "images", &caller, context! { page, q => q.q }).await
}

pub async fn jobs(
    State(c): State<Arc<Console>>,
    h: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Html<String>, Error> {
    let caller = caller(&c, &h).await?;
    let page = api::jobs(&c, &caller, q.clone()).await?;
    let running = page.items.iter().any(|j| j.state == "running");
    // htmx refreshes the list while a job runs: live progress.
    let name = if h.contains_key("hx-request") { "jobs_list.html" } else { "jobs.html" };
    c.page(name, "jobs", &caller, context! { page, q => q.q, running }).await
}

pub async fn customers(
    State(c): State<Arc<Console>>,
    h: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Html<String>, Error> {
    let caller = caller(&c, &h).await?;
    let page = api::customers(&c, &caller, q.clone()).await?;
    c.page("customers.html", "customers", &caller, context! { page, q => q.q }).await
}

#[derive(Deserialize)]
pub struct CustomerForm {
    csrf: String,
    name: String,
    #[serde(default)]
    email: String,
    admin_login: String,
    admin_password: String,
}

pub async fn add_customer(
    State(c): State<Arc<Console>>,
    h: HeaderMap,
    Form(f): Form<CustomerForm>,
) -> Result<Response, Error> {
    let caller = caller(&c, &h).await?;
    caller.may_change(&h, Some(&f.csrf))?;
    let new =
        NewCustomer { name: f.name, email: f.email, admin_login: f.admin_login, admin_password: f.admin_password };
    let (flash, problem) = match api::add_customer(&c, &caller, new).await {
        Ok(made) => (Some(format!("Customer {} added.", made.name)), None),
        Err(Error::BadRequest(why)) => (None, Some(why)),
        Err(e) => return Err(e),
    };
    let page = api::customers(&c, &caller, ListQuery::default()).await?;
    let status = if problem.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    Ok((status, c.page("customers.html", "customers", &caller, context! { page, q => "", flash, problem }).await?)
        .into_response())
}

pub async fn audit(
    State(c): State<Arc<Console>>,
    h: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Html<String>, Error> {
    let caller = caller(&c, &h).await?;
    let before = q.before;
    let search = q.q.clone();
    let page = api::audit(&c, &caller, q).await?;
    c.page("audit.html", "audit", &caller, context! { page, q => search, before }).await
}

pub async fn account(State(c): State<Arc<Console>>, h: HeaderMap) -> Result<Html<String>, Error> {
    let caller = caller(&c, &h).await?;
    let user = caller.user.clone();
    let tokens = c.db(move |db| db.api_tokens_of(&user)).await?;
    c.page("account.html", "account", &caller, context! { tokens }).await
}

pub async fn users(State(c): State<Arc<Console>>, h: HeaderMap) -> Result<Html<String>, Error> {
    let caller = caller(&c, &h).await?;
    let users = api::users(&c, &caller).await?;
    c.page("users.html", "users", &caller, context! { users }).await
}

#[derive(Deserialize)]
pub struct UserForm {
    csrf: String,
    #[serde(flatten)]
    new: api::NewUser,
}

pub async fn add_user(State(c): State<Arc<Console>>, h: HeaderMap, Form(f): Form<UserForm>) -> Result<Response, Error> {
    let caller = caller(&c, &h).await?;
    caller.may_change(&h, Some(&f.csrf))?;
    let (flash, problem) = match api::add_user(&c, &caller, f.new).await {
        Ok(u) => (Some(format!("User {} added as {}.", u.login, u.role)), None),
        Err(Error::BadRequest(why)) => (None, Some(why)),
        Err(e) => return Err(e),
    };
    let users = api::users(&c, &caller).await?;
    let status = if problem.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    Ok((status, c.page("users.html", "users", &caller, context! { users, flash, problem }).await?).into_response())
}

pub async fn remove_user(
    State(c): State<Arc<Console>>,
    h: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Result<Response, Error> {
    let caller = caller(&c, &h).await?;
    caller.may_change(&h, Some(&f.csrf))?;
    let (flash, problem) = match api::remove_user(&c, &caller, id).await {
        Ok(login) => (Some(format!("User {login} removed.")), None),
        Err(Error::BadRequest(why)) => (None, Some(why)),
        Err(e) => return Err(e),
    };
    let users = api::users(&c, &caller).await?;
    Ok(c.page("users.html", "users", &caller, context! { users, flash, problem }).await?.into_response())
}

pub async fn revoke_token(
    State(c): State<Arc<Console>>,
    h: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Result<Response, Error> {
    let caller = caller(&c, &h).await?;
    caller.may_change(&h, Some(&f.csrf))?;
    let user = caller.user.clone();
    if !c.db(move |db| db.revoke_api_token(&user, &id)).await? {
        return Err(Error::NotFound);
    }
    account_after(&c, &caller, Some("Token revoked: it no longer works.".into()), None, context! {}).await
}

/// The account page after a change: `flash` said, or `problem` (400).
async fn account_after(
    c: &Arc<Console>,
    caller: &Caller,
    flash: Option<String>,
    problem: Option<String>,
    ctx: Value,
) -> Result<Response, Error> {
    let status = if problem.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    let user = caller.user.clone();
    let tokens = c.db(move |db| db.api_tokens_of(&user)).await?;
    Ok((status, c.page("account.html", "account", caller, context! { flash, problem, tokens, ..ctx }).await?)
        .into_response())
}

#[derive(Deserialize)]
pub struct PasswordForm {
    csrf: String,
    current: String,
    new: String,
    again: String,
}

pub async fn change_password(
    State(c): State<Arc<Console>>,
    h: HeaderMap,
    Form(f): Form<PasswordForm>,
) -> Result<Response, Error> {
    let caller = caller(&c, &h).await?;
    caller.may_change(&h, Some(&f.csrf))?;
    if f.new != f.again {
        return account_after(&c, &caller, None, Some("The two new passwords differ.".into()), context! {}).await;
    }
    let (user, session) = (caller.user.clone(), cookie(&h, COOKIE).unwrap_or_default().to_string());
    match c.db(move |db| db.change_password(&user, &f.current, &f.new, &session)).await {
        Ok(()) => {
            // The first admin's generated password is no secret to keep now.
            if caller.user.login == crate::setup::FIRST_LOGIN && caller.user.role == Role::ProviderAdmin {
                let _ = std::fs::remove_file(crate::setup::first_login_file(&c.store));
            }
            account_after(&c, &caller, Some("Password changed; your other sessions ended.".into()), None, context! {})
                .await
        }
        Err(Error::Internal(e)) => account_after(&c, &caller, None, Some(format!("{e:#}")), context! {}).await,
        Err(e) => Err(e),
    }
}

/// Starts setting up a second factor: a new secret kept in the session
/// until a code from it confirms it.
pub async fn second_factor_start(
    State(c): State<Arc<Console>>,
    h: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Result<Response, Error> {
    let caller = caller(&c, &h).await?;
    caller.may_change(&h, Some(&f.csrf))?;
    let secret = totp::new_secret();
    let session = cookie(&h, COOKIE)
        .ok_or(Error::Forbidden("a second factor is set up from a browser's session".into()))?
        .to_string();
    let kept = secret.clone();
    c.db(move |db| db.set_pending_totp(&session, Some(&kept))).await?;
    let (url, base32) = totp::enrolment(&secret, &caller.user.login);
    let qr = Value::from_safe_string(totp::qr_svg(&url));
    account_after(&c, &caller, None, None, context! { enrol => context! { url, base32, qr } }).await
}

pub async fn second_factor_confirm(
    State(c): State<Arc<Console>>,
    h: HeaderMap,
    Form(f): Form<CodeForm>,
) -> Result<Response, Error> {
    let caller = caller(&c, &h).await?;
    caller.may_change(&h, Some(&f.csrf))?;
    let session = cookie(&h, COOKIE)
        .ok_or(Error::Forbidden("a second factor is set up from a browser's session".into()))?
        .to_string();
    let s2 = session.clone();
    let Some(secret) = c.db(move |db| db.pending_totp(&s2)).await? else {
        return account_after(&c, &caller, None, Some("Start the second factor's setup again.".into()), context! {})
            .await;
    };
    let Some(step) = totp::step_of(&secret, &f.code, now()) else {
        return account_after(
            &c,
            &caller,
            None,
            Some("That code is not right: set up again and enter the code your app shows.".into()),
            context! {},
        )
        .await;
    };
    let user = caller.user.clone();
    c.db(move |db| {
        db.set_totp(&user, Some(&secret))?;
        db.use_totp_step(&user, step)?;
        db.set_pending_totp(&session, None)
    })
    .await?;
    // The caller's `has_totp` was read before: show the new state.
    let caller = crate::session::caller(&c, &h).await?;
    account_after(&c, &caller, Some("Second factor on: sign-ins now ask for a code.".into()), None, context! {}).await
}

#[derive(Deserialize)]
pub struct TokenForm {
    csrf: String,
    name: String,
    #[serde(default)]
    write: Option<String>,
}

pub async fn add_token(
    State(c): State<Arc<Console>>,
    h: HeaderMap,
    Form(f): Form<TokenForm>,
) -> Result<Response, Error> {
    let caller = caller(&c, &h).await?;
    caller.may_change(&h, Some(&f.csrf))?;
    let name = f.name.trim().to_string();
    if name.is_empty() || name.len() > 100 {
        return Err(Error::BadRequest("a token's name is 1 to 100 characters".into()));
    }
    // A viewer's token reads, whatever was asked.
    let write = f.write.is_some() && caller.user.role >= Role::Operator;
    let user = caller.user.clone();
    let (_, secret) = c.db(move |db| db.add_api_token(&user, &name, write)).await?;
    account_after(&c, &caller, None, None, context! { new_token => secret }).await
}

/// The sign-up form: a new customer and its administrator. Only when the
/// provider lets anyone sign up (`serve --console-signup`).
pub async fn signup_form(State(c): State<Arc<Console>>) -> Result<Response, Error> {
    if !c.signup {
        return Err(Error::NotFound);
    }
    signup_page(&c, None, context! {}, StatusCode::OK)
}

fn signup_page(c: &Console, problem: Option<String>, form: Value, status: StatusCode) -> Result<Response, Error> {
    let token = lifeline_store::db::console::new_secret();
    let html = c.render("signup.html", context! { login_csrf => token, problem, f => form })?;
    Ok((status, [(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, Some(&token), c.secure))], html).into_response())
}

#[derive(Deserialize)]
pub struct SignupForm {
    csrf: String,
    name: String,
    email: String,
    login: String,
    password: String,
    again: String,
}

pub async fn signup(
    State(c): State<Arc<Console>>,
    peer: Option<axum::Extension<Peer>>,
    h: HeaderMap,
    Form(f): Form<SignupForm>,
) -> Result<Response, Error> {
    if !c.signup {
        return Err(Error::NotFound);
    }
    let kept = context! { name => f.name.clone(), email => f.email.clone(), login => f.login.clone() };
    if !login_csrf_ok(&h, &f.csrf) {
        return signup_page(&c, Some("The form was stale: fill it in again.".into()), kept, StatusCode::FORBIDDEN);
    }
    let from = peer.map_or("?".to_string(), |p| p.0 .0.ip().to_string());
    if let Ok(ip) = from.parse() {
        if !c.sign_ups.allow(ip) {
            return signup_page(
                &c,
                Some("Too many sign-ups from your address: try again in an hour.".into()),
                kept,
                StatusCode::TOO_MANY_REQUESTS,
            );
        }
    }
    if f.password != f.again {
        return signup_page(&c, Some("The two passwords differ.".into()), kept, StatusCode::BAD_REQUEST);
    }
    if !f.email.contains('@') {
        return signup_page(
            &c,
            Some("Give the address your notices should go to.".into()),
            kept,
            StatusCode::BAD_REQUEST,
        );
    }
    let actor = format!("sign-up from {from}");
    let (name, email, login, password) = (f.name, f.email, f.login.clone(), f.password);
    let made = c.db(move |db| db.add_customer_with_admin(&name, &email, &login, &password, &actor)).await;
    if let Err(Error::Internal(e)) = made {
        return signup_page(&c, Some(format!("{e:#}")), kept, StatusCode::BAD_REQUEST);
    }
    made?;
    let now = now();
    let login = f.login;
    let session = c
        .db(move |db| {
            let user = db.user_by_login(&login)?.ok_or_else(|| anyhow::anyhow!("the new user vanished"))?;
            db.open_session(&user, true, now)
        })
        .await?;
    Ok((
        axum::response::AppendHeaders([
            (header::SET_COOKIE, set_cookie(COOKIE, Some(&session.0), c.secure)),
            (header::SET_COOKIE, set_cookie(LOGIN_COOKIE, None, c.secure)),
        ]),
        Redirect::to("/machines/new"),
    )
        .into_response())
}
