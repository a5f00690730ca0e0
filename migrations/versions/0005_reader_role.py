"""PostgreSQL role for user SQL: it may only SELECT the registry's tables.

``mothertree sql`` and ``mothertree report`` run their query after ``SET
LOCAL ROLE mothertree_reader`` (setting ``MOTHERTREE_SQL_ROLE``). This
migration creates that role (``NOLOGIN``: nobody connects as it), lets it
SELECT every table and view of the registry's schema, present and future
(default privileges of the migrating role), and, in this database only,
takes from ``PUBLIC`` the built-in functions whose effects outlive a
read-only, rolled-back transaction or change the session: advisory locks,
``pg_notify``, transaction-id assignment and ``set_config`` (which could
switch the role back). The migrating role is granted them back, so the
registry itself keeps its migration lock.

An operator whose application user is not a superuser grants membership
once: ``GRANT mothertree_reader TO app_user;`` (creating the role needs
CREATEROLE; if the migrating user lacks it, a superuser runs ``CREATE ROLE
mothertree_reader NOLOGIN`` and re-runs ``mothertree db upgrade``; revoking
from ``PUBLIC`` needs the functions' owner, i.e. a superuser).

SQLite has no roles: user SQL there runs on a read-only connection with an
authorizer (see ``registry/_sql_runner.py``), so this migration does nothing.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ROLE = "mothertree_reader"

#: Built-ins PUBLIC may run by default whose effect escapes a rolled-back read-only query.
_RISKY = (
    "proname LIKE 'pg\\_%advisory\\_%' OR proname IN ('pg_notify', 'txid_current', "
    "'txid_current_if_assigned', 'pg_current_xact_id', 'pg_current_xact_id_if_assigned', 'set_config')"
)


def _each_risky(statement: str) -> str:
    """A DO block running ``statement`` (with ``%s`` = the function signature) for every risky built-in."""
    return f"""
DO $$
DECLARE f regprocedure;
BEGIN
  FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
           WHERE p.pronamespace = 'pg_catalog'::regnamespace AND ({_RISKY}) LOOP
    BEGIN
      EXECUTE format('{statement}', f);
    EXCEPTION WHEN insufficient_privilege THEN
      RAISE NOTICE 'mothertree: not allowed to change EXECUTE on %; a superuser should', f;
    END;
  END LOOP;
END $$;
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"""
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}') THEN
    BEGIN
      CREATE ROLE {ROLE} NOLOGIN;
    EXCEPTION
      WHEN duplicate_object OR unique_violation THEN NULL;  -- another database created it just now
      WHEN insufficient_privilege THEN
        RAISE NOTICE 'mothertree: cannot create role {ROLE}; a superuser should: CREATE ROLE {ROLE} NOLOGIN';
    END;
  END IF;
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}') THEN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO {ROLE}', current_schema());
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO {ROLE}', current_schema());
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO {ROLE}', current_schema());
  END IF;
END $$;
""")
    op.execute(_each_risky("REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC"))
    op.execute(_each_risky("GRANT EXECUTE ON FUNCTION %s TO CURRENT_USER"))


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(_each_risky("GRANT EXECUTE ON FUNCTION %s TO PUBLIC"))
    op.execute(f"""
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}') THEN
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I REVOKE SELECT ON TABLES FROM {ROLE}', current_schema());
    EXECUTE format('REVOKE SELECT ON ALL TABLES IN SCHEMA %I FROM {ROLE}', current_schema());
    EXECUTE format('REVOKE USAGE ON SCHEMA %I FROM {ROLE}', current_schema());
  END IF;
END $$;
""")
    # The role is cluster-wide and other registries may use it: it stays.
