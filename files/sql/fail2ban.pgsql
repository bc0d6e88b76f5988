-- f2bsql schema for PostgreSQL, database `fail2ban`.
--
-- Run it as the `fail2ban` role (psql -U fail2ban -d fail2ban -f fail2ban.pgsql), or as a
-- superuser after `SET ROLE fail2ban`, so the tables belong to that role.
--
-- One file both creates the tables and upgrades databases made by iRedMail's own schema:
--   iRedMail <= 1.6: table `banned` only, unique index (ip, ports, protocol);
--   iRedMail 1.7+:   plus table `jails` (id, name, enabled), unique on name.
-- Every statement checks before it changes anything, so running the file again is a no-op
-- and existing rows are kept.
--
-- Columns iRedAdmin-Pro reads are kept as they were; rows now also carry the jail and the
-- host name in the unique key, so several hosts and jails can hold the same address.

CREATE TABLE IF NOT EXISTS banned (
    id SERIAL PRIMARY KEY,
    -- Banned address: IPv4, IPv6 or a network in CIDR form.
    ip VARCHAR(46) NOT NULL DEFAULT '',
    -- Ports as the jail's action names them, comma separated (as wide as iRedMail 1.7's).
    ports VARCHAR(255) NOT NULL DEFAULT '',
    -- A protocol or a list of them ("tcp,udp").
    protocol VARCHAR(32) NOT NULL DEFAULT 'tcp',
    jail VARCHAR(50) NOT NULL DEFAULT '',
    -- The host whose fail2ban holds the ban; each host only touches its own rows.
    hostname VARCHAR(255) NOT NULL DEFAULT '',
    -- "AU, Australia" or '' when unknown.
    country VARCHAR(255) NOT NULL DEFAULT '',
    rdns VARCHAR(255) NOT NULL DEFAULT '',
    -- 1 once the cron run looked up rdns (bans never wait for DNS).
    rdns_checked INT2 NOT NULL DEFAULT 0,
    -- The failures that made the ban (fail2ban's <failures>).
    failures SMALLINT NOT NULL DEFAULT 0,
    -- Their log lines (fail2ban's <matches>), base64 encoded.
    loglines TEXT,
    -- When the ban happened, naive UTC.
    timestamp TIMESTAMP WITHOUT TIME ZONE NOT NULL DEFAULT (CURRENT_TIMESTAMP(0) AT TIME ZONE 'UTC'),
    -- A panel sets 1; the host's `fail2ban_banned_db unban_db` lifts the ban within a minute.
    remove INT2 NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS jails (
    id SERIAL PRIMARY KEY,
    name VARCHAR(255) NOT NULL DEFAULT '',
    hostname VARCHAR(255) NOT NULL DEFAULT '',
    enabled INT2 NOT NULL DEFAULT 1,
    -- The ports and protocol the jail's banned_db action records its bans with (`sync` needs them).
    ports VARCHAR(255) NOT NULL DEFAULT '',
    protocol VARCHAR(32) NOT NULL DEFAULT ''
);

-- Every ban that left banned (f2bsql's; iRedAdmin-Pro does not read it): what the row held, when
-- the ban began and ended, and why it ended (docs/admin.md, "History"). The cron run of each host
-- prunes its own rows after f2bsql_fail2ban_history_days. Databases made before it get it here.
CREATE TABLE IF NOT EXISTS banned_history (
    id BIGSERIAL PRIMARY KEY,
    ip VARCHAR(46) NOT NULL DEFAULT '',
    ports VARCHAR(255) NOT NULL DEFAULT '',
    protocol VARCHAR(32) NOT NULL DEFAULT '',
    jail VARCHAR(50) NOT NULL DEFAULT '',
    hostname VARCHAR(255) NOT NULL DEFAULT '',
    country VARCHAR(255) NOT NULL DEFAULT '',
    rdns VARCHAR(255) NOT NULL DEFAULT '',
    failures INTEGER NOT NULL DEFAULT 0,
    loglines TEXT,
    -- naive UTC, as banned.timestamp
    banned_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    ended_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    -- unbanned, expired, removed (a panel), stopped (the jail), synced, gone (the jail is gone)
    reason VARCHAR(16) NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS idx_banned_history_ip ON banned_history (ip);
CREATE INDEX IF NOT EXISTS idx_banned_history_hostname_ended ON banned_history (hostname, ended_at);
CREATE INDEX IF NOT EXISTS idx_banned_history_ended ON banned_history (ended_at);

-- Upgrades.

-- iRedMail <= 1.6 stored the country in 50 characters.
DO $f2bsql$
BEGIN
    IF (SELECT character_maximum_length FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = 'banned'
           AND column_name = 'country') < 255 THEN
        ALTER TABLE banned ALTER COLUMN country TYPE VARCHAR(255);
    END IF;
END
$f2bsql$;

-- iRedMail <= 1.6 (and earlier f2bsql) kept 100 characters of ports, and every iRedMail 10 of the
-- protocol: a jail's port list may be as long as iRedMail 1.7's 255, its protocol a list.
DO $f2bsql$
BEGIN
    IF (SELECT character_maximum_length FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = 'banned'
           AND column_name = 'ports') < 255 THEN
        ALTER TABLE banned ALTER COLUMN ports TYPE VARCHAR(255);
    END IF;
    IF (SELECT character_maximum_length FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = 'banned'
           AND column_name = 'protocol') < 32 THEN
        ALTER TABLE banned ALTER COLUMN protocol TYPE VARCHAR(32);
    END IF;
END
$f2bsql$;

-- iRedMail's remove allowed NULL; unban and stop act on remove = 0 rows, so make it 0/1 only.
UPDATE banned SET remove = 0 WHERE remove IS NULL;
ALTER TABLE banned ALTER COLUMN remove SET DEFAULT 0;
ALTER TABLE banned ALTER COLUMN remove SET NOT NULL;

-- The old unique index (ip, ports, protocol) would refuse the same address on a second jail or
-- host; iRedMail 1.7's `jails` is unique on the name alone. Drop whichever unique index covers
-- exactly those columns, whatever it was called.
DO $f2bsql$
DECLARE
    old RECORD;
BEGIN
    FOR old IN
        SELECT t.relname AS tbl, i.relname AS idx, x.indexrelid
          FROM pg_index x
          JOIN pg_class i ON i.oid = x.indexrelid
          JOIN pg_class t ON t.oid = x.indrelid
         WHERE t.relnamespace = current_schema()::regnamespace
           AND x.indisunique AND NOT x.indisprimary
           AND (t.relname, ARRAY(SELECT a.attname::TEXT
                                   FROM unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord)
                                   JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
                                  ORDER BY k.ord))
               IN (('banned', ARRAY['ip', 'ports', 'protocol']), ('jails', ARRAY['name']))
    LOOP
        -- A UNIQUE constraint owns its index and must be dropped as a constraint.
        IF EXISTS (SELECT 1 FROM pg_constraint WHERE conindid = old.indexrelid) THEN
            EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', old.tbl, old.idx);
        ELSE
            EXECUTE format('DROP INDEX %I', old.idx);
        END IF;
    END LOOP;
END
$f2bsql$;

ALTER TABLE jails ADD COLUMN IF NOT EXISTS hostname VARCHAR(255) NOT NULL DEFAULT '';
-- The ports and protocol of each jail's banned_db action, recorded at its start: `sync` inserts
-- a row for a ban fail2ban holds without one, with the jail's own ports and protocol.
ALTER TABLE jails ADD COLUMN IF NOT EXISTS ports VARCHAR(255) NOT NULL DEFAULT '';
ALTER TABLE jails ADD COLUMN IF NOT EXISTS protocol VARCHAR(32) NOT NULL DEFAULT '';
-- Reverse DNS moved off the ban path: the cron run fills rdns and marks the row.
ALTER TABLE banned ADD COLUMN IF NOT EXISTS rdns_checked INT2 NOT NULL DEFAULT 0;

CREATE UNIQUE INDEX IF NOT EXISTS uk_banned_ip_jail_host ON banned (ip, ports, protocol, jail, hostname);
CREATE UNIQUE INDEX IF NOT EXISTS uk_jails_name_host ON jails (name, hostname);
-- start, stop and every cron run read one host's jails: in a fleet's database, not all of them.
CREATE INDEX IF NOT EXISTS idx_jails_hostname ON jails (hostname);
CREATE INDEX IF NOT EXISTS idx_banned_hostname_remove ON banned (hostname, remove);
CREATE INDEX IF NOT EXISTS idx_banned_hostname_rdns ON banned (hostname, rdns_checked);
CREATE INDEX IF NOT EXISTS idx_banned_jail ON banned (jail);
CREATE INDEX IF NOT EXISTS idx_banned_rdns ON banned (rdns);
CREATE INDEX IF NOT EXISTS idx_banned_country ON banned (country);
CREATE INDEX IF NOT EXISTS idx_banned_timestamp ON banned (timestamp);
CREATE INDEX IF NOT EXISTS idx_banned_remove ON banned (remove);
