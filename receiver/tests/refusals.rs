//! A flood of refusals is neither a flood of writes nor of audit rows
//! (issue 14, finding 6: 3,000 bogus boot claims cost 3,000 write
//! transactions and audit rows in 2.6 s). Over real gRPC on loopback: 1,000
//! bogus boot claims and 1,000 wrong credentials leave at most two audit
//! rows of each kind (the first at once, the rest counted in one), and the
//! machine's own calls still work.

mod common;

use common::{register, with_credential};
use std::time::Duration;

use lifeline_core::credential::Credential;
use lifeline_proto::v1::boot_sessions_client::BootSessionsClient;
use lifeline_proto::v1::replication_client::ReplicationClient;
use lifeline_proto::v1::{ClaimRequest, ListTreeRequest};
use tonic::Code;

fn rows(store: &std::path::Path, event: &str) -> Vec<String> {
    let db = lifeline_store::Db::open(store).unwrap();
    db.audit_trail(100_000).unwrap().into_iter().filter(|a| a.event.starts_with(event)).map(|a| a.detail).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_bogus_claims_and_credentials_are_two_rows_each() {
    let store = tempfile::tempdir().unwrap();
    let running = lifeline_receiver::spawn("127.0.0.1:0", store.path()).await.unwrap();
    let cred = register(store.path(), "pc1");
    let mut sessions = BootSessionsClient::connect(running.url()).await.unwrap();
    let before = rows(store.path(), "").len();
    for _ in 0..1000 {
        let bogus = Credential::generate("pc1").token();
        let e = sessions.claim(with_credential(ClaimRequest {}, &bogus)).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        // A connection whose credential was refused is closed soon after
        // (limits.rs): each forger's try on a connection of its own.
        let mut mirror = ReplicationClient::connect(running.url()).await.unwrap();
        let e = mirror.list_tree(with_credential(ListTreeRequest { roots: vec![] }, &bogus)).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    let mut mirror = ReplicationClient::connect(running.url()).await.unwrap();
    let claims = rows(store.path(), "boot token refused");
    let creds = rows(store.path(), "credential refused");
    assert_eq!((claims.len(), creds.len()), (1, 1), "the first of each at once: {claims:?} {creds:?}");
    assert!(rows(store.path(), "").len() - before <= 2);
    // The machine itself is still served.
    mirror.list_tree(with_credential(ListTreeRequest { roots: vec![] }, &cred.token())).await.unwrap();
    // Stopped: what was counted is written, one row per kind.
    running.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let claims = rows(store.path(), "boot token refused");
    assert!(claims.len() <= 2, "{claims:?}");
    let creds = rows(store.path(), "credential refused");
    assert!(creds.len() <= 2, "{creds:?}");
    assert!(creds.last().unwrap().contains("999 more"), "{creds:?}");
}
