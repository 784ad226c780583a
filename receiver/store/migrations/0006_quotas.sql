-- How much of the store each machine may fill: bytes allocated by its mirror
-- and its image repository, and entries in its mirror. NULL: no limit.
ALTER TABLE machines ADD COLUMN quota_bytes INTEGER;
ALTER TABLE machines ADD COLUMN quota_files INTEGER;
