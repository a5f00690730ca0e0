"""Hostile files and folders: one-line errors (never a traceback), no unbounded memory, no path escapes."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mothertree.indexer import open_source, read_header, scan_model
from mothertree.indexer.fingerprints import Fingerprinter, _Projections
from mothertree.registry.errors import UnreadableWeightsError


def _raw(path: Path, header_text: bytes, data: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(header_text)) + header_text + data)
    return path


def _entry(dtype, shape, begin, end) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def _file(path: Path, header: dict, data: bytes = b"") -> Path:
    return _raw(path, json.dumps(header).encode(), data)


def _one_line_error(path: Path) -> str:
    with pytest.raises(UnreadableWeightsError) as info:
        fp = Fingerprinter(device="cpu")
        scan_model(path, visit=fp.visit)
        fp.finish()
    message = str(info.value)
    assert "\n" not in message and "\x1b" not in message and str(path) in message
    return message


def test_deeply_nested_header_json(tmp_path):
    deep = b'{"__metadata__": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert "nested too deeply" in _one_line_error(_raw(tmp_path / "x.safetensors", deep))


@pytest.mark.parametrize("dtype", [["F32"], {"F32": 1}, 4, None, True])
def test_dtype_of_the_wrong_type(tmp_path, dtype):
    p = _file(tmp_path / "x.safetensors", {"w": _entry(dtype, [2, 2], 0, 16)}, bytes(16))
    assert "unknown dtype" in _one_line_error(p)


def test_two_d_zero_size_tensor_is_read_and_not_fingerprinted(tmp_path):
    p = _file(tmp_path / "x.safetensors", {
        "model.layers.0.mlp.up_proj.weight": _entry("F32", [0, 8], 0, 0),
        "model.layers.0.mlp.down_proj.weight": _entry("F32", [8, 2], 0, 64),
    }, bytes(64))
    fp = Fingerprinter(device="cpu")
    scan = scan_model(p, visit=fp.visit)
    assert len(scan.tensors) == 2 and dict(fp.finish().skipped).get("empty") == 1


def test_huge_empty_dimension_is_refused_before_any_allocation(tmp_path):
    """The 477-byte file of the issue: ``[2**40, 0]`` once drove indexing to 7.7 GB."""
    p = _file(tmp_path / "x.safetensors", {"model.embed_tokens.weight": _entry("F32", [1 << 40, 0], 0, 0)})
    assert "empty tensor declares a dimension of 1099511627776" in _one_line_error(p)
    with pytest.raises(ValueError, match="projection size"):
        _Projections("cpu").get("left", 1 << 40)


def test_empty_tensor_below_the_limit_allocates_nothing(tmp_path):
    p = _file(tmp_path / "x.safetensors", {"model.embed_tokens.weight": _entry("F32", [(1 << 31) - 1, 0], 0, 0)})
    fp = Fingerprinter(device="cpu")
    scan_model(p, visit=fp.visit)
    assert dict(fp.finish().skipped) == {"empty": 1}


def test_scalar_named_like_an_embedding(tmp_path):
    p = _file(tmp_path / "x.safetensors", {"model.embed_tokens.weight": _entry("F32", [], 0, 4)}, bytes(4))
    fp = Fingerprinter(device="cpu")
    scan = scan_model(p, visit=fp.visit)  # indexed, but it says nothing about widths
    assert scan.hidden_size is None and scan.vocab_size is None and fp.finish().layers == ()


def test_duplicate_tensor_names_are_refused(tmp_path):
    e = json.dumps(_entry("F32", [2], 0, 8))
    text = ('{"w": ' + e + ', "w": ' + e.replace("[0, 8]", "[8, 16]") + "}").encode()
    assert "header names 'w' twice" in _one_line_error(_raw(tmp_path / "x.safetensors", text, bytes(16)))


def test_control_characters_in_a_tensor_name_never_reach_the_terminal(tmp_path):
    p = _file(tmp_path / "x.safetensors", {"\x1b[2Jevil": _entry("F32", [2], 0, 8)}, bytes(8))
    assert "control characters" in _one_line_error(p)


def test_gap_and_trailing_bytes_are_refused(tmp_path):
    p = _file(tmp_path / "a.safetensors", {"w": _entry("F32", [2], 8, 16)}, bytes(16))
    assert "gap" in _one_line_error(p)
    q = _file(tmp_path / "b.safetensors", {"w": _entry("F32", [2], 0, 8)}, bytes(16))
    assert "does not describe the whole file" in _one_line_error(q)


def test_sparse_file_claiming_100_gib_gives_one_line(tmp_path):
    """Mapping fails under an address-space limit: a one-line error, not ``RuntimeError: unable to mmap``."""
    n = 100 << 30
    header = json.dumps({"model.layers.0.mlp.up_proj.weight": _entry("U8", [n // 4096, 4096], 0, n)}).encode()
    p = tmp_path / "big.safetensors"
    with open(p, "wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header)
        fh.truncate(8 + len(header) + n)  # sparse: no disk used
    script = textwrap.dedent(f"""
        import resource, sys
        import torch  # imported before the limit: its own mappings are not the point
        from mothertree.indexer import scan_model
        from mothertree.registry.errors import UnreadableWeightsError
        resource.setrlimit(resource.RLIMIT_AS, (24 << 30, 24 << 30))
        try:
            scan_model({str(p)!r})
        except UnreadableWeightsError as exc:
            print("ERR", exc)
            sys.exit(0)
        sys.exit(2)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip()
    assert line.startswith("ERR") and "\n" not in line and "could not" in line


# ---------------------------------------------------------------- paths


def _model(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"model.layers.0.mlp.up_proj.weight": torch.randn(4, 4)}, folder / "model.safetensors")
    return folder


def _index(folder: Path, shard: str) -> None:
    (folder / "model.safetensors").unlink(missing_ok=True)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": shard}}))


@pytest.mark.parametrize("shard", ["ABS", "../outside/model.safetensors", "sub/../../outside/model.safetensors"])
def test_shard_paths_must_stay_inside_the_folder(tmp_path, shard):
    outside = _model(tmp_path / "outside")
    folder = tmp_path / "m"
    folder.mkdir()
    _index(folder, str(outside / "model.safetensors") if shard == "ABS" else shard)
    with pytest.raises(UnreadableWeightsError, match="not a plain relative path inside the model folder"):
        open_source(folder)


def test_symlinked_shard_out_of_the_folder_is_refused(tmp_path):
    outside = _model(tmp_path / "outside")
    folder = tmp_path / "m"
    folder.mkdir()
    os.symlink(outside / "model.safetensors", folder / "model-00001.safetensors")
    _index(folder, "model-00001.safetensors")
    with pytest.raises(UnreadableWeightsError, match="outside the model folder"):
        open_source(folder)
    (folder / "model.safetensors.index.json").unlink()
    with pytest.raises(UnreadableWeightsError, match="outside the model folder"):
        open_source(folder)  # a loose *.safetensors symlink too


def test_cache_ref_escaping_the_snapshots_is_refused(tmp_path):
    _model(tmp_path / "tmp" / "evil")
    repo = tmp_path / "cache" / "models--org--x"
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("../../../tmp/evil")
    with pytest.raises(UnreadableWeightsError, match="not a revision name"):
        open_source(repo)


def test_hf_cache_snapshot_symlinks_into_blobs_are_fine(tmp_path):
    repo = tmp_path / "models--org--x"
    blobs, snap = repo / "blobs", repo / "snapshots" / "abc"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    save_file({"model.layers.0.mlp.up_proj.weight": torch.randn(4, 4)}, blobs / "deadbeef")
    os.symlink("../../blobs/deadbeef", snap / "model.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    src = open_source(repo)
    assert src.files == (str(snap / "model.safetensors"),) and read_header(src)
