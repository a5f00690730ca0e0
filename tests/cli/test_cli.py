"""The command line: JSON on stdout, one-line errors, exit codes."""

from __future__ import annotations

import json
import shutil

from mothertree.cli import app


def test_help_lists_every_command(cli):
    code, out, _ = cli("--help")
    assert code == 0
    for cmd in ("init", "index", "models", "show", "remove", "db"):
        assert cmd in out


def test_every_command_has_help():
    from typer.main import get_command

    group = get_command(app)
    missing = []

    def walk(cmd, prefix):
        for name, sub in getattr(cmd, "commands", {}).items():
            if not (sub.help or "").strip():
                missing.append(prefix + name)
            walk(sub, prefix + name + " ")

    walk(group, "")
    assert missing == []


def test_index_models_show_json(cli, tiny_models):
    code, out, _ = cli("--json", "index", str(tiny_models["llama"]), str(tiny_models["gpt2"]))
    assert code == 0, out
    assert [m["status"] for m in json.loads(out)["models"]] == ["indexed", "indexed"]
    code, out, _ = cli("--json", "models")
    models = {m["name"]: m for m in json.loads(out)["models"]}
    assert (models["llama"]["architecture"], models["llama"]["model_class"]) == ("llama", "LlamaForCausalLM")
    assert models["gpt2"]["role_counts"]["mlp.in"] == 4  # weight and bias of 2 blocks
    code, out, _ = cli("show", "gpt2", "--json")
    detail = json.loads(out)
    assert detail["name"] == "gpt2" and any(t["role"] == "attn.qkv" for t in detail["tensors"])
    code, out, _ = cli("--json", "index", str(tiny_models["llama"]))
    assert json.loads(out)["models"][0]["status"] == "unchanged"


def test_empty_models_json(cli):
    assert cli("init")[0] == 0
    code, out, _ = cli("models", "--json")
    assert code == 0 and json.loads(out) == {"models": []}


def test_unknown_model_error_line(cli):
    assert cli("init")[0] == 0
    code, out, err = cli("show", "nope")
    assert code == 1 and out == ""
    assert err.startswith("Error: Model 'nope' is not in the registry at sqlite:///")
    assert err.rstrip().endswith("Index it with: mothertree index PATH")
    code, out, _ = cli("--json", "show", "nope")
    doc = json.loads(out)
    assert (code, doc["ok"], doc["type"]) == (1, False, "ModelNotFoundError")


def test_corrupt_file_error_and_database_unchanged(cli, tiny_models, tmp_path):
    cli("index", str(tiny_models["gpt2"]))
    bad = tmp_path / "bad"
    shutil.copytree(tiny_models["llama"], bad)
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    code, out, err = cli("index", str(bad))
    assert code == 1
    assert err.strip() == f"Error: {bad / 'model.safetensors'}: header is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"
    _, out, _ = cli("--json", "models")
    assert [m["name"] for m in json.loads(out)["models"]] == ["gpt2"]


def test_db_upgrade_and_current(cli):
    code, out, _ = cli("--json", "db", "upgrade")
    assert code == 0
    rev = json.loads(out)["schema_revision"]
    _, out, _ = cli("--json", "db", "current")
    assert json.loads(out) == {"schema_revision": rev, "head": rev}
