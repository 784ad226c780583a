//! The `Jobs` service: how a backup or restore goes, reported by the machine
//! (or its boot OS) as it runs, kept in the management database for the
//! jobs list and the audit trail (`lifeline-receiver jobs`, `images`).

use std::sync::{Arc, Mutex};

use lifeline_proto::v1::jobs_server::{Jobs, JobsServer};
use lifeline_proto::v1::{JobReply, JobReport};
use lifeline_store::db::jobs::Report;
use lifeline_store::{Authenticator, Db, StoreLayout};
use tonic::{Request, Response, Status};

/// Longest text field kept from a report (characters).
const MAX_TEXT: usize = 1000;

pub struct JobsService {
    auth: Arc<dyn Authenticator>,
    db: Arc<Mutex<Db>>,
}

impl JobsService {
    pub fn new(store: &StoreLayout, auth: Arc<dyn Authenticator>) -> anyhow::Result<JobsService> {
        Ok(JobsService { auth, db: Arc::new(Mutex::new(Db::open(store.root())?)) })
    }

    pub fn into_service(self) -> JobsServer<JobsService> {
        JobsServer::new(self)
    }
}

#[tonic::async_trait]
impl Jobs for JobsService {
    async fn report(&self, req: Request<JobReport>) -> Result<Response<JobReply>, Status> {
        let m = self.auth.authenticate_images(req.metadata(), req.extensions())?.machine;
        let r = req.into_inner();
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
