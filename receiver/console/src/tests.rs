//! The console's routes answered in-process (the router, no socket): the
//! isolation and refusal rules. The browser drives the real listener in
//! `tests/tests/console.rs`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use lifeline_store::db::console::Role;
use lifeline_store::{Db, MachineName, StoreLayout};
use tower::ServiceExt;

use crate::Console;

struct World {
    _dir: tempfile::TempDir,
    console: Arc<Console>,
    /// Session cookies of a user of customer A and one of customer B.
    a: String,
    b: String,
    /// The URL id of A's machine.
    a_machine: String,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreLayout::create(dir.path()).unwrap();
    let mut db = Db::open(store.root()).unwrap();
    let ca = db.add_customer("A", "", "t").unwrap();
    let cb = db.add_customer("B", "", "t").unwrap();
    let ua = db.add_user("a@a.test", "password of a user", Some(ca.id), Role::CustomerAdmin, "t").unwrap();
    let ub = db.add_user("b@b.test", "password of b user", Some(cb.id), Role::CustomerAdmin, "t").unwrap();
    db.add_machine(&MachineName::new("alpha").unwrap(), &[1; 32], "").unwrap();
    db.set_machine_customer("alpha", Some(ca.id), "t").unwrap();
    let now = crate::session::now();
    let (a, _) = db.open_session(&ua, true, now).unwrap();
    let (b, _) = db.open_session(&ub, true, now).unwrap();
    let a_machine = db.machines_page(ua.scope(), "", 0, 10).unwrap().items[0].public_id.clone();
    World { console: Console::new(&store, false).unwrap(), _dir: dir, a, b, a_machine }
}

async fn get(c: &Arc<Console>, path: &str, session: Option<&str>) -> (StatusCode, String) {
    let mut req = Request::get(path);
    if let Some(s) = session {
        req = req.header(header::COOKIE, format!("ll_session={s}"));
    }
    send(c, req.body(Body::empty()).unwrap()).await
}

async fn send(c: &Arc<Console>, req: Request<Body>) -> (StatusCode, String) {
    let r = c.router().oneshot(req).await.unwrap();
    let status = r.status();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn another_customers_machine_answers_404_like_one_that_does_not_exist() {
    let w = world();
    let own = format!("/machines/{}", w.a_machine);
    assert_eq!(get(&w.console, &own, Some(&w.a)).await.0, StatusCode::OK);
    let (status, body) = get(&w.console, &own, Some(&w.b)).await;
    let (none_status, none_body) = get(&w.console, "/machines/000000000000000000000000", Some(&w.b)).await;
    assert_eq!((status, &body), (none_status, &none_body));
    assert_eq!(status, StatusCode::NOT_FOUND);
    let api = format!("/api/v1/machines/{}", w.a_machine);
    assert_eq!(get(&w.console, &api, Some(&w.b)).await.0, StatusCode::NOT_FOUND);
    let (_, list) = get(&w.console, "/api/v1/machines", Some(&w.b)).await;
    assert!(!list.contains("alpha"), "{list}");
    let (_, list) = get(&w.console, "/api/v1/machines", Some(&w.a)).await;
    assert!(list.contains("alpha"), "{list}");
    // Nobody signed in: pages go to the sign-in form, the API says 401.
    assert_eq!(get(&w.console, "/machines", None).await.0, StatusCode::SEE_OTHER);
    assert_eq!(get(&w.console, "/api/v1/machines", None).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_change_without_the_csrf_token_or_from_another_site_is_refused() {
    let w = world();
    let post = |csrf: &str, site: &str| {
        Request::post("/account/tokens")
            .header(header::COOKIE, format!("ll_session={}", w.a))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header("sec-fetch-site", site)
            .body(Body::from(format!("csrf={csrf}&name=ci")))
            .unwrap()
    };
    let (status, body) = send(&w.console, post("0123", "same-origin")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("CSRF"), "{body}");
    let csrf = {
        let (_, page) = get(&w.console, "/account", Some(&w.a)).await;
        let at = page.find("name=\"csrf\" value=\"").unwrap() + 19;
        page[at..at + 64].to_string()
    };
    assert_eq!(send(&w.console, post(&csrf, "cross-site")).await.0, StatusCode::FORBIDDEN);
    let (status, body) = send(&w.console, post(&csrf, "same-origin")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("llt_"), "the new token is shown once: {body}");
}

#[tokio::test]
async fn the_openapi_description_names_every_api_route() {
    let doc: serde_json::Value = serde_json::from_str(crate::api::OPENAPI).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let source = include_str!("api.rs");
    let routes: Vec<&str> = source
        .match_indices(".route(")
        .map(|(i, _)| source[i + 7..].trim_start().trim_start_matches('"').split('"').next().unwrap())
        .collect();
    assert!(routes.len() >= 6, "{routes:?}");
    for r in routes {
        assert!(paths.contains_key(r), "the API route {r} is not in openapi.json");
    }
    let w = world();
    let (status, body) = get(&w.console, "/api/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("\"openapi\""));
}

/// Every page renders with rows in its lists (an empty list hides a broken
/// row template), for a customer and for the provider.
#[tokio::test]
async fn every_page_renders_with_rows() {
    let w = world();
    let conn = rusqlite::Connection::open(w.console.store.database()).unwrap();
    conn.execute_batch(
        "INSERT INTO jobs (machine, kind, image, state, done_bytes, total_bytes) VALUES ('alpha', 'backup', 'img-1', 'running', 5, 10);
         INSERT INTO images (machine, name, disk, disk_size, image_bytes, stored_bytes, job) VALUES ('alpha', 'img-0', 'sda', 100, 50, 20, 1);",
    )
    .unwrap();
    let admin = {
        let mut db = Db::open(w.console.store.root()).unwrap();
        let u = db.add_user("root@provider.test", "a long enough password", None, Role::ProviderAdmin, "t").unwrap();
        db.open_session(&u, true, crate::session::now()).unwrap().0
    };
    let machine = format!("/machines/{}", w.a_machine);
    for session in [&w.a, &admin] {
        for (path, expect) in [
            ("/machines", "alpha"),
            ("/machines?q=alp", "alpha"),
            (machine.as_str(), "Boot media"),
            ("/machines/new", "Register a PC"),
            ("/images", "img-0"),
            ("/jobs", "50 %"),
            ("/audit", "machine given"),
            ("/audit?q=given", "machine given"),
            ("/customers", "Customer"),
            ("/account", "API tokens"),
        ] {
            let (status, body) = get(&w.console, path, Some(session)).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            assert!(body.contains(expect), "{path} lacks {expect:?}: {body}");
        }
        let req = Request::get("/machines?q=alp").header(header::COOKIE, format!("ll_session={session}"));
        let (status, body) = send(&w.console, req.header("hx-request", "true").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("alpha") && !body.contains("<html"), "htmx gets the list alone: {body}");
    }
    for path in ["/login", "/static/htmx.min.js", "/static/console.css"] {
        assert_eq!(get(&w.console, path, None).await.0, StatusCode::OK, "{path}");
    }
}

/// A customer's admin adds a viewer; the viewer reads but may change
/// nothing (no users, no PCs, no tokens that write); a revoked token stops
/// working at once.
#[tokio::test]
async fn roles_bound_what_a_user_may_do_and_tokens_can_be_revoked() {
    let w = world();
    let form = |session: &str, path: &str, csrf: &str, body: &str| {
        Request::post(path.to_string())
            .header(header::COOKIE, format!("ll_session={session}"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("csrf={csrf}&{body}")))
            .unwrap()
    };
    let csrf_of = |page: &str| {
        let at = page.find("name=\"csrf\" value=\"").unwrap() + 19;
        page[at..at + 64].to_string()
    };
    let (_, page) = get(&w.console, "/users", Some(&w.a)).await;
    let csrf = csrf_of(&page);
    let (status, body) =
        send(&w.console, form(&w.a, "/users", &csrf, "login=viewer%40a.test&role=viewer&password=viewer+password+1"))
            .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("viewer@a.test"), "{body}");
    let (status, _) = send(
        &w.console,
        form(&w.a, "/users", &csrf, "login=p%40a.test&role=provider-admin&password=viewer+password+1"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a customer's admin made a provider admin");

    let viewer = {
        let mut db = Db::open(w.console.store.root()).unwrap();
        let u = db.user_by_login("viewer@a.test").unwrap().unwrap();
        db.open_session(&u, true, crate::session::now()).unwrap().0
    };
    assert_eq!(get(&w.console, "/machines", Some(&viewer)).await.0, StatusCode::OK);
    assert_eq!(get(&w.console, "/users", Some(&viewer)).await.0, StatusCode::FORBIDDEN);
    let (_, page) = get(&w.console, "/account", Some(&viewer)).await;
    let vcsrf = csrf_of(&page);
    let (status, _) = send(&w.console, form(&viewer, "/machines/new", &vcsrf, "name=sneaky&style=receiver")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a viewer registered a PC");
    // A viewer's token reads only, whatever the form asked.
    let (_, body) = send(&w.console, form(&viewer, "/account/tokens", &vcsrf, "name=ci&write=1")).await;
    assert!(body.contains(">read<"), "{body}");
    let token = {
        let at = body.find("id=\"new-token\">").unwrap() + 15;
        body[at..].split('<').next().unwrap().to_string()
    };
    let api = |token: &str| Request::get("/api/v1/machines").header(header::AUTHORIZATION, format!("Bearer {token}"));
    assert_eq!(send(&w.console, api(&token).body(Body::empty()).unwrap()).await.0, StatusCode::OK);
    let id = {
        let at = body.find("/account/tokens/").unwrap() + 16;
        body[at..].split('/').next().unwrap().to_string()
    };
    let (status, body) = send(&w.console, form(&viewer, &format!("/account/tokens/{id}/revoke"), &vcsrf, "")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(send(&w.console, api(&token).body(Body::empty()).unwrap()).await.0, StatusCode::UNAUTHORIZED);
    // Another user's token id is not the viewer's to revoke.
    assert_eq!(
        send(&w.console, form(&viewer, &format!("/account/tokens/{id}/revoke"), &vcsrf, "")).await.0,
        StatusCode::NOT_FOUND
    );
}
