-- The web console (lifeline-console): the provider's customers (tenants),
-- the people who sign in (provider staff and customers' users), their
-- sessions and API tokens. Every id a URL shows is `public_id`: random, so
-- that one customer cannot walk another's objects by counting.

CREATE TABLE customers (
    id              INTEGER PRIMARY KEY,
    public_id       TEXT NOT NULL UNIQUE,
    name            TEXT NOT NULL UNIQUE,
    email           TEXT NOT NULL DEFAULT '',
    -- What all of the customer's machines may fill together; NULL: no limit.
    quota_bytes     INTEGER,
    quota_machines  INTEGER,
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);

-- customer_id NULL: the provider's staff (role provider-admin), who see
-- every customer.
CREATE TABLE users (
    id              INTEGER PRIMARY KEY,
    public_id       TEXT NOT NULL UNIQUE,
    login           TEXT NOT NULL UNIQUE COLLATE NOCASE,
    customer_id     INTEGER REFERENCES customers (id) ON DELETE CASCADE,
    role            TEXT NOT NULL
                    CHECK (role IN ('provider-admin', 'customer-admin', 'operator', 'viewer')),
    -- Argon2id, as a PHC string (algorithm, parameters, salt, hash).
    password_hash   TEXT NOT NULL,
    -- RFC 6238 secret once the user has confirmed a second factor.
    totp_secret     BLOB,
    -- The last TOTP time step accepted: a code is good once.
    totp_last_step  INTEGER NOT NULL DEFAULT 0,
    failed_logins   INTEGER NOT NULL DEFAULT 0,
    locked_until    INTEGER NOT NULL DEFAULT 0,   -- unix seconds
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    CHECK ((role = 'provider-admin') = (customer_id IS NULL))
);

-- A signed-in browser: the cookie holds the secret, this table its blake3.
CREATE TABLE sessions (
    token_hash      BLOB PRIMARY KEY,
    user_id         INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf            TEXT NOT NULL,
    -- 0 while a user with a second factor has given only the password.
    verified        INTEGER NOT NULL DEFAULT 0,
    -- A second factor being set up, until its first code confirms it.
    pending_totp    BLOB,
    created         INTEGER NOT NULL,
    last_seen       INTEGER NOT NULL,
    expires         INTEGER NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);

-- A program's access on a user's behalf, never more than the user's.
CREATE TABLE api_tokens (
    id              INTEGER PRIMARY KEY,
    public_id       TEXT NOT NULL UNIQUE,
    user_id         INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    scope           TEXT NOT NULL CHECK (scope IN ('read', 'write')),
    token_hash      BLOB NOT NULL UNIQUE,
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    last_used       TEXT
);

-- Machines belong to a customer (NULL: the provider's own, as every machine
-- registered before the console was).
ALTER TABLE machines ADD COLUMN customer_id INTEGER REFERENCES customers (id);
ALTER TABLE machines ADD COLUMN public_id TEXT;
-- What its customer said when registering it: where it is on its network,
-- and whether its images go to the service or to storage attached to it.
ALTER TABLE machines ADD COLUMN ip TEXT;
ALTER TABLE machines ADD COLUMN backup_style TEXT NOT NULL DEFAULT 'receiver'
    CHECK (backup_style IN ('receiver', 'local'));
UPDATE machines SET public_id = lower(hex(randomblob(12)));
CREATE UNIQUE INDEX machines_public_id ON machines (public_id);
CREATE INDEX machines_customer ON machines (customer_id, name);

-- The audit trail, scoped: which customer an entry concerns and who did it.
ALTER TABLE audit ADD COLUMN customer_id INTEGER;
ALTER TABLE audit ADD COLUMN actor TEXT NOT NULL DEFAULT '';
UPDATE audit SET customer_id = (SELECT customer_id FROM machines WHERE machines.name = audit.machine);
CREATE INDEX audit_customer ON audit (customer_id, id);

-- Boot media asked for in the console: made in the background, then
-- downloaded (ISO, USB image) or armed (network boot). `media` is the
-- boot_media row once made.
CREATE TABLE media_requests (
    id              INTEGER PRIMARY KEY,
    public_id       TEXT NOT NULL UNIQUE,
    customer_id     INTEGER REFERENCES customers (id) ON DELETE CASCADE,
    machine         TEXT NOT NULL REFERENCES machines (name) ON DELETE CASCADE,
    kind            TEXT NOT NULL CHECK (kind IN ('netboot', 'iso', 'usb')),
    mode            TEXT NOT NULL CHECK (mode IN ('backup', 'restore', 'menu')),
    state           TEXT NOT NULL DEFAULT 'making' CHECK (state IN ('making', 'ready', 'failed')),
    media           INTEGER REFERENCES boot_media (id) ON DELETE SET NULL,
    error           TEXT NOT NULL DEFAULT '',
    asked_by        TEXT NOT NULL,
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    done_at         TEXT
);
CREATE INDEX media_requests_machine ON media_requests (machine, id);

-- What the console tells a customer's users (and provider staff, with
-- customer_id NULL) when something they asked for is done.
CREATE TABLE notifications (
    id              INTEGER PRIMARY KEY,
    customer_id     INTEGER REFERENCES customers (id) ON DELETE CASCADE,
    at              TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    text            TEXT NOT NULL,
    link            TEXT NOT NULL DEFAULT ''
);
CREATE INDEX notifications_customer ON notifications (customer_id, id);

-- The console lists a customer's jobs through its machines.
CREATE INDEX jobs_machine ON jobs (machine, id);
