//! The ImageStore service's requests, as an authenticated machine sends
//! them, into the real `ImageStoreService` on a temporary store: an input is
//! records (see `lifeline_receiver_fuzz::records`) whose kind picks the call
//! and whose payload is its request (protobuf) —
//!
//! 0 `GetConfig`, 1 `CreateConfig`, 2 `ListPacks`, 3 a `PackPiece` of the
//! current `PutPack` upload (gRPC-framed as a client does), 4 raw bytes of
//! that upload's body (tonic's framing fuzzed too), 5 `ReadPack`,
//! 6 `PutManifest`, 7 `GetManifest`, 8 `ListManifests`. An upload is sent
//! when another kind or the end comes.
//!
//! Checks: no panic, and nothing changes outside the machine's own image
//! repository (not another machine's, not a directory beside the store).
//! Each input starts from no repository.
#![no_main]
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use lifeline_core::credential::MachineName;
use lifeline_image_store::ImageStoreService;
use lifeline_proto::v1::image_store_server::ImageStore;
use lifeline_proto::v1::{ImageBlob, ImageEmpty, ManifestRequest, NamedBlob, PackPiece, PackRange};
use lifeline_receiver_fuzz::{
    assert_same, grpc_frame, record, records, remove, runtime, scratch, snapshot, write_seeds, Machine,
};
use lifeline_store::{Db, Quotas, StoreLayout};
use prost::Message;
use tokio_stream::StreamExt;
use tonic::Request;

struct Setup {
    service: ImageStoreService,
    root: PathBuf,
    own: PathBuf,
    before: BTreeMap<PathBuf, String>,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let root = scratch("image_store").to_path_buf();
        let store = StoreLayout::create(root.join("store")).expect("a store");
        let (pc1, pc2) = (MachineName::new("pc1").expect("a name"), MachineName::new("pc2").expect("a name"));
        let mut db = Db::open(store.root()).expect("a database");
        for m in [&pc1, &pc2] {
            db.add_machine(m, &[0; 32], "").expect("a machine");
        }
        // What must stay as it is: a directory beside the store, another
        // machine's repository.
        std::fs::create_dir_all(root.join("outside/dir")).expect("outside");
        std::fs::write(root.join("outside/file"), "keep").expect("outside");
        std::fs::create_dir_all(store.image_store(&pc2).join("manifests")).expect("pc2's repository");
        std::fs::write(store.image_store(&pc2).join("config"), "pc2").expect("pc2's config");
        let quotas = Arc::new(Quotas::new(&store, 0).expect("quotas"));
        let service = ImageStoreService::new(&store, Arc::new(Machine(pc1.clone())), quotas).expect("the service");
        let own = store.image_store(&pc1);
        let before = snapshot(&root, &|p| skipped(p, &own));
        Setup { service, root, own, before }
    })
}

/// The machine's own repository, and the database (which the quota reads).
fn skipped(p: &Path, own: &Path) -> bool {
    p == own || p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("receiver.db"))
}

async fn put_pack(s: &Setup, body: Vec<u8>) {
    let body = http_body_util::Full::new(bytes::Bytes::from(body));
    let pieces = tonic::Streaming::new_request(
        tonic_prost::ProstDecoder::<PackPiece>::default(),
        body,
        None,
        Some(lifeline_proto::MAX_MESSAGE + (1 << 20)),
    );
    let _ = s.service.put_pack(Request::new(pieces)).await;
}

async fn call(s: &Setup, kind: u8, p: &[u8]) {
    let svc = &s.service;
    // A payload that does not decode is refused by tonic before any handler.
    let _ = match kind {
        0 => match ImageEmpty::decode(p) {
            Ok(r) => svc.get_config(Request::new(r)).await.map(drop),
            Err(_) => return,
        },
        1 => match ImageBlob::decode(p) {
            Ok(r) => svc.create_config(Request::new(r)).await.map(drop),
            Err(_) => return,
        },
        2 => match ImageEmpty::decode(p) {
            Ok(r) => match svc.list_packs(Request::new(r)).await {
                Ok(list) => {
                    let mut list = list.into_inner();
                    while list.next().await.is_some() {}
                    Ok(())
                }
                Err(e) => Err(e),
            },
            Err(_) => return,
        },
        5 => match PackRange::decode(p) {
            Ok(r) => svc.read_pack(Request::new(r)).await.map(drop),
            Err(_) => return,
        },
        6 => match NamedBlob::decode(p) {
            Ok(r) => svc.put_manifest(Request::new(r)).await.map(drop),
            Err(_) => return,
        },
        7 => match ManifestRequest::decode(p) {
            Ok(r) => svc.get_manifest(Request::new(r)).await.map(drop),
            Err(_) => return,
        },
        _ => match ImageEmpty::decode(p) {
            Ok(r) => svc.list_manifests(Request::new(r)).await.map(drop),
            Err(_) => return,
        },
    };
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    // The framing the store checks before a pack gets its name (see
    // lifeline_repo::pack): header, a sealed index of 40 bytes (nonce and
    // tag of an empty one), the trailer giving its length.
    let mut pack = b"LLPK\x01\0\0\0".to_vec();
    pack.extend_from_slice(&[0; 40]);
    pack.extend_from_slice(&40u32.to_le_bytes());
    pack.extend_from_slice(b"LLPX");
    let id = vec![7u8; 16];
    let first = PackPiece { id: id.clone(), data: pack[..20].to_vec() }.encode_to_vec();
    let second = PackPiece { id: vec![], data: pack[20..].to_vec() }.encode_to_vec();
    let config = ImageBlob { data: vec![1; 64] }.encode_to_vec();
    let manifest = NamedBlob { name: "disk-2026-12-07".into(), data: vec![2; 64] }.encode_to_vec();
    let get = ManifestRequest { name: "disk-2026-12-07".into() }.encode_to_vec();
    let read = PackRange { id, offset: 8, len: 16 }.encode_to_vec();
    let session = [
        record(1, &config),
        record(3, &first),
        record(3, &second),
        record(2, &[]),
        record(5, &read),
        record(6, &manifest),
        record(7, &get),
        record(8, &[]),
        record(0, &[]),
    ]
    .concat();
    vec![("session", session), ("raw-pack", [record(1, &config), record(4, &grpc_frame(&first))].concat())]
}

fuzz_target!(
    init: write_seeds(&seeds()),
    |data: &[u8]| {
        let s = setup();
        remove(&s.own);
        runtime().block_on(async {
            let mut upload: Option<Vec<u8>> = None;
            for (kind, payload) in records(data) {
                match kind % 9 {
                    3 => upload.get_or_insert_with(Vec::new).extend(grpc_frame(payload)),
                    4 => upload.get_or_insert_with(Vec::new).extend_from_slice(payload),
                    k => {
                        if let Some(b) = upload.take() {
                            put_pack(s, b).await;
                        }
                        call(s, k, payload).await;
                    }
                }
            }
            if let Some(b) = upload.take() {
                put_pack(s, b).await;
            }
        });
        assert_same(&s.before, &snapshot(&s.root, &|p| skipped(p, &s.own)), "an image store request");
    }
);
