//! Files at rest (issue 14, finding 7): the store holds every machine's
//! mirror, images and credential hashes, so the receiver keeps it to itself,
//! and tightens a store an older receiver (or a hand-made directory) left
//! open.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use lifeline_core::credential::{Credential, MachineName};

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o7777
}

#[tokio::test]
async fn the_store_and_its_database_are_private_even_when_made_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    fs::create_dir(&store).unwrap();
    fs::set_permissions(&store, fs::Permissions::from_mode(0o755)).unwrap();
    // A database an older receiver made with SQLite's default mode.
    drop(rusqlite::Connection::open(store.join("receiver.db")).unwrap());
    fs::set_permissions(store.join("receiver.db"), fs::Permissions::from_mode(0o644)).unwrap();

    let running = lifeline_receiver::spawn("127.0.0.1:0", &store).await.unwrap();
    let mut db = lifeline_store::Db::open(&store).unwrap();
    db.add_machine(&MachineName::new("m1").unwrap(), &Credential::generate("m1").secret_hash(), "").unwrap();
    // Stopped: every service has made its directories by then.
    running.stop().await.unwrap();

    assert_eq!(mode(&store), 0o700, "the store");
    assert_eq!(mode(&store.join("receiver.db")), 0o600, "the database");
    assert_eq!(mode(&store.join("receiver.db-wal")), 0o600, "the database's write-ahead log");
    assert_eq!(mode(&store.join("mirror")), 0o700, "the mirrors");
    assert_eq!(mode(&store.join("images")), 0o700, "the image stores");

    // A fresh store: made private from the start.
    let fresh = dir.path().join("fresh");
    let running = lifeline_receiver::spawn("127.0.0.1:0", &fresh).await.unwrap();
    assert_eq!(mode(&fresh), 0o700);
    assert_eq!(mode(&fresh.join("receiver.db")), 0o600);
    running.stop().await.unwrap();
}
