-- Cross-machine restore: restore media made for one machine that reads
-- another machine's images (a replacement machine, a cloned disk). Its boot
-- session may read that machine's image store and write nothing there.
ALTER TABLE boot_media ADD COLUMN image_of TEXT REFERENCES machines (name) ON DELETE CASCADE;
ALTER TABLE boot_sessions ADD COLUMN image_of TEXT;
