"""Generate ``docs/cli.md`` from the commands' own ``--help``: ``python -m mothertree.cli._docs``."""

from __future__ import annotations

import sys


def cli_reference() -> str:
    """Markdown with every command's ``--help`` text, in command order."""
    from typer.main import get_command
    from typer.testing import CliRunner

    from . import app

    runner = CliRunner()
    group = get_command(app)
    parts = ["# mothertree CLI reference", "", "Generated from `--help` by `python -m mothertree.cli._docs`; "
             "a test fails when this file is stale.", ""]

    def section(path: list[str], cmd) -> None:
        res = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "100", "TERM": "dumb"}, prog_name="mothertree")
        parts.extend([f"## mothertree {' '.join(path)}".rstrip(), "", "```", res.output.rstrip(), "```", ""])
        for name, sub in getattr(cmd, "commands", {}).items():
            section([*path, name], sub)

    section([], group)
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(cli_reference())
