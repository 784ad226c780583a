//! `GetSignature` over real gRPC: authenticated like `ListTree`, confined to
//! the machine's mirror, chunked, and a delta made from it applies.

use std::fs;
use std::os::unix::fs::symlink;
use std::time::Duration;

use lifeline_core::credential::Credential;
use lifeline_core::credential::MachineName;
use lifeline_proto::v1::replication_client::ReplicationClient;
use lifeline_proto::v1::{
    delta_instr, op, CopyRange, DeltaInstr, FileDelta, Op, OpBatch, SignatureChunk, SignatureRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

const TIMEOUT: Duration = Duration::from_secs(20);

struct Env {
    store: tempfile::TempDir,
    running: lifeline_receiver::Running,
    tokens: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl Env {
    async fn new() -> Env {
        let store = tempfile::tempdir().unwrap();
        let running = lifeline_receiver::spawn("127.0.0.1:0", store.path()).await.unwrap();
        Env { store, running, tokens: Default::default() }
    }

    /// Machine `m`'s credential (registered the first time); `None`: none.
    fn authorize<T>(&self, req: &mut Request<T>, m: Option<&str>) {
        let Some(m) = m else { return };
        let mut tokens = self.tokens.lock().unwrap();
        let token = tokens.entry(m.to_string()).or_insert_with(|| {
            let cred = Credential::generate(m);
            let name = MachineName::new(m).unwrap();
            let mut db = lifeline_store::Db::open(self.store.path()).unwrap();
            db.add_machine(&name, &cred.secret_hash(), "").unwrap();
            cred.token()
        });
        req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }

    async fn client(&self) -> ReplicationClient<Channel> {
        ReplicationClient::connect(self.running.url())
            .await
            .unwrap()
            .max_decoding_message_size(lifeline_proto::MAX_MESSAGE)
    }

    fn mirror(&self, m: &str) -> std::path::PathBuf {
        self.store.path().join("mirror").join(m)
    }

    async fn signature(&self, m: Option<&str>, path: &[u8], block_len: u32) -> Result<Vec<SignatureChunk>, Status> {
        let mut req = Request::new(SignatureRequest { path: path.to_vec(), block_len, strong_len: 0 });
        self.authorize(&mut req, m);
        let mut stream = self.client().await.get_signature(req).await?.into_inner();
        let mut out = Vec::new();
        while let Some(msg) = tokio::time::timeout(TIMEOUT, stream.message()).await.unwrap()? {
            out.push(msg);
        }
        Ok(out)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_are_authenticated_and_confined_to_the_mirror() {
    let env = Env::new().await;
    // m1's mirror (made by a first request), with what a hostile mirror may hold.
    env.signature(Some("m1"), b"srv/none", 0).await.unwrap_err();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret"), b"secret").unwrap();
    let m1 = env.mirror("m1");
    fs::create_dir_all(m1.join("srv")).unwrap();
    fs::write(m1.join("srv/f"), vec![7u8; 4 << 20]).unwrap();
    symlink(outside.path().join("secret"), m1.join("srv/link")).unwrap();
    symlink(outside.path(), m1.join("srv/out")).unwrap();

    for machine in [None, Some("nobody")] {
        let mut req = Request::new(SignatureRequest { path: b"srv/f".to_vec(), ..Default::default() });
        if let Some(m) = machine {
            req.metadata_mut().insert("authorization", format!("Bearer {m}:x").parse().unwrap());
        }
        let err = env.client().await.get_signature(req).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{machine:?}: {err}");
    }
    // Another machine sees its own mirror only.
    let err = env.signature(Some("m2"), b"srv/f", 0).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");

    let code = |r: Result<Vec<SignatureChunk>, Status>| r.err().map(|e| e.code());
    assert_eq!(code(env.signature(Some("m1"), b"srv/missing", 0).await), Some(Code::NotFound));
    assert_eq!(code(env.signature(Some("m1"), b"srv", 0).await), Some(Code::FailedPrecondition));
    assert_eq!(code(env.signature(Some("m1"), b"srv/link", 0).await), Some(Code::FailedPrecondition));
    assert_eq!(code(env.signature(Some("m1"), b"srv/out/secret", 0).await), Some(Code::FailedPrecondition));
    for bad in [&b"../m2/srv/f"[..], b"/etc/passwd", b"srv/../srv/f", b""] {
        assert_eq!(code(env.signature(Some("m1"), bad, 0).await), Some(Code::InvalidArgument), "{bad:?}");
    }
    assert_eq!(code(env.signature(Some("m1"), b"srv/f", 3).await), Some(Code::InvalidArgument));

    // 4 MiB in 64-byte blocks: 1.25 MiB of hashes, in more than one message.
    let msgs = env.signature(Some("m1"), b"srv/f", 64).await.unwrap();
    assert!(msgs.len() > 1);
    let h = msgs[0].header.clone().unwrap();
    assert_eq!((h.block_len, h.base_len), (64, 4 << 20));
    assert_eq!(msgs.iter().map(|m| m.weak.len()).sum::<usize>(), (4 << 20) / 64);

    // A delta made from it applies through Replicate: the first 1 MiB kept,
    // the rest replaced.
    let (tx, rx) = mpsc::channel(4);
    let mut req = Request::new(ReceiverStream::new(rx));
    env.authorize(&mut req, Some("m1"));
    let mut acks = env.client().await.replicate(req).await.unwrap().into_inner();
    acks.message().await.unwrap().unwrap();
    let mut new = vec![7u8; 1 << 20];
    new.extend_from_slice(b"the new tail");
    let instrs = vec![
        DeltaInstr { kind: Some(delta_instr::Kind::Copy(CopyRange { offset: 0, len: 1 << 20 })) },
        DeltaInstr { kind: Some(delta_instr::Kind::Literal(b"the new tail".to_vec())) },
    ];
    let delta = FileDelta {
        first: true,
        last: true,
        base_len: h.base_len,
        base_token: h.base_token,
        max_len: new.len() as u64,
        instrs,
        new_len: new.len() as u64,
        new_hash: blake3::hash(&new).as_bytes().to_vec(),
        attr: None,
        abort: false,
    };
    let op = Op { seq: 1, path: b"srv/f".to_vec(), origin: 0, kind: Some(op::Kind::Delta(delta)) };
    tx.send(OpBatch { ops: vec![op] }).await.unwrap();
    let ack = tokio::time::timeout(TIMEOUT, acks.message()).await.unwrap().unwrap().unwrap();
    assert!(ack.errors.is_empty(), "{:?}", ack.errors);
    assert_eq!(ack.applied_seq, 1);
    assert_eq!(fs::read(m1.join("srv/f")).unwrap(), new);
    assert_eq!(fs::read(outside.path().join("secret")).unwrap(), b"secret");
    drop(tx);
    env.running.stop().await.unwrap();
}
