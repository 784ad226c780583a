-- How long each machine's history is kept (lifeline_history::retention::Policy,
-- as operators write it: a span, tiers EVERY:UNTIL, a size). NULL: the default.
ALTER TABLE machines ADD COLUMN history_keep_all TEXT;
ALTER TABLE machines ADD COLUMN history_thin TEXT;
ALTER TABLE machines ADD COLUMN history_max_size TEXT;
