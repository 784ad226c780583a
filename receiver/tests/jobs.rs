//! Job reports are believed only as far as the store backs them (issue 14,
//! finding 7): a backup reported done must name an image the machine really
//! stored, and what a machine writes into a report never reaches the
//! operator's terminal as control sequences.

mod common;

use common::{register, with_credential};
use std::process::Command;

use lifeline_proto::v1::image_store_client::ImageStoreClient;
use lifeline_proto::v1::jobs_client::JobsClient;
use lifeline_proto::v1::{ImageBlob, JobReport, NamedBlob};
use tonic::Code;

fn cli(store: &std::path::Path, args: &[&str]) -> String {
    let out =
        Command::new(env!("CARGO_BIN_EXE_lifeline-receiver")).arg("--store").arg(store).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn a_backup_reported_done_must_be_stored_and_reports_print_safely() {
    let store = tempfile::tempdir().unwrap();
    let running = lifeline_receiver::spawn("127.0.0.1:0", store.path()).await.unwrap();
    let cred = register(store.path(), "pc1");
    let token = cred.token();
    let mut jobs = JobsClient::connect(running.url()).await.unwrap();
    let report = |job: u64, state: &str, image: &str, message: &str| JobReport {
        job,
        kind: "backup".into(),
        state: state.into(),
        image: image.into(),
        message: message.into(),
        ..Default::default()
    };

    // A made-up image: refused, and not listed.
    let job = jobs.report(with_credential(report(0, "running", "", ""), &token)).await.unwrap();
    let job = job.into_inner().job;
    let e = jobs.report(with_credential(report(job, "ok", "pc1-fake", ""), &token)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(!cli(store.path(), &["images"]).contains("pc1-fake"));

    // A stored one: recorded.
    let mut images = ImageStoreClient::connect(running.url()).await.unwrap();
    images.create_config(with_credential(ImageBlob { data: b"c".to_vec() }, &token)).await.unwrap();
    images
        .put_manifest(with_credential(NamedBlob { name: "pc1-real".into(), data: b"m".to_vec() }, &token))
        .await
        .unwrap();
    jobs.report(with_credential(report(job, "ok", "pc1-real", "\x1b[2J\x1b[31mpwned"), &token)).await.unwrap();
    assert!(cli(store.path(), &["images"]).contains("pc1-real"));

    // The escape sequences are printed escaped, never raw.
    let listed = cli(store.path(), &["jobs"]);
    assert!(!listed.contains('\x1b'), "{listed:?}");
    assert!(listed.contains("\\u{1b}[2J"), "{listed}");
    running.stop().await.unwrap();
}
