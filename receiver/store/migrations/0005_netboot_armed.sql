-- Network boot without secrets in the clear (issue 14, finding 1): boot
-- media are served over plain HTTP only while an operator has armed them,
-- and only at an unguessable URL.

-- The random path component (32 hex digits) network boot serves the media's
-- files under: /boot/<url_secret>/vmlinuz and initrd.img. Network-boot media
-- only: NULL for ISO and USB media (carried by hand, never served) and for
-- media made before this migration (their initrd may hold the repository
-- password: make new media).
ALTER TABLE boot_media ADD COLUMN url_secret TEXT;
CREATE UNIQUE INDEX boot_media_url_secret ON boot_media (url_secret) WHERE url_secret IS NOT NULL;

-- Until when (UTC, '%Y-%m-%dT%H:%M:%SZ') network boot serves the media
-- (`lifeline-receiver bootos arm ID`); NULL: never armed.
ALTER TABLE boot_media ADD COLUMN armed_until TEXT;
