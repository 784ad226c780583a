//! A stolen credential cannot destroy stored images (issue 14, finding 2):
//! an attacker holding a machine's own credential, or a boot session of it,
//! calls `PutManifest` over every existing image name, over real gRPC on
//! loopback. Every call is refused with ALREADY_EXISTS and every image reads
//! back as it was stored.

mod common;

use common::{register, with_credential};
use lifeline_core::credential::{Credential, MachineName};
use lifeline_proto::v1::boot_sessions_client::BootSessionsClient;
use lifeline_proto::v1::image_store_client::ImageStoreClient;
use lifeline_proto::v1::{ClaimRequest, ImageBlob, ManifestRequest, NamedBlob};
use lifeline_store::db::boot::BootMedia;
use tonic::transport::Channel;
use tonic::Code;

async fn put(c: &mut ImageStoreClient<Channel>, token: &str, name: &str, data: &[u8]) -> Result<(), tonic::Status> {
    c.put_manifest(with_credential(NamedBlob { name: name.into(), data: data.to_vec() }, token)).await.map(|_| ())
}

async fn get(c: &mut ImageStoreClient<Channel>, token: &str, name: &str) -> Vec<u8> {
    c.get_manifest(with_credential(ManifestRequest { name: name.into() }, token)).await.unwrap().into_inner().data
}

#[tokio::test]
async fn no_credential_of_the_machine_can_replace_a_stored_image() {
    let store = tempfile::tempdir().unwrap();
    let running = lifeline_receiver::spawn("127.0.0.1:0", store.path()).await.unwrap();
    let machine = register(store.path(), "pc1");
    let boot_token = Credential::generate("pc1");
    let media = BootMedia::new("pc1", "netboot", "backup", "receiver");
    lifeline_store::Db::open(store.path()).unwrap().add_boot_media(&media, &boot_token.secret_hash()).unwrap();
    let mut images = ImageStoreClient::connect(running.url()).await.unwrap();
    let token = machine.token();
    images.create_config(with_credential(ImageBlob { data: b"config".to_vec() }, &token)).await.unwrap();
    let names = ["pc1-2026-12-07T08:00:00", "pc1-2026-12-07T09:00:00"];
    for n in names {
        put(&mut images, &token, n, format!("manifest of {n}").as_bytes()).await.unwrap();
    }

    // The machine's own credential, as ransomware on the machine holds it.
    for n in names {
        let e = put(&mut images, &token, n, b"garbage").await.unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{n}: {e:?}");
        assert!(e.message().contains("never replaced"), "{}", e.message());
    }
    // A boot session of the machine (its one-time token claimed).
    let session = BootSessionsClient::connect(running.url())
        .await
        .unwrap()
        .claim(with_credential(ClaimRequest {}, &boot_token.token()))
        .await
        .unwrap()
        .into_inner()
        .credential;
    for n in names {
        let e = put(&mut images, &session, n, b"garbage").await.unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{n}: {e:?}");
    }
    // A new name is still stored: write-once, not read-only.
    put(&mut images, &session, "pc1-2026-12-07T10:00:00", b"new").await.unwrap();

    for n in names {
        assert_eq!(get(&mut images, &token, n).await, format!("manifest of {n}").as_bytes(), "{n} was changed");
    }
    let images_dir = lifeline_store::StoreLayout::new(store.path()).image_store(&MachineName::new("pc1").unwrap());
    let leftovers: Vec<_> = walk(&images_dir).into_iter().filter(|name| name.starts_with(".tmp-")).collect();
    assert!(leftovers.is_empty(), "refused writes left files behind: {leftovers:?}");
    assert_eq!(walk(&images_dir.join("images")).len(), 3, "the three images, nothing else");
    running.stop().await.unwrap();
}

/// The names of the files under `dir`.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out
}
