"""Settings as data: the only module that reads environment variables.

Each :class:`Setting` has a name, a default and a help text; ``tests`` check
that every one is documented in the README.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Setting", "SETTINGS", "get", "registry_home", "default_db_url", "forward_max_params", "max_memory", "threads", "debug",
    "sql_timeout_ms", "sql_max_rows", "sql_role",
]


@dataclass(frozen=True)
class Setting:
    name: str
    default: str | None
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "MOTHERTREE_HOME",
        None,
        "Registry home: holds the default SQLite database and the FAISS files. "
        "Default: $XDG_DATA_HOME/mothertree (~/.local/share/mothertree).",
    ),
    Setting(
        "MOTHERTREE_DB",
        None,
        "Database URL (sqlite:///path.db or postgresql+psycopg://...) or a plain "
        "SQLite file path. Default: registry.db inside MOTHERTREE_HOME.",
    ),
    Setting("MOTHERTREE_DEVICE", "auto", "Where fingerprints are computed: auto, cpu or cuda."),
    Setting(
        "MOTHERTREE_THREADS",
        "1",
        "CPU threads torch uses for small kernels (large ones use every core): more threads make the many small "
        "statistics wait on each other and on other processes (3-16x slower measured on 2 cores). "
        "0 keeps torch's own setting.",
    ),
    Setting("MOTHERTREE_DEBUG", None, "Set to 1 to print tracebacks instead of one-line errors."),
    Setting(
        "MOTHERTREE_TEST_POSTGRES_URL",
        "postgresql+psycopg://postgres@127.0.0.1:5432/test",
        "PostgreSQL server the test suite runs against (tests only).",
    ),
    Setting(
        "MOTHERTREE_FORWARD_MAX_PARAMS",
        "2000000000",
        "Largest model (in parameters) that resolve and test run forward passes on for phi_MATCH; "
        "bigger models get the weights-only tests, with a notice.",
    ),
    Setting(
        "MOTHERTREE_MAX_MEMORY",
        None,
        "Memory budget of one process (bytes, or with a K/M/G/T suffix, e.g. 6G): bounds the weight and "
        "activation caches; work that cannot fit gets a clear error instead of an OOM kill. "
        "Default: half of the machine's RAM.",
    ),
    Setting(
        "MOTHERTREE_SQL_TIMEOUT_MS",
        "10000",
        "Time limit of one `mothertree sql` / `report` query, in milliseconds (statement_timeout on "
        "PostgreSQL, a progress-handler check on SQLite); the query is stopped with an error.",
    ),
    Setting(
        "MOTHERTREE_SQL_MAX_ROWS",
        "10000",
        "Most rows one `mothertree sql` / `report` query returns; more are cut and the result is marked truncated.",
    ),
    Setting(
        "MOTHERTREE_SQL_ROLE",
        "mothertree_reader",
        "PostgreSQL role user SQL runs as (SET ROLE): it may only SELECT the registry's tables. "
        "Migration 0005 creates it; the connecting user must be a member (GRANT mothertree_reader TO user).",
    ),
    Setting(
        "MOTHERTREE_WEBHOOK_SECRET",
        None,
        "Secret a hub webhook must send in X-Webhook-Secret to queue work on mothertree serve "
        "(unset: the webhook refuses every call).",
    ),
    Setting(
        "MOTHERTREE_ZOO_DIR",
        None,
        "Cache folder of the synthetic model zoo used by tests, benchmarks and the demo.",
    ),
)

_BY_NAME = {s.name: s for s in SETTINGS}


def get(name: str) -> str | None:
    """Return a setting's value from the environment, or its default."""
    setting = _BY_NAME[name]
    value = os.environ.get(name)
    return value if value not in (None, "") else setting.default


def registry_home() -> Path:
    """The registry home folder (not created here)."""
    home = get("MOTHERTREE_HOME")
    if home:
        return Path(home).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "mothertree"


def default_db_url() -> str:
    """Database URL from ``MOTHERTREE_DB``, else an SQLite file in the registry home."""
    return get("MOTHERTREE_DB") or f"sqlite:///{registry_home() / 'registry.db'}"


def forward_max_params() -> int:
    value = get("MOTHERTREE_FORWARD_MAX_PARAMS") or "0"
    try:
        return int(float(value))
    except ValueError:
        raise ValueError(f"MOTHERTREE_FORWARD_MAX_PARAMS: expected a number of parameters, got {value!r}") from None


def threads() -> int:
    """``MOTHERTREE_THREADS`` as a count (``0``: torch's own setting)."""
    value = get("MOTHERTREE_THREADS") or "1"
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise ValueError(f"MOTHERTREE_THREADS: expected 0 (torch's default) or a number of threads, got {value!r}")
    return n


def _total_ram() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def max_memory() -> int:
    """``MOTHERTREE_MAX_MEMORY`` in bytes (default: half the RAM)."""
    value = get("MOTHERTREE_MAX_MEMORY")
    if value is None:
        return _total_ram() // 2
    text = value.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
    try:
        n = int(float(text[:-1] if scale > 1 else text) * scale)
    except ValueError:
        n = 0
    if n <= 0:
        raise ValueError(f"MOTHERTREE_MAX_MEMORY: expected a size such as 6G or 6442450944, got {value!r}")
    return n


def debug() -> bool:
    return get("MOTHERTREE_DEBUG") not in (None, "", "0")


def _positive_int(name: str) -> int:
    value = get(name) or ""
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}") from None
    if n <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return n


def sql_timeout_ms() -> int:
    """Time limit of one user query (``MOTHERTREE_SQL_TIMEOUT_MS``)."""
    return _positive_int("MOTHERTREE_SQL_TIMEOUT_MS")


def sql_max_rows() -> int:
    """Row limit of one user query (``MOTHERTREE_SQL_MAX_ROWS``)."""
    return _positive_int("MOTHERTREE_SQL_MAX_ROWS")


def sql_role() -> str:
    """PostgreSQL role user SQL runs as (``MOTHERTREE_SQL_ROLE``)."""
    role = get("MOTHERTREE_SQL_ROLE") or "mothertree_reader"
    if not role.replace("_", "").isalnum():
        raise ValueError(f"MOTHERTREE_SQL_ROLE: expected a plain role name (letters, digits, _), got {role!r}")
    return role
