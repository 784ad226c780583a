//! The Replication service's requests, as an authenticated machine sends
//! them, into the real `MirrorService` on a temporary store: an input is
//! records (see `lifeline_receiver_fuzz::records`) —
//!
//! - kind 0: an `OpBatch` (protobuf), in a gRPC frame as a client sends it, for the
//!   current `Replicate` stream; kind 1: raw bytes for that stream's body
//!   (tonic's framing fuzzed too). The stream is run (ops applied, synced,
//!   acknowledged) when another kind or the end comes. A delta's first
//!   piece that names no base gets the one of the mirror's file at its
//!   path as the stream starts, as an agent copies it from the signature
//!   (a fuzzer cannot guess an inode and a ctime): deltas against files an
//!   earlier stream of the input made are applied for real;
//! - kind 2: a `GetSignature` request (protobuf); kind 3: a `ListTree`
//!   request (protobuf); their answers are read to the end.
//!
//! Checks: no panic, and nothing changes outside the machine's own places
//! (its mirror, its history, its queue progress and delta record): not another
//! machine's mirror, not a directory beside the store. Each input starts
//! from an empty mirror. The machine has a quota (1 MiB, 10,000 entries)
//! so that no input makes the receiver write more than that (a delta's
//! announced length is charged before it is applied).
#![no_main]
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use lifeline_core::credential::MachineName;
use lifeline_mirror::MirrorService;
use lifeline_proto::v1::replication_server::Replication;
use lifeline_proto::v1::{
    delta_instr, op, Chunk, CopyRange, DeltaInstr, FileData, FileDelta, ListTreeRequest, Mkdir, Op, OpBatch,
    SignatureRequest, Symlink,
};
use lifeline_receiver_fuzz::{
    assert_same, grpc_frame, record, records, remove, runtime, scratch, snapshot, write_seeds, Machine,
};
use lifeline_store::db::quota::Limits;
use lifeline_store::private::create_private_dir_all;
use lifeline_store::{Db, Quotas, StoreLayout};
use prost::Message;
use tokio_stream::StreamExt;

struct Setup {
    service: MirrorService,
    root: PathBuf,
    /// Where the machine may write; reset before each input.
    own: Vec<PathBuf>,
    mirror: PathBuf,
    before: BTreeMap<PathBuf, String>,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let root = scratch("mirror_replicate").to_path_buf();
        let store = StoreLayout::create(root.join("store")).expect("a store");
        let (pc1, pc2) = (MachineName::new("pc1").expect("a name"), MachineName::new("pc2").expect("a name"));
        let mut db = Db::open(store.root()).expect("a database");
        for m in [&pc1, &pc2] {
            db.add_machine(m, &[0; 32], "").expect("a machine");
        }
        db.set_quota(&pc1, Limits { bytes: Some(1 << 20), files: Some(10_000) }).expect("a quota");
        // What must stay as it is: a directory beside the store, another
        // machine's mirror.
        std::fs::create_dir_all(root.join("outside/dir")).expect("outside");
        std::fs::write(root.join("outside/file"), "keep").expect("outside");
        std::fs::create_dir_all(store.mirror(&pc2).join("etc")).expect("pc2's mirror");
        std::fs::write(store.mirror(&pc2).join("etc/passwd"), "root:x:0:0").expect("pc2's file");
        let quotas = Arc::new(Quotas::new(&store, 0).expect("quotas"));
        let service = MirrorService::new(&store, Arc::new(Machine(pc1.clone())), quotas).expect("the service");
        let own = vec![store.mirror(&pc1), store.history(&pc1), store.queue_progress(&pc1), store.partial_delta(&pc1)];
        // Their parents, made as the first stream of any machine makes them.
        for p in &own {
            create_private_dir_all(p.parent().expect("a parent")).expect("the store's directories");
        }
        let before = snapshot(&root, &|p| skipped(p, &own));
        Setup { service, root, mirror: store.mirror(&pc1), own, before }
    })
}

/// The machine's own places, and the database (which the quota reads).
fn skipped(p: &Path, own: &[PathBuf]) -> bool {
    own.iter().any(|o| p == o) || p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("receiver.db"))
}

async fn replicate(s: &Setup, body: Vec<u8>) {
    let body = http_body_util::Full::new(bytes::Bytes::from(body));
    let inbound = tonic::Streaming::new_request(
        tonic_prost::ProstDecoder::<OpBatch>::default(),
        body,
        None,
        Some(lifeline_proto::MAX_MESSAGE),
    );
    let mut req = tonic::Request::new(inbound);
    req.metadata_mut().insert(lifeline_proto::QUEUE_HEADER, "0000000000000001".parse().expect("a header"));
    if let Ok(acks) = s.service.replicate(req).await {
        let mut acks = acks.into_inner();
        while acks.next().await.is_some() {}
    }
}

/// `batch` with the base of the mirror's file at its path in each delta's
/// first piece that names none (as the signature would give it); bytes
/// that do not decode as they are.
fn with_bases(s: &Setup, batch: &[u8]) -> Vec<u8> {
    let Ok(mut b) = OpBatch::decode(batch) else { return batch.to_vec() };
    for op in &mut b.ops {
        if let Some(op::Kind::Delta(d)) = &mut op.kind {
            if d.first && d.base_token.is_empty() {
                if let Ok(st) = rustix::fs::lstat(s.mirror.join(std::ffi::OsStr::from_bytes(&op.path))) {
                    d.base_token = lifeline_mirror::delta::base_token(&st);
                    d.base_len = st.st_size as u64;
                }
            }
        }
    }
    b.encode_to_vec()
}

async fn signature(s: &Setup, req: SignatureRequest) {
    // Bounds each input's work: a data op may set a sparse length of
    // terabytes, and a signature reads the whole file.
    let local = s.mirror.join(std::ffi::OsStr::from_bytes(&req.path));
    if local.symlink_metadata().is_ok_and(|m| m.len() > 1 << 20) {
        return;
    }
    if let Ok(chunks) = s.service.get_signature(tonic::Request::new(req)).await {
        let mut chunks = chunks.into_inner();
        while chunks.next().await.is_some() {}
    }
}

async fn list(s: &Setup, req: ListTreeRequest) {
    if let Ok(entries) = s.service.list_tree(tonic::Request::new(req)).await {
        let mut entries = entries.into_inner();
        while entries.next().await.is_some() {}
    }
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let ops = vec![
        Op { seq: 1, path: b"etc".to_vec(), origin: 1, kind: Some(op::Kind::Mkdir(Mkdir::default())) },
        Op {
            seq: 2,
            path: b"etc/hosts".to_vec(),
            origin: 0,
            kind: Some(op::Kind::Data(FileData {
                truncate_to: Some(0),
                chunks: vec![Chunk { offset: 0, data: b"127.0.0.1 localhost\n".to_vec() }],
                size: 20,
                ..FileData::default()
            })),
        },
        Op {
            seq: 3,
            path: b"etc/up".to_vec(),
            origin: 2,
            kind: Some(op::Kind::Symlink(Symlink { target: b"../../../outside".to_vec() })),
        },
    ];
    let batch = OpBatch { ops }.encode_to_vec();
    // In a second stream: a delta of etc/hosts (its base filled in, see
    // with_bases) copying its first 10 bytes and adding a name.
    let new = b"127.0.0.1 receiver\n";
    let delta = OpBatch {
        ops: vec![Op {
            seq: 4,
            path: b"etc/hosts".to_vec(),
            origin: 0,
            kind: Some(op::Kind::Delta(FileDelta {
                first: true,
                last: true,
                max_len: new.len() as u64,
                new_len: new.len() as u64,
                new_hash: blake3::hash(new).as_bytes().to_vec(),
                instrs: vec![
                    DeltaInstr { kind: Some(delta_instr::Kind::Copy(CopyRange { offset: 0, len: 10 })) },
                    DeltaInstr { kind: Some(delta_instr::Kind::Literal(b"receiver\n".to_vec())) },
                ],
                ..FileDelta::default()
            })),
        }],
    }
    .encode_to_vec();
    let sig = SignatureRequest { path: b"etc/hosts".to_vec(), block_len: 0, strong_len: 0 }.encode_to_vec();
    let list = ListTreeRequest { roots: vec![b"etc".to_vec()] }.encode_to_vec();
    vec![
        ("batch", record(0, &batch)),
        ("batch-signature-list", [record(0, &batch), record(2, &sig), record(3, &list)].concat()),
        ("raw-body", record(1, &grpc_frame(&batch))),
        ("delta", [record(0, &batch), record(3, &[]), record(0, &delta)].concat()),
    ]
}

fuzz_target!(
    init: write_seeds(&seeds()),
    |data: &[u8]| {
        let s = setup();
        for p in &s.own {
            remove(p);
        }
        runtime().block_on(async {
            let mut body: Option<Vec<u8>> = None;
            for (kind, payload) in records(data) {
                match kind % 4 {
                    0 => body.get_or_insert_with(Vec::new).extend(grpc_frame(&with_bases(s, payload))),
                    1 => body.get_or_insert_with(Vec::new).extend_from_slice(payload),
                    k => {
                        if let Some(b) = body.take() {
                            replicate(s, b).await;
                        }
                        if k == 2 {
                            if let Ok(req) = SignatureRequest::decode(payload) {
                                signature(s, req).await;
                            }
                        } else if let Ok(req) = ListTreeRequest::decode(payload) {
                            list(s, req).await;
                        }
                    }
                }
            }
            if let Some(b) = body.take() {
                replicate(s, b).await;
            }
        });
        assert_same(&s.before, &snapshot(&s.root, &|p| skipped(p, &s.own)), "a replication stream");
    }
);
