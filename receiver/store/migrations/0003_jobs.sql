-- Imaging jobs machines report (a backup or restore by lifeline-image, in
-- the boot OS or on a running machine) and the images they made.

CREATE TABLE jobs (
    id           INTEGER PRIMARY KEY,
    machine      TEXT NOT NULL REFERENCES machines (name) ON DELETE CASCADE,
    kind         TEXT NOT NULL,             -- backup | restore
    image        TEXT NOT NULL DEFAULT '',
    disk         TEXT NOT NULL DEFAULT '',  -- device and model, as the machine saw it
    disk_size    INTEGER NOT NULL DEFAULT 0,
    state        TEXT NOT NULL,             -- running | ok | failed
    done_bytes   INTEGER NOT NULL DEFAULT 0,
    total_bytes  INTEGER NOT NULL DEFAULT 0,
    message      TEXT NOT NULL DEFAULT '',
    started_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    updated_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    finished_at  TEXT
);

-- Images the receiver holds for machines, as their backups reported them
-- (the receiver itself sees only encrypted blobs).
CREATE TABLE images (
    id            INTEGER PRIMARY KEY,
    machine       TEXT NOT NULL REFERENCES machines (name) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    disk          TEXT NOT NULL DEFAULT '',
    disk_size     INTEGER NOT NULL DEFAULT 0,
    image_bytes   INTEGER NOT NULL DEFAULT 0,  -- used bytes read
    stored_bytes  INTEGER NOT NULL DEFAULT 0,  -- new bytes stored by its backup
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    job           INTEGER REFERENCES jobs (id) ON DELETE SET NULL,
    UNIQUE (machine, name)
);
