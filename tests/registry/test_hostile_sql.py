"""User SQL that tries to escape: side effects, file reads, endless queries; on SQLite and PostgreSQL.

Also: migrations serialised when ten processes open one fresh database at once.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
from sqlalchemy import create_engine, text

from mothertree.registry import Registry
from mothertree.registry.errors import ReadOnlyQueryError
from mothertree.registry.reports import run_report, run_sql

#: Every escape the issue reported, as (id, SQL). Each must be refused (or, on SQLite, where the
#: PostgreSQL function does not exist, fail) and leave no trace.
ESCAPES = [
    ("terminate_backend", "SELECT pg_terminate_backend({other_pid})"),
    ("reload_conf", "SELECT pg_reload_conf()"),
    ("stat_reset", "SELECT pg_stat_reset()"),
    ("advisory_lock", "SELECT pg_advisory_lock(4242)"),
    ("advisory_xact_lock", "SELECT pg_try_advisory_xact_lock(4242)"),
    ("notify", "SELECT pg_notify('mothertree', 'hello')"),
    ("txid_current", "SELECT txid_current()"),
    ("xact_id", "SELECT pg_current_xact_id()"),
    ("read_file", "SELECT pg_read_file('/etc/hostname')"),
    ("ls_dir", "SELECT pg_ls_dir('/tmp')"),
    ("set_role_back", "SELECT set_config('role', current_user, true)"),
    ("nested_read_file", "SELECT query_to_xml('SELECT pg_read_file(''/etc/hostname'')', true, false, '')"),
    ("attach", "SELECT * FROM pragma_database_list"),
    ("sqlite_load_extension", "SELECT load_extension('/tmp/x')"),
    ("sqlite_temp", "SELECT * FROM temp.sqlite_master"),
]


@pytest.fixture
def other_session(db_url):
    """A second, unrelated session on the same database (a neighbour to be left alone)."""
    if not db_url.startswith("postgresql"):
        yield None
        return
    eng = create_engine(db_url)
    conn = eng.connect()
    pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    yield conn, pid
    conn.close()
    eng.dispose()


@pytest.mark.parametrize("name,sql", ESCAPES, ids=[e[0] for e in ESCAPES])
def test_escape_is_refused(registry, other_session, name, sql):
    pg = registry.engine.dialect.name == "postgresql"
    sql = sql.format(other_pid=other_session[1] if other_session else 1)
    with pytest.raises((ReadOnlyQueryError, ValueError)) as info:
        run_sql(registry, sql)
    if pg and not name.startswith("sqlite") and name != "attach":
        assert isinstance(info.value, ReadOnlyQueryError), info.value  # refused, not merely unknown
        assert "only reads" in str(info.value)
    if other_session is not None:  # the neighbour is alive and no lock outlived the query
        conn, _ = other_session
        assert conn.execute(text("SELECT 1")).scalar() == 1
        with registry.engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")).scalar() == 0
    # the registry's own connections still work, and user SQL still reads
    assert run_sql(registry, "SELECT count(*) AS n FROM models").rows == ((0,),)


def test_a_long_query_stops_at_the_timeout(registry, monkeypatch):
    monkeypatch.setenv("MOTHERTREE_SQL_TIMEOUT_MS", "1000")
    slow = (
        "SELECT pg_sleep(30)" if registry.engine.dialect.name == "postgresql"
        else "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    )
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="ran past the 1000 ms limit"):
        run_sql(registry, slow)
    assert time.monotonic() - t0 < 8
    assert run_sql(registry, "SELECT 1 AS one").rows == ((1,),)


def test_rows_are_capped(registry, monkeypatch):
    monkeypatch.setenv("MOTHERTREE_SQL_MAX_ROWS", "5")
    many = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100) SELECT x FROM c"
    r = run_sql(registry, many)
    assert len(r.rows) == 5 and r.truncated
    assert len(run_sql(registry, many, max_rows=3).rows) == 3
    assert not run_report(registry, "families").truncated


def test_reports_run_under_the_same_guards(registry, monkeypatch):
    monkeypatch.setenv("MOTHERTREE_SQL_TIMEOUT_MS", "0")
    with pytest.raises(ValueError, match="MOTHERTREE_SQL_TIMEOUT_MS: expected a positive integer"):
        run_report(registry, "families")


def test_sql_role_is_select_only(registry):
    if registry.engine.dialect.name != "postgresql":
        pytest.skip("roles are PostgreSQL's")
    with registry.engine.connect() as c:
        privs = set(c.execute(text(
            "SELECT DISTINCT privilege_type FROM information_schema.role_table_grants "
            "WHERE grantee = 'mothertree_reader'"
        )).scalars())
    assert privs == {"SELECT"}


@pytest.mark.parametrize("n", [10])
def test_ten_processes_open_a_fresh_database(db_url, tmp_path, n):
    script = textwrap.dedent(
        """
        import sys
        from mothertree.registry import Registry
        reg = Registry(sys.argv[1])
        print(len(reg.models()))
        reg.close()
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, db_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for _ in range(n)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    failures = [err for p, (_, err) in zip(procs, outs) if p.returncode != 0]
    assert not failures, failures[0][-2000:]
    assert all(out.strip() == "0" for out, _ in outs)
    reg = Registry(db_url)
    from mothertree.registry import _db

    assert _db.current_revision(reg.engine) == _db.head_revision()
    reg.close()
