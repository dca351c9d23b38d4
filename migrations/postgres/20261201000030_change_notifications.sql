-- The read view (src/store/view.rs) holds, per user, the user row, their token families, their
-- active grants and their credit balance. Every committed change of a user or a token family (what
-- logout, disabling and a password change rest on) notifies `tollgate_changes` with the user's id,
-- whoever wrote it (any instance, the CLI, an operator's SQL), and every instance's listener
-- forgets that user (src/store/changes.rs). Updates that change nothing (the row locks some paths
-- take) notify nothing. Notifications are sent at commit, in commit order, and a transaction's
-- identical ones are sent once.
--
-- Grants and credit balances are deliberately NOT notified: a NOTIFY takes a cluster-wide lock
-- at commit (PreCommit_Notify), which would serialise every granting webhook's commit. The view
-- uses their entries for 500 ms at most instead (the instance that wrote them forgets them at once).
CREATE FUNCTION tollgate_notify_user_row() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('tollgate_changes', OLD.id);
    ELSE
        PERFORM pg_notify('tollgate_changes', NEW.id);
    END IF;
    RETURN NULL;
END;
$$;

-- For rows that belong to a user (`user_id`).
CREATE FUNCTION tollgate_notify_owned_row() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('tollgate_changes', OLD.user_id);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM pg_notify('tollgate_changes', NEW.user_id);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER users_notify_change AFTER UPDATE ON users
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION tollgate_notify_user_row();
CREATE TRIGGER users_notify_delete AFTER DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION tollgate_notify_user_row();

CREATE TRIGGER token_families_notify_change AFTER UPDATE ON token_families
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION tollgate_notify_owned_row();
CREATE TRIGGER token_families_notify_delete AFTER DELETE ON token_families
    FOR EACH ROW EXECUTE FUNCTION tollgate_notify_owned_row();
