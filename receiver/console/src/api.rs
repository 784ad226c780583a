//! The console's one typed API. Each operation is a function of the caller
//! and a typed request, answering a typed value; the JSON routes here and
//! the pages ([`crate::pages`]) both call them, so a page can show nothing
//! the API would refuse. Scoping to the caller's customer happens in the
//! database queries ([`lifeline_store::db::console::Scope`]).
//!
//! `/api/v1/openapi.json` describes the routes (`openapi.json` beside this
//! file; a test checks that it names every route).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lifeline_store::db::console::{AuditRow, Customer, ImageRow, JobRow, MachineRow, Page, Role, Scope, UserRow};
use serde::{Deserialize, Serialize};

use crate::service::{self, AskMedia, RegisterPc};
use crate::session::{caller, Caller};
use crate::{Console, Error};

/// Most items one list answer holds.
pub const MAX_PAGE: i64 = 200;
/// Items per page unless asked otherwise.
pub const DEFAULT_PAGE: i64 = 50;

/// A list's filter and window.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    pub q: String,
    #[serde(default)]
    pub offset: i64,
    pub limit: Option<i64>,
}

impl ListQuery {
    fn window(&self) -> Result<(i64, i64), Error> {
        if self.q.len() > 200 {
            return Err(Error::BadRequest("a search is at most 200 characters".into()));
        }
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) || self.offset < 0 {
            return Err(Error::BadRequest(format!("limit is 1 to {MAX_PAGE}, offset at least 0")));
        }
        Ok((self.offset, limit))
    }
}

/// The audit trail's filter and window: newest first, entries older than
/// `before`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    pub q: String,
    pub before: Option<i64>,
    pub limit: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditPage {
    pub items: Vec<AuditRow>,
    /// `before` for the next (older) page; `None`: this was the last.
    pub next_before: Option<i64>,
}

/// Who the caller is.
#[derive(Debug, Clone, Serialize)]
pub struct Me {
    pub id: String,
    pub login: String,
    pub role: &'static str,
    pub customer: Option<Customer>,
    pub second_factor: bool,
}

/// A new customer and its first administrator.
#[derive(Debug, Clone, Deserialize)]
pub struct NewCustomer {
    pub name: String,
    #[serde(default)]
    pub email: String,
    pub admin_login: String,
    pub admin_password: String,
}

pub async fn me(console: &Arc<Console>, caller: &Caller) -> Result<Me, Error> {
    let customer = match caller.user.customer_id {
        Some(id) => console.db(move |db| db.customer_by_id(id)).await?,
        None => None,
    };
    Ok(Me {
        id: caller.user.public_id.clone(),
        login: caller.user.login.clone(),
        role: caller.user.role.as_str(),
        customer,
        second_factor: caller.user.has_totp,
    })
}

/// A machine with what the receiver knows of it now.
#[derive(Debug, Clone, Serialize)]
pub struct MachineView {
    #[serde(flatten)]
    pub machine: MachineRow,
    pub state: crate::LiveState,
}

impl std::ops::Deref for MachineView {
    type Target = MachineRow;
    fn deref(&self) -> &MachineRow {
        &self.machine
    }
}

fn with_state(console: &Console, machine: MachineRow) -> MachineView {
    let state = console.live.as_ref().map(|l| l.of(&machine.name)).unwrap_or_default();
    MachineView { machine, state }
}

pub async fn machines(console: &Arc<Console>, caller: &Caller, q: ListQuery) -> Result<Page<MachineView>, Error> {
    let (offset, limit) = q.window()?;
    let scope = caller.scope();
    let page = console.db(move |db| db.machines_page(scope, &q.q, offset, limit)).await?;
    let items = page.items.into_iter().map(|m| with_state(console, m)).collect();
    Ok(Page { items, total: page.total, offset: page.offset, limit: page.limit })
}

pub async fn machine(console: &Arc<Console>, caller: &Caller, id: String) -> Result<MachineView, Error> {
    let scope = caller.scope();
    let m = console.db(move |db| db.machine(scope, &id)).await?.ok_or(Error::NotFound)?;
    Ok(with_state(console, m))
}

pub async fn images(console: &Arc<Console>, caller: &Caller, q: ListQuery) -> Result<Page<ImageRow>, Error> {
    let (offset, limit) = q.window()?;
    let scope = caller.scope();
    console.db(move |db| db.images_page(scope, &q.q, offset, limit)).await
}

pub async fn jobs(console: &Arc<Console>, caller: &Caller, q: ListQuery) -> Result<Page<JobRow>, Error> {
    let (offset, limit) = q.window()?;
    let scope = caller.scope();
    console.db(move |db| db.jobs_page(scope, &q.q, offset, limit)).await
}

pub async fn customers(console: &Arc<Console>, caller: &Caller, q: ListQuery) -> Result<Page<Customer>, Error> {
    let (offset, limit) = q.window()?;
    let scope = caller.scope();
    console.db(move |db| db.customers_page(scope, &q.q, offset, limit)).await
}

pub async fn add_customer(console: &Arc<Console>, caller: &Caller, new: NewCustomer) -> Result<Customer, Error> {
    caller.require(Role::ProviderAdmin)?;
    let actor = caller.user.login.clone();
    console
        .db(move |db| db.add_customer_with_admin(&new.name, &new.email, &new.admin_login, &new.admin_password, &actor))
        .await
        .map_err(|e| match e {
            // What was wrong with the request (a name taken, a short
            // password) is the caller's to fix.
            Error::Internal(e) => Error::BadRequest(format!("{e:#}")),
            e => e,
        })
}

/// A user to add to the caller's customer (or, for a provider admin, to the
/// provider's staff).
#[derive(Debug, Clone, Deserialize)]
pub struct NewUser {
    pub login: String,
    pub role: String,
    pub password: String,
}

pub async fn users(console: &Arc<Console>, caller: &Caller) -> Result<Vec<UserRow>, Error> {
    caller.require(Role::CustomerAdmin)?;
    let scope = caller.scope();
    let now = crate::session::now();
    console.db(move |db| db.users_of(scope, now)).await
}

pub async fn add_user(console: &Arc<Console>, caller: &Caller, new: NewUser) -> Result<UserRow, Error> {
    caller.require(Role::CustomerAdmin)?;
    let role = Role::parse(&new.role).map_err(|e| Error::BadRequest(format!("{e:#}")))?;
    // A customer's admin makes its customer's users; provider admins make
    // provider admins (a customer's first admin comes with the customer).
    let fits = match caller.user.customer_id {
        Some(_) => role != Role::ProviderAdmin,
        None => role == Role::ProviderAdmin,
    };
    if !fits {
        return Err(Error::BadRequest(format!("you cannot make a user with the role {}", role.as_str())));
    }
    let (customer, actor) = (caller.user.customer_id, caller.user.login.clone());
    let login = new.login.clone();
    console.db(move |db| db.add_user(&new.login, &new.password, customer, role, &actor).map(|_| ())).await.map_err(
        |e| match e {
            Error::Internal(e) => Error::BadRequest(format!("{e:#}")),
            e => e,
        },
    )?;
    users(console, caller)
        .await?
        .into_iter()
        .find(|u| u.login.eq_ignore_ascii_case(login.trim()))
        .ok_or(Error::NotFound)
}

pub async fn remove_user(console: &Arc<Console>, caller: &Caller, id: String) -> Result<String, Error> {
    caller.require(Role::CustomerAdmin)?;
    let (scope, me) = (caller.scope(), caller.user.clone());
    console.db(move |db| db.remove_user(scope, &id, &me)).await.map_err(|e| match e {
        Error::Internal(e) if e.to_string() == "no such user" => Error::NotFound,
        Error::Internal(e) => Error::BadRequest(format!("{e:#}")),
        e => e,
    })
}

pub async fn audit(console: &Arc<Console>, caller: &Caller, q: AuditQuery) -> Result<AuditPage, Error> {
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) || q.q.len() > 200 {
        return Err(Error::BadRequest(format!("limit is 1 to {MAX_PAGE}, a search at most 200 characters")));
    }
    let scope: Scope = caller.scope();
    let items = console.db(move |db| db.audit_page(scope, &q.q, q.before, limit)).await?;
    let next_before = (items.len() as i64 == limit).then(|| items.last().map(|e| e.id)).flatten();
    Ok(AuditPage { items, next_before })
}

/// How long to arm network boot.
#[derive(Debug, Clone, Deserialize)]
pub struct Arm {
    /// 0 disarms.
    pub minutes: u64,
}

/// The JSON routes, under `/api/v1`.
pub fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/me", get(|State(c): State<Arc<Console>>, h: HeaderMap| async move { json(me(&c, &api_caller(&c, &h).await?).await) }))
        .route(
            "/machines",
            get(|State(c): State<Arc<Console>>, h: HeaderMap, Query(q): Query<ListQuery>| async move {
                json(machines(&c, &api_caller(&c, &h).await?, q).await)
            })
            .post(|State(c): State<Arc<Console>>, h: HeaderMap, Json(pc): Json<RegisterPc>| async move {
                let caller = api_caller(&c, &h).await?;
                caller.may_change(&h, None).map_err(ApiError)?;
                let r = service::register_pc(&c, &caller, pc).await.map_err(ApiError)?;
                Ok::<_, ApiError>((StatusCode::CREATED, Json(r)))
            }),
        )
        .route(
            "/machines/{id}",
            get(|State(c): State<Arc<Console>>, h: HeaderMap, Path(id): Path<String>| async move {
                json(machine(&c, &api_caller(&c, &h).await?, id).await)
            }),
        )
        .route(
            "/machines/{id}/media",
            get(|State(c): State<Arc<Console>>, h: HeaderMap, Path(id): Path<String>| async move {
                let caller = api_caller(&c, &h).await?;
                let m = machine(&c, &caller, id).await.map_err(ApiError)?;
                json(c.db(move |db| db.media_requests_of(&m.name)).await)
            })
            .post(
                |State(c): State<Arc<Console>>, h: HeaderMap, Path(id): Path<String>, Json(ask): Json<AskMedia>| async move {
                    let caller = api_caller(&c, &h).await?;
                    caller.may_change(&h, None).map_err(ApiError)?;
                    let r = service::ask_media(&c, &caller, id, ask).await.map_err(ApiError)?;
                    Ok::<_, ApiError>((StatusCode::ACCEPTED, Json(r)))
                },
            ),
        )
        .route(
            "/media/{id}",
            get(|State(c): State<Arc<Console>>, h: HeaderMap, Path(id): Path<String>| async move {
                json(service::media_request(&c, &api_caller(&c, &h).await?, id).await)
            }),
        )
        .route(
            "/media/{id}/arm",
            post(|State(c): State<Arc<Console>>, h: HeaderMap, Path(id): Path<String>, Json(a): Json<Arm>| async move {
                let caller = api_caller(&c, &h).await?;
                caller.may_change(&h, None).map_err(ApiError)?;
                json(service::arm(&c, &caller, id, a.minutes).await)
            }),
        )
        .route(
            "/media/{id}/revoke",
            post(|State(c): State<Arc<Console>>, h: HeaderMap, Path(id): Path<String>| async move {
                let caller = api_caller(&c, &h).await?;
                caller.may_change(&h, None).map_err(ApiError)?;
                json(service::revoke(&c, &caller, id).await)
            }),
        )
        .route(
            "/media/{id}/download",
            get(|State(c): State<Arc<Console>>, h: HeaderMap, p: Path<String>| async move {
                // The page's handler, answering as the API does.
                crate::pages::download(State(c), h, p).await.map_err(ApiError)
            }),
        )
        .route(
            "/customers",
            get(|State(c): State<Arc<Console>>, h: HeaderMap, Query(q): Query<ListQuery>| async move {
                json(customers(&c, &api_caller(&c, &h).await?, q).await)
            })
            .post(|State(c): State<Arc<Console>>, h: HeaderMap, Json(new): Json<NewCustomer>| async move {
                let caller = api_caller(&c, &h).await?;
                caller.may_change(&h, None).map_err(ApiError)?;
                let made = add_customer(&c, &caller, new).await.map_err(ApiError)?;
                Ok::<_, ApiError>((StatusCode::CREATED, Json(made)))
            }),
        )
        .route(
            "/users",
            get(|State(c): State<Arc<Console>>, h: HeaderMap| async move { json(users(&c, &api_caller(&c, &h).await?).await) })
                .post(|State(c): State<Arc<Console>>, h: HeaderMap, Json(new): Json<NewUser>| async move {
                    let caller = api_caller(&c, &h).await?;
                    caller.may_change(&h, None).map_err(ApiError)?;
                    let made = add_user(&c, &caller, new).await.map_err(ApiError)?;
                    Ok::<_, ApiError>((StatusCode::CREATED, Json(made)))
                }),
        )
        .route(
            "/users/{id}/remove",
            post(|State(c): State<Arc<Console>>, h: HeaderMap, Path(id): Path<String>| async move {
                let caller = api_caller(&c, &h).await?;
                caller.may_change(&h, None).map_err(ApiError)?;
                json(remove_user(&c, &caller, id).await.map(|login| serde_json::json!({ "removed": login })))
            }),
        )
        .route(
            "/images",
            get(|State(c): State<Arc<Console>>, h: HeaderMap, Query(q): Query<ListQuery>| async move {
                json(images(&c, &api_caller(&c, &h).await?, q).await)
            }),
        )
        .route(
            "/jobs",
            get(|State(c): State<Arc<Console>>, h: HeaderMap, Query(q): Query<ListQuery>| async move {
                json(jobs(&c, &api_caller(&c, &h).await?, q).await)
            }),
        )
        .route(
            "/audit",
            get(|State(c): State<Arc<Console>>, h: HeaderMap, Query(q): Query<AuditQuery>| async move {
                json(audit(&c, &api_caller(&c, &h).await?, q).await)
            }),
        )
        .fallback(|| async { ApiError(Error::NotFound) })
}

async fn openapi() -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// The API's description.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn api_caller(console: &Arc<Console>, headers: &HeaderMap) -> Result<Caller, ApiError> {
    caller(console, headers).await.map_err(ApiError)
}

fn json<T: Serialize>(r: Result<T, Error>) -> Result<Json<T>, ApiError> {
    r.map(Json).map_err(ApiError)
}

/// An [`Error`] answered as JSON: `{"error": "..."}`, and 401 rather than a
/// redirect to the sign-in form.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        (status, Json(serde_json::json!({ "error": self.0.message() }))).into_response()
    }
}
