//! Jobs and images in the management database (see
//! `receiver/store/migrations/0003_jobs.sql`): what machines report of their
//! imaging work through `Jobs.Report`.

use rusqlite::{params, OptionalExtension};

use crate::db::{audit, Db};

/// One report, as the machine sent it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub kind: String,
    pub state: String,
    pub image: String,
    pub disk: String,
    pub disk_size: u64,
    pub done_bytes: u64,
    pub total_bytes: u64,
    pub message: String,
    pub stored_bytes: u64,
}

/// A job as `lifeline-receiver jobs` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: i64,
    pub machine: String,
    pub report: Report,
    pub started_at: String,
    pub finished_at: Option<String>,
}

/// An image as `lifeline-receiver images` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRow {
    pub machine: String,
    pub name: String,
    pub disk: String,
    pub disk_size: u64,
    pub image_bytes: u64,
    pub stored_bytes: u64,
    pub created_at: String,
}

const STATES: [&str; 3] = ["running", "ok", "failed"];

impl Db {
    /// Records report `r` of `machine` for job `job` (0: a new one); returns
    /// the job's id. A job of another machine, or one already ended, is not
    /// changed.
    pub fn report_job(&mut self, machine: &str, job: i64, r: &Report) -> anyhow::Result<i64> {
        if !matches!(r.kind.as_str(), "backup" | "restore") || !STATES.contains(&r.state.as_str()) {
            anyhow::bail!("a job is a backup or a restore, running, ok or failed (got {} {})", r.kind, r.state);
        }
        let tx = self.write()?;
        let id = if job == 0 {
            tx.execute(
                "INSERT INTO jobs (machine, kind, image, disk, disk_size, state, done_bytes, total_bytes, message) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    machine,
                    r.kind,
                    r.image,
                    r.disk,
                    r.disk_size as i64,
                    r.state,
                    r.done_bytes as i64,
                    r.total_bytes as i64,
                    r.message
                ],
            )?;
            let id = tx.last_insert_rowid();
            audit(&tx, Some(machine), &format!("{} started", r.kind), &format!("job {id} {} {}", r.image, r.disk))?;
            id
        } else {
            let owner: Option<(String, Option<String>)> = tx
                .query_row("SELECT machine, finished_at FROM jobs WHERE id = ?1", [job], |x| Ok((x.get(0)?, x.get(1)?)))
                .optional()?;
            match owner {
                Some((m, None)) if m == machine => {}
                Some((m, Some(_))) if m == machine => anyhow::bail!("job {job} has ended"),
                _ => anyhow::bail!("machine {machine} has no job {job}"),
            }
            tx.execute(
                "UPDATE jobs SET state = ?2, image = CASE WHEN ?3 = '' THEN image ELSE ?3 END, done_bytes = ?4, \
                 total_bytes = ?5, message = ?6, updated_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now'), \
                 finished_at = CASE WHEN ?2 = 'running' THEN NULL ELSE strftime('%Y-%m-%dT%H:%M:%SZ', 'now') END, \
                 disk = CASE WHEN ?7 = '' THEN disk ELSE ?7 END, disk_size = CASE WHEN ?8 = 0 THEN disk_size ELSE ?8 END \
                 WHERE id = ?1",
                params![job, r.state, r.image, r.done_bytes as i64, r.total_bytes as i64, r.message, r.disk, r.disk_size as i64],
            )?;
            job
        };
        if r.state != "running" {
            audit(
                &tx,
                Some(machine),
                &format!("{} {}", r.kind, r.state),
                &format!("job {id} {} {}", r.image, r.message),
            )?;
        }
        if r.kind == "backup" && r.state == "ok" && !r.image.is_empty() {
            tx.execute(
                "INSERT INTO images (machine, name, disk, disk_size, image_bytes, stored_bytes, job) \
                 SELECT ?1, ?2, disk, disk_size, ?3, ?4, id FROM jobs WHERE id = ?5 \
                 ON CONFLICT (machine, name) DO UPDATE SET image_bytes = excluded.image_bytes, \
                 stored_bytes = excluded.stored_bytes, job = excluded.job",
                params![machine, r.image, r.done_bytes as i64, r.stored_bytes as i64, id],
            )?;
        }
        tx.commit()?;
        Ok(id)
    }

    /// The last `n` jobs (of `machine`), oldest first.
    pub fn jobs(&self, machine: Option<&str>, n: usize) -> anyhow::Result<Vec<Job>> {
        let mut st = self.conn.prepare(
            "SELECT * FROM (SELECT id, machine, kind, state, image, disk, disk_size, done_bytes, total_bytes, message, \
             started_at, finished_at FROM jobs WHERE ?1 IS NULL OR machine = ?1 ORDER BY id DESC LIMIT ?2) ORDER BY id",
        )?;
        let rows = st.query_map(params![machine, n as i64], |x| {
            Ok(Job {
                id: x.get(0)?,
                machine: x.get(1)?,
                report: Report {
                    kind: x.get(2)?,
                    state: x.get(3)?,
                    image: x.get(4)?,
                    disk: x.get(5)?,
                    disk_size: x.get::<_, i64>(6)? as u64,
                    done_bytes: x.get::<_, i64>(7)? as u64,
                    total_bytes: x.get::<_, i64>(8)? as u64,
                    message: x.get(9)?,
                    stored_bytes: 0,
                },
                started_at: x.get(10)?,
                finished_at: x.get(11)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The images recorded (of `machine`), oldest first.
    pub fn images(&self, machine: Option<&str>) -> anyhow::Result<Vec<ImageRow>> {
        let mut st = self.conn.prepare(
            "SELECT machine, name, disk, disk_size, image_bytes, stored_bytes, created_at FROM images \
             WHERE ?1 IS NULL OR machine = ?1 ORDER BY id",
        )?;
        let rows = st.query_map([machine], |x| {
            Ok(ImageRow {
                machine: x.get(0)?,
                name: x.get(1)?,
                disk: x.get(2)?,
                disk_size: x.get::<_, i64>(3)? as u64,
                image_bytes: x.get::<_, i64>(4)? as u64,
                stored_bytes: x.get::<_, i64>(5)? as u64,
                created_at: x.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeline_core::credential::MachineName;

    #[test]
    fn jobs_are_each_machines_own_and_a_good_backup_records_its_image() {
        let d = tempfile::tempdir().unwrap();
        let mut db = Db::open(d.path()).unwrap();
        for n in ["pc1", "pc2"] {
            db.add_machine(&MachineName::new(n).unwrap(), &[0; 32], "").unwrap();
        }
        let mut r = Report {
            kind: "backup".into(),
            state: "running".into(),
            disk: "/dev/vda QEMU".into(),
            disk_size: 100,
            total_bytes: 40,
            ..Default::default()
        };
        let id = db.report_job("pc1", 0, &r).unwrap();
        r.done_bytes = 20;
        assert!(db.report_job("pc2", id, &r).is_err(), "another machine's job");
        db.report_job("pc1", id, &r).unwrap();
        assert!(db.images(None).unwrap().is_empty());
        r.state = "ok".into();
        r.image = "pc1-1".into();
        r.done_bytes = 40;
        r.stored_bytes = 30;
        db.report_job("pc1", id, &r).unwrap();
        assert!(db.report_job("pc1", id, &r).is_err(), "an ended job");
        let jobs = db.jobs(Some("pc1"), 10).unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!((jobs[0].report.state.as_str(), jobs[0].report.image.as_str()), ("ok", "pc1-1"));
        assert!(jobs[0].finished_at.is_some());
        let images = db.images(Some("pc1")).unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!((images[0].disk_size, images[0].image_bytes, images[0].stored_bytes), (100, 40, 30));
        assert!(db.images(Some("pc2")).unwrap().is_empty());
        r.state = "bogus".into();
        assert!(db.report_job("pc1", 0, &r).is_err());
    }
}
