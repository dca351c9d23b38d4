-- PostgreSQL notifies the read view's changes from triggers (see migrations/postgres). SQLite has
-- no channel: the view's entries live 500 ms at most there (src/store/view.rs). Kept so both
-- engines have the same migration versions.
SELECT 1;
