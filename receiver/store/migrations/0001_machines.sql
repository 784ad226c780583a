-- Machines that may replicate to this receiver, each with its credential.
CREATE TABLE machines (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    -- blake3 of the credential's secret part; the secret itself is never stored.
    token_hash  BLOB NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    notes       TEXT NOT NULL DEFAULT ''
);

-- Who did what, when: registrations, credential changes, removals.
CREATE TABLE audit (
    id       INTEGER PRIMARY KEY,
    at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    machine  TEXT,
    event    TEXT NOT NULL,
    detail   TEXT NOT NULL DEFAULT ''
);
