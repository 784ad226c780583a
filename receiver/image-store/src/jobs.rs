//! The `Jobs` service: how a backup or restore goes, reported by the machine
//! (or its boot OS) as it runs, kept in the management database for the
//! jobs list and the audit trail (`lifeline-receiver jobs`, `images`).

use std::sync::{Arc, Mutex};

use lifeline_proto::v1::jobs_server::{Jobs, JobsServer};
use lifeline_proto::v1::{JobReply, JobReport};
use lifeline_repo::{DirStore, Store};
use lifeline_store::db::jobs::Report;
use lifeline_store::{Authenticator, Db, ImageAccess, StoreLayout};
use tonic::{Request, Response, Status};

/// Longest text field kept from a report (characters).
const MAX_TEXT: usize = 1000;

pub struct JobsService {
    store: StoreLayout,
    auth: Arc<dyn Authenticator>,
    db: Arc<Mutex<Db>>,
}

impl JobsService {
    pub fn new(store: &StoreLayout, auth: Arc<dyn Authenticator>) -> anyhow::Result<JobsService> {
        Ok(JobsService { store: store.clone(), auth, db: Arc::new(Mutex::new(Db::open(store.root())?)) })
    }

    pub fn into_service(self) -> JobsServer<JobsService> {
        JobsServer::new(self)
    }
}

impl JobsService {
    /// A backup reported done names an image its machine really stored:
    /// the images list never shows what a machine merely claims (issue 14,
    /// finding 7).
    async fn check_stored(&self, access: &ImageAccess, image: &str) -> Result<(), Status> {
        if access.read_only {
            return Err(Status::permission_denied(format!(
                "this boot session of machine {} restores another machine's images: it backs nothing up",
                access.machine
            )));
        }
        lifeline_repo::validate_image_name(image).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let repo = DirStore::new(self.store.image_store(&access.store_of));
        let names = tokio::task::spawn_blocking(move || repo.list_manifests())
            .await
            .map_err(|e| Status::internal(format!("store task failed: {e}")))?
            .unwrap_or_default();
        if !names.iter().any(|n| n == image) {
            return Err(Status::failed_precondition(format!(
                "machine {} has no image {image:?} stored here: a backup is reported done only once its image is stored",
                access.machine
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Jobs for JobsService {
    async fn report(&self, req: Request<JobReport>) -> Result<Response<JobReply>, Status> {
        let access = self.auth.authenticate_images(req.metadata(), req.extensions())?;
        let m = access.machine.clone();
        let r = req.into_inner();
        if r.kind == "backup" && r.state == "ok" && !r.image.is_empty() {
            self.check_stored(&access, &r.image).await?;
        }
        let limit = |s: String| s.chars().take(MAX_TEXT).collect::<String>();
        let report = Report {
            kind: r.kind,
            state: r.state,
            image: limit(r.image),
            disk: limit(r.disk),
            disk_size: r.disk_size,
            done_bytes: r.done_bytes,
            total_bytes: r.total_bytes,
            message: limit(r.message),
            stored_bytes: r.stored_bytes,
        };
        let db = self.db.clone();
        let machine = m.as_str().to_string();
        let job = i64::try_from(r.job).map_err(|_| Status::invalid_argument("no such job"))?;
        let id = tokio::task::spawn_blocking(move || {
            db.lock().unwrap_or_else(|e| e.into_inner()).report_job(&machine, job, &report)
        })
        .await
        .map_err(|e| Status::internal(format!("job task failed: {e}")))?
        .map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
        Ok(Response::new(JobReply { job: id as u64 }))
    }
}
