-- The offline path: where machines are found on the network, the boot media
-- made for them, and the boot sessions their one-time tokens opened.

-- The MAC address a machine network-boots from (lowercase aa:bb:cc:dd:ee:ff).
ALTER TABLE machines ADD COLUMN mac TEXT;
CREATE UNIQUE INDEX machines_mac ON machines (mac) WHERE mac IS NOT NULL;

-- A boot OS made for one machine: its files live in STORE/boot/<id>/. Its
-- one-time token (only a hash is kept) opens one boot session, once.
CREATE TABLE boot_media (
    id          INTEGER PRIMARY KEY,
    machine     TEXT NOT NULL REFERENCES machines (name) ON DELETE CASCADE,
    kind        TEXT NOT NULL,          -- netboot | iso | usb | files
    mode        TEXT NOT NULL,          -- backup | restore | menu
    style       TEXT NOT NULL,          -- receiver | local
    image       TEXT NOT NULL DEFAULT '',
    cmdline     TEXT NOT NULL,          -- kernel parameters, without the token
    token_hash  BLOB NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    used_at     TEXT,                   -- when its token was claimed
    used_from   TEXT NOT NULL DEFAULT '',
    revoked     INTEGER NOT NULL DEFAULT 0
);

-- What a claimed boot token becomes: a credential for the machine's image
-- store only (never its mirror), until it expires.
CREATE TABLE boot_sessions (
    token_hash  BLOB PRIMARY KEY,
    media       INTEGER NOT NULL REFERENCES boot_media (id) ON DELETE CASCADE,
    machine     TEXT NOT NULL,
    expires     INTEGER NOT NULL        -- unix seconds
);
