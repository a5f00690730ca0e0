"""``report`` and ``sql``: named read-only reports and ad-hoc read-only SQL."""

from __future__ import annotations

import csv
import json
import sys
from typing import Annotated, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from ._app import app
from ._options import JsonOpt
from ._output import safe, state
from ._render import number

CsvOpt = Annotated[bool, typer.Option("--csv", help="Print CSV with a header row on stdout.")]
ParamOpt = Annotated[
    Optional[List[str]], typer.Option("-p", "--param", help="A query parameter as key=value (repeatable).")
]


def _params(pairs: Optional[List[str]]) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"-p expects key=value, got {pair!r}")
        out[key] = value
    return out


def _cell(v, *, display: bool = False) -> str:
    """A value as text; ``display`` rounds floats to 4 significant digits (CSV keeps them exact)."""
    if v is None:
        return ""
    if display and isinstance(v, float):
        return number(v)
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def _print(st, result, as_csv: bool) -> None:
    if as_csv:
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(result.columns)
        w.writerows([_cell(v) for v in row] for row in result.rows)
        return

    def render(c: Console) -> None:
        t = Table(*(safe(col) for col in result.columns))
        for row in result.rows:
            t.add_row(*(safe(_cell(v, display=True)) for v in row))
        c.print(t)
        if result.truncated:
            st.warn("more rows than --max-rows; output truncated")

    st.emit(result.to_dict(), render)


@app.command("report")
def report(
    ctx: typer.Context,
    name: Annotated[Optional[str], typer.Argument(help="Report name; omit to list the reports.")] = None,
    param: ParamOpt = None,
    csv_: CsvOpt = False,
    datasette: Annotated[
        bool,
        typer.Option("--datasette", help="Print Datasette metadata with every report, for the database --db names."),
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """Run a named read-only report. In Python: reg.report(name, params)."""
    from ..registry import reports

    with state(ctx, json_).errors() as st:
        if datasette:
            sys.stdout.write(json.dumps(reports.datasette_metadata(reports.datasette_database_name(st.db)), indent=2) + "\n")
            return
        if name is None:
            def render(c: Console) -> None:
                t = Table("name", "title", "params", "description")
                for r in reports.REPORTS:
                    t.add_row(r.name, r.title, ", ".join(p.name for p in r.params), r.description)
                c.print(t)

            st.emit({"reports": [r.to_dict() for r in reports.REPORTS]}, render)
            return
        reports.get_report(name)  # an unknown name is reported before the database is opened
        _print(st, st.registry().report(name, _params(param)), csv_)


@app.command("sql")
def sql(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="One read-only statement (SELECT, WITH, VALUES, EXPLAIN).")],
    param: ParamOpt = None,
    max_rows: Annotated[Optional[int], typer.Option("--max-rows", min=1, help="Stop after this many rows.")] = None,
    csv_: CsvOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Run ad-hoc read-only SQL; writes are refused. In Python: reg.query(sql)."""
    with state(ctx, json_).errors() as st:
        _print(st, st.registry().query(query, _params(param), max_rows=max_rows), csv_)
