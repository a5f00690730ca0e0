"""A newcomer's first hour (issue 13): names that never overwrite, one-line errors,
no registry created by mistake, progress when piped, readable tables, pictures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fakehub import fake_hub  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]


def _bare(tiny_models, kind: str, folder: Path) -> Path:
    """A folder holding only ``model.safetensors`` (no config), like a hand-made export."""
    folder.mkdir(parents=True)
    shutil.copy(tiny_models[kind] / "model.safetensors", folder / "model.safetensors")
    return folder / "model.safetensors"


def _names(cli) -> dict[str, dict]:
    code, out, _ = cli("--json", "models")
    assert code == 0, out
    return {m["name"]: m for m in json.loads(out)["models"]}


# ---------------------------------------------------------------- 1. names
def test_bare_files_named_after_their_folder_never_overwrite(cli, tiny_models, tmp_path):
    a = _bare(tiny_models, "llama", tmp_path / "a")
    b = _bare(tiny_models, "gpt2", tmp_path / "b")
    code, out, _ = cli("index", str(a))
    assert code == 0 and out.splitlines() == [f"indexed   a  <- {a}  (new model, 21 tensors)"]
    code, out, _ = cli("index", str(b))
    assert code == 0 and out.splitlines() == [f"indexed   b  <- {b}  (new model, 28 tensors)"]
    models = _names(cli)
    assert sorted(models) == ["a", "b"]
    assert (models["a"]["architecture"], models["b"]["architecture"]) == ("llama", "gpt2")
    assert "family" not in models["a"]  # "family" names lineage families only


def test_same_leaf_gets_the_parent_folder_as_prefix(cli, tiny_models, tmp_path):
    run_a = shutil.copytree(tiny_models["llama"], tmp_path / "runA" / "checkpoint-500")
    run_b = shutil.copytree(tiny_models["llama-other"], tmp_path / "runB" / "checkpoint-500")
    code, out, _ = cli("--json", "index", str(run_a), str(run_b))
    assert code == 0
    got = [(m["name"], m["status"], m["revision"]) for m in json.loads(out)["models"]]
    assert got == [("checkpoint-500", "indexed", 1), ("runB/checkpoint-500", "indexed", 1)]
    assert sorted(_names(cli)) == ["checkpoint-500", "runB/checkpoint-500"]


def test_revision_only_for_the_same_path_or_an_explicit_name(cli, tiny_models, tmp_path, monkeypatch):
    folder = shutil.copytree(tiny_models["llama"], tmp_path / "work" / "mine")
    monkeypatch.chdir(tmp_path / "work")
    assert cli("index", "mine")[0] == 0  # relative on the command line, stored absolute
    assert _names(cli)["mine"]["source"] == str(folder)
    shutil.copy(tiny_models["llama-other"] / "model.safetensors", folder / "model.safetensors")
    code, out, _ = cli("index", str(folder))  # same path, new weights: the next revision
    assert out.splitlines() == [f"revised   mine  <- {folder}  (revision 2, 21 tensors)"]
    other = shutil.copytree(tiny_models["gpt2"], tmp_path / "elsewhere" / "mine")
    code, out, _ = cli("index", str(other))  # another path: another name
    assert out.splitlines() == [f"indexed   elsewhere/mine  <- {other}  (new model, 28 tensors)"]
    code, out, _ = cli("index", str(other), "--name", "mine")  # said so: a revision
    assert out.splitlines() == [f"revised   mine  <- {other}  (revision 3, 28 tensors)"]


@pytest.mark.parametrize(
    "name, message",
    [
        ("evil\x1b[31mred", "Error: Model name 'evil\\x1b[31mred' contains the control character '\\x1b'. "
                            "Choose another with: mothertree index PATH --name NAME"),
        ("../../etc", "Error: Model name '../../etc' has a '.' or '..' path segment. "
                      "Choose another with: mothertree index PATH --name NAME"),
        ("/abs/name", "Error: Model name '/abs/name' is an absolute path. "
                      "Choose another with: mothertree index PATH --name NAME"),
        ("x" * 300, "Error: Model name has 300 characters (at most 256). "
                    "Choose another with: mothertree index PATH --name NAME"),
    ],
)
def test_bad_names_are_refused_in_one_line(cli, tiny_models, name, message):
    code, out, err = cli("index", str(tiny_models["llama"]), "--name", name)
    assert (code, out, err) == (1, "", message + "\n")
    assert "\x1b" not in err


def test_control_characters_never_reach_the_terminal():
    from mothertree.cli._output import safe
    from mothertree.cli._render import edge_line, mermaid

    assert safe("a\x1b[2Jb\x07") == "a\\x1b[2Jb\\x07"
    assert safe("[bold]x[/bold]") == "\\[bold]x\\[/bold]"  # no markup injection
    e = {"parent": "p\x1b", "child": "c\n", "relation": "finetune", "p_value_log10": -9.0,
         "direction_confidence": 0.9, "method": "exact"}
    assert "\x1b" not in edge_line(e) and "\n" not in edge_line(e)
    assert "\x1b" not in mermaid({"models": [{"name": "p\x1b"}], "edges": [e]})


# ---------------------------------------------------------------- 2. one-line errors
def test_unknown_report_and_missing_sql_parameter(cli):
    assert cli("init")[0] == 0
    code, out, err = cli("report", "familes")
    assert (code, out) == (1, "")
    assert err == ("Error: No report named 'familes'. Did you mean 'families'? Reports: families, top-roots, "
                   "undeclared-derivatives, misdeclared-parents, relations, architectures, hub-status, "
                   "hub-transfers (list them with: mothertree report)\n")
    code, out, err = cli("sql", "SELECT name FROM models WHERE name = :name")
    assert (code, err) == (1, "Error: The SQL uses parameter(s) :name with no value; pass each with -p, "
                              "e.g. -p name=VALUE\n")


def test_downgrade_to_an_unknown_revision(cli, tmp_path):
    db = tmp_path / "r.db"
    assert cli("--db", str(db), "init")[0] == 0
    code, out, err = cli("--db", str(db), "db", "downgrade", "nosuchrev")
    assert (code, out) == (1, "")
    assert err == (f"Error: Cannot downgrade the database at sqlite:///{db} to 'nosuchrev': Can't locate revision "
                   "identified by 'nosuchrev'. Revisions: base, 0001, 0002, 0003, 0004, 0005, 0006, 0007, 0008; see the current one with: "
                   "mothertree db current\n")


def test_index_hub_without_network_is_one_line_and_recorded(cli, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    code, out, err = cli("index-hub", "acme/llama-base", "--retries", "1")
    assert (code, out) == (1, "")
    assert len(err.splitlines()) == 1
    assert err.startswith("Error: acme/llama-base: cannot reach the Hugging Face Hub (ConnectError: ")
    assert err.endswith("); check the network or HF_ENDPOINT, or index local copies with: mothertree "
                        "index-cache (after 1 tries)\n")
    code, out, _ = cli("--json", "report", "hub-status")
    (row,) = json.loads(out)["rows"]
    assert row[:3] == ["acme/llama-base", "failed", 1] and "cannot reach the Hugging Face Hub" in row[3]


def test_unreachable_postgresql_database_is_one_line(cli):
    from conftest import PG_URL, _pg_reachable

    if _pg_reachable():
        pytest.skip("no PostgreSQL server")
    from sqlalchemy.engine import make_url

    url = make_url(PG_URL).set(database="mt_nosuchdb").render_as_string(hide_password=False)
    code, out, err = cli("--db", url, "models")
    assert (code, out) == (1, "") and len(err.splitlines()) == 1
    assert err.startswith(f"Error: Cannot open the database at {make_url(url).render_as_string()}: connection failed")
    assert 'database "mt_nosuchdb" does not exist' in err
    assert err.endswith("Check the URL given with --db or MOTHERTREE_DB (and that the server is running).\n")


# ---------------------------------------------------------------- 4. no registry by mistake
def test_mistyped_db_creates_nothing(cli, tmp_path):
    typo = tmp_path / "typo" / "regsitry.db"
    for args in (["models"], ["tree"], ["show", "x"], ["sql", "SELECT 1"], ["db", "current"], ["resolve"]):
        code, out, err = cli("--db", str(typo), *args)
        assert (code, out) == (1, ""), args
        assert err == (f"Error: No registry at sqlite:///{typo}. Create one with: mothertree init (or mothertree "
                       "index PATH); check --db or MOTHERTREE_DB for a typo\n"), args
    assert not typo.parent.exists()


def test_foreign_database_needs_init_force(cli, tmp_path, tiny_models):
    import sqlite3

    db = tmp_path / "app.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE invoices (id INTEGER)")
    message = (f"Error: The database at sqlite:///{db} is not a mothertree registry (it holds 1 other table(s): "
               "invoices). Check --db or MOTHERTREE_DB; to add the registry's tables to it anyway run: "
               "mothertree init --force\n")
    for args in (["init"], ["index", str(tiny_models["llama"])], ["models"], ["db", "upgrade"]):
        assert cli("--db", str(db), *args)[::2] == (1, message), args
    with sqlite3.connect(db) as c:
        assert [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["invoices"]
    assert cli("--db", str(db), "init", "--force")[0] == 0
    assert cli("--db", str(db), "index", str(tiny_models["llama"]))[0] == 0


def test_foreign_postgresql_database_is_refused(db_url, cli):
    if not db_url.startswith("postgresql"):
        pytest.skip("the SQLite case is above")
    from sqlalchemy import create_engine, inspect, text

    eng = create_engine(db_url)
    with eng.begin() as c:
        c.execute(text("CREATE TABLE invoices (id INTEGER)"))
    code, _, err = cli("--db", db_url, "init")
    assert code == 1 and "is not a mothertree registry (it holds 1 other table(s): invoices)" in err
    assert set(inspect(eng).get_table_names()) == {"invoices"}
    eng.dispose()


# ---------------------------------------------------------------- 5. global options anywhere
def test_db_and_json_anywhere(cli, tiny_models, tmp_path):
    db = tmp_path / "x.db"
    assert cli("index", str(tiny_models["llama"]), "--db", str(db))[0] == 0
    for args in (["models", "--db", str(db), "--json"], ["models", f"--db={db}", "--json"],
                 ["--json", "models", "--db", str(db)]):
        code, out, _ = cli(*args)
        assert code == 0 and [m["name"] for m in json.loads(out)["models"]] == ["llama"], args
    code, out, _ = cli("db", "current", "--db", str(db), "--json")
    assert code == 0 and json.loads(out)["schema_revision"] == json.loads(out)["head"]


# ---------------------------------------------------------------- 6. progress when piped
def test_progress_lines_with_eta_when_not_a_terminal():
    import io

    from rich.console import Console

    from mothertree.cli._output import Reporter

    buf = io.StringIO()
    rep = Reporter(Console(file=buf, width=200), every_s=0.0, first_s=0.0)
    assert not rep.tty
    rep.message("testing a ~ b (1/3)")
    rep.message("testing a ~ c (2/3)")
    rep.bytes("big", 0, 1000)
    rep.bytes("big", 500, 1000)
    rep.bytes("big", 1000, 1000)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "testing a ~ b (1/3)"
    assert lines[1].startswith("testing a ~ c (2/3), about ") and lines[1].endswith(" left")
    assert lines[2:4] == ["big: 0% (0 B of 1.0 kB)", lines[3]]
    assert lines[3].startswith("big: 50% (500 B of 1.0 kB), about ")
    assert lines[-1].startswith("big: read 1.0 kB in ")


def test_test_command_reports_its_steps_and_no_warnings(cli, tiny_models):
    assert cli("index", str(tiny_models["llama"]), str(tiny_models["llama-other"]))[0] == 0
    code, out, err = cli("test", "llama", "llama-other")
    assert code == 0 and out.startswith("llama vs llama-other: no evidence of dependence  (log10 p = ")
    steps = [ln for ln in err.splitlines() if ln.startswith("step ")]
    assert steps == ["step 1 of 3: loading llama (weights, and a forward pass for phi_MATCH)",
                     "step 2 of 3: loading llama-other", "step 3 of 3: testing llama ~ llama-other (method auto)"]
    assert "warning:" not in err and "[transformers]" not in err
    # 10. the same pair again: the stored result, at once
    code, out, err = cli("test", "llama", "llama-other")
    assert "note: stored result of " in out and "step 1 of 3" not in err
    # 10. the same model twice: said at once
    code, out, err = cli("test", "llama", "llama")
    assert (code, out) == (0, "llama vs llama: the same model: dependent by definition, no test run\n")


# ---------------------------------------------------------------- 7. tables at 80 columns
def test_tables_fit_80_columns_and_never_cut_names(cli, tiny_models, monkeypatch):
    long = "acme-research/llama-3-8b-instruct-finetuned-on-everything"
    assert cli("index", str(tiny_models["llama"]), "--name", long)[0] == 0
    monkeypatch.setenv("COLUMNS", "80")
    for args in (["models"], ["show", long]):
        code, out, _ = cli(*args)
        assert code == 0
        assert long in out, args
        table = [line for line in out.splitlines() if line[:1] in "┏┃┡│└"]
        assert table and max(len(line) for line in table) <= 80, args
    code, out, _ = cli("show", long)
    assert "model.layers.0.self_attn.q_proj.weight" in out
    head = out.splitlines()[0]
    assert "architecture" not in head  # 10. the models table calls it architecture, not family
    code, out, _ = cli("models")
    assert "architecture" in out and "family" not in out


# ---------------------------------------------------------------- 8. hub ids and folders of models
def test_index_accepts_hub_ids(cli, fake_hub):
    code, out, _ = cli("--json", "index", "acme/llama-base")
    assert code == 0
    assert [(r["repo_id"], r["status"]) for r in json.loads(out)["repos"]] == [("acme/llama-base", "indexed")]
    assert "acme/llama-base" in _names(cli)


def test_a_mistyped_local_path_is_not_a_hub_id(cli, tmp_path, monkeypatch):
    from mothertree.registry._naming import is_hub_id

    (tmp_path / "runA").mkdir()
    monkeypatch.chdir(tmp_path)
    assert is_hub_id("acme/llama-base") and is_hub_id("acme/llama-base@v1")
    assert not is_hub_id("runA/checkpoint-5OO") and not is_hub_id("a/b/c") and not is_hub_id("gpt2")
    code, out, err = cli("index", "runA/checkpoint-5OO")
    assert (code, err) == (1, f"Error: {tmp_path / 'runA' / 'checkpoint-5OO'}: no such file or folder\n")


def test_index_a_folder_of_model_folders(cli, tiny_models, tmp_path):
    zoo = tmp_path / "zoo"
    for kind in ("llama", "gpt2"):
        shutil.copytree(tiny_models[kind], zoo / kind)
    (zoo / "notes").mkdir()
    code, out, _ = cli("index", str(zoo))
    assert code == 0
    assert [ln.split()[:2] for ln in out.splitlines()] == [["indexed", "gpt2"], ["indexed", "llama"]]


# ---------------------------------------------------------------- 9. downgrade base
def test_downgrade_base_needs_yes(cli, tiny_models, tmp_path):
    db = tmp_path / "r.db"
    assert cli("--db", str(db), "index", str(tiny_models["llama"]))[0] == 0
    code, out, err = cli("--db", str(db), "db", "downgrade", "base")
    assert (code, out) == (1, "")
    assert err == (f"Error: db downgrade base drops every table of the registry at sqlite:///{db}, with all its "
                   "models; add --yes to do it\n")
    assert "llama" in _names(lambda *a: cli("--db", str(db), *a))
    code, out, _ = cli("--db", str(db), "db", "downgrade", "base", "--yes")
    assert (code, out) == (0, "schema at revision base\n")


# ---------------------------------------------------------------- 10. small things
def test_small_things(cli, tiny_models):
    assert cli("init")[0] == 0
    code, out, _ = cli("tree")
    assert (code, out) == (0, "The registry has no models yet. Index some with: mothertree index PATH, "
                              "then: mothertree resolve\n")
    code, _, err = cli("resolve", "-k", "0")
    assert code == 2 and "Invalid value for '-k'" in err
    code, _, err = cli("candidates", "x", "-k", "0")
    assert code == 2 and "Invalid value for '-k'" in err
    assert cli("index", str(tiny_models["llama"]), str(tiny_models["llama-other"]))[0] == 0
    code, out, _ = cli("--json", "candidates", str(tiny_models["llama"]))
    doc = json.loads(out)
    assert doc["model"] == "llama" and "llama" not in [c["name"] for c in doc["candidates"]]
    code, out, _ = cli("tree")
    assert out == "2 model(s), no lineage edges yet. Find them with: mothertree resolve\n"


def test_reports_round_floats_for_display(cli):
    assert cli("init")[0] == 0
    code, out, _ = cli("sql", "SELECT 0.1234567890123456 AS x, -513.80000000000001 AS y")
    assert code == 0 and "0.1235" in out and "-513.8" in out and "0.12345678" not in out
    code, out, _ = cli("sql", "SELECT 0.1234567890123456 AS x", "--csv")
    assert out == "x\n0.1234567890123456\n"


def test_demo_explains_its_numbers_and_merges(cli, monkeypatch):
    import mothertree.bench.demo as demo
    from mothertree.bench.demo import DemoResult

    edge = {"relation": "merge", "p_value_log10": -40.0, "direction_confidence": 0.9, "method": "exact"}
    tree = {"model": None, "models": [{"name": n} for n in ("a", "b", "m")], "roots": ["a", "b"], "notes": [],
            "edges": [dict(edge, parent="a", child="m"), dict(edge, parent="b", child="m")]}
    fake = DemoResult(db="demo.db", zoo="zoo", models=("a", "b", "m"), tree=tree,
                      truth=(("a", "m", "merge"), ("b", "m", "merge")), correct_edges=2, true_edges=2)
    monkeypatch.setattr(demo, "run_demo", lambda workdir, progress=None: fake)
    code, out, _ = cli("demo")
    assert code == 0
    assert "(2 parents; also under b)" in out and "(2 parents; also under a)" in out
    for word in ("log10 p ", "direction ", "exact ", "merge "):
        assert f"\n  {word}" in out, word


# ---------------------------------------------------------------- 11. version, completion, pictures
def test_version_and_completion(cli):
    from mothertree import __version__

    assert cli("--version") == (0, f"mothertree {__version__}\n", "")
    code, out, _ = cli("--help")
    assert "--install-completion" in out and "--show-completion" in out


@pytest.mark.parametrize("fmt", ["svg", "png"])
def test_tree_picture_without_graphviz(cli, tiny_models, tmp_path, fmt, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no dot anywhere
    assert cli("index", str(tiny_models["llama"]), str(tiny_models["gpt2"]))[0] == 0
    target = tmp_path / f"t.{fmt}"
    code, out, _ = cli("tree", "--format", fmt, "-o", str(target))
    assert (code, out) == (0, f"wrote {target} (2 model(s), 0 edge(s))\n")
    data = target.read_bytes()
    if fmt == "png":
        from PIL import Image

        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(target) as img:
            img.verify()
    else:
        import xml.etree.ElementTree as ET

        root = ET.fromstring(data)
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
        assert {"llama", "gpt2"} <= set(texts)


def test_picture_layout_puts_children_below_and_merges_under_both():
    from mothertree.cli._picture import layout

    edge = {"relation": "merge", "direction_confidence": 0.8}
    lay = layout({"models": [{"name": n} for n in ("a", "b", "m")],
                  "edges": [dict(edge, parent="a", child="m"), dict(edge, parent="b", child="m")]})
    assert lay.boxes["a"][1] == lay.boxes["b"][1] < lay.boxes["m"][1]
    assert len(lay.edges) == 2
