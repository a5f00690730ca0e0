"""Readers: every layout, every dtype, identical digests across formats, and bad input."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mothertree.indexer import iter_tensors, open_source, read_header, scan_model
from mothertree.registry.errors import (
    UnreadableWeightsError,
    UnsafePickleError,
    UnsupportedFormatError,
)


def test_layouts_are_found(tiny_models):
    assert open_source(tiny_models["llama"]).format == "safetensors"
    bin_src = open_source(tiny_models["llama-bin"])
    assert (bin_src.format, bin_src.sharded) == ("bin", False)
    sharded = open_source(tiny_models["llama-sharded"])
    assert sharded.sharded and len(sharded.files) >= 2
    single = open_source(tiny_models["llama"] / "model.safetensors")
    assert single.default_name == "model" and single.config["model_type"] == "llama"


def test_same_weights_same_digest_in_every_format(tiny_models):
    digests = {k: scan_model(tiny_models[k]).content_digest for k in ("llama", "llama-bin", "llama-sharded")}
    assert len(set(digests.values())) == 1, digests
    assert scan_model(tiny_models["llama-other"]).content_digest != digests["llama"]


def test_header_reads_no_tensor_bytes(tiny_models, tmp_path):
    # Overwrite the data buffer with garbage: the header still parses, values differ.
    src = tiny_models["llama"] / "model.safetensors"
    copy = tmp_path / "m.safetensors"
    shutil.copy(src, copy)
    infos = read_header(open_source(copy))
    assert infos["model.embed_tokens.weight"].shape == (64, 32)
    assert infos["model.embed_tokens.weight"].dtype == "F32"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int8])
def test_dtypes(tmp_path, dtype):
    t = (torch.randn(8, 4) * 10).to(dtype)
    save_file({"model.layers.0.mlp.up_proj.weight": t}, tmp_path / "x.safetensors")
    src = open_source(tmp_path / "x.safetensors")
    (name, got), = list(iter_tensors(src))
    assert got.dtype == dtype and torch.equal(got, t)
    rec = scan_model(src).tensors[0]
    assert rec.role == "mlp.up" and rec.block == 0 and rec.size_bytes == t.numel() * t.element_size()


def _write_raw(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_truncated_file(tiny_models, tmp_path):
    data = (tiny_models["llama"] / "model.safetensors").read_bytes()
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableWeightsError, match="truncated") as e:
        read_header(open_source(bad))
    assert str(bad) in str(e.value)


def test_header_offsets_lie(tmp_path):
    bad = _write_raw(
        tmp_path / "x.safetensors",
        {"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 32]}},
        b"\0" * 64,
    )
    with pytest.raises(UnreadableWeightsError) as e:
        read_header(open_source(bad))
    assert str(e.value) == (
        f"{bad} (tensor 'w'): data_offsets [0, 32] hold 32 bytes but shape [4, 4] of F32 needs 64"
    )


def test_overlapping_tensors(tmp_path):
    bad = _write_raw(
        tmp_path / "x.safetensors",
        {
            "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
            "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
        },
        b"\0" * 24,
    )
    with pytest.raises(UnreadableWeightsError, match="overlap"):
        read_header(open_source(bad))


def test_unknown_dtype(tmp_path):
    bad = _write_raw(
        tmp_path / "x.safetensors", {"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 2]}}, b"\0\0"
    )
    with pytest.raises(UnreadableWeightsError, match="unknown dtype 'Q4'"):
        read_header(open_source(bad))


def test_not_json_header(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{[" + b"\0" * 8)
    with pytest.raises(UnreadableWeightsError, match="not valid JSON"):
        read_header(open_source(bad))


def test_missing_shard(tiny_models, tmp_path):
    folder = tmp_path / "sharded"
    shutil.copytree(tiny_models["llama-sharded"], folder)
    victim = sorted(folder.glob("model-*.safetensors"))[0]
    victim.unlink()
    with pytest.raises(UnreadableWeightsError, match="shard listed in model.safetensors.index.json is missing") as e:
        open_source(folder)
    assert victim.name in str(e.value)


def test_empty_folder(tmp_path):
    with pytest.raises(UnsupportedFormatError, match="no weights found"):
        open_source(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_source(tmp_path / "nope")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_with_code_is_refused(tmp_path, capsys):
    bad = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.zeros(2), "x": _Evil()}, bad)
    with pytest.raises(UnsafePickleError, match="refused to unpickle"):
        read_header(open_source(tmp_path))
    assert "pwned" not in capsys.readouterr().out


def test_corrupt_bin(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not a zip at all")
    with pytest.raises(UnreadableWeightsError, match="not a readable PyTorch checkpoint"):
        read_header(open_source(tmp_path))


def test_hf_cache_layout(tiny_models, tmp_path):
    repo = tmp_path / "models--org--tiny"
    snap = repo / "snapshots" / "abc123"
    shutil.copytree(tiny_models["llama"], snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    src = open_source(repo)
    assert Path(src.root) == snap and src.default_name == "org/tiny"


@pytest.mark.parametrize(
    "entry, problem",
    [
        ({"dtype": "F32", "shape": [2], "data_offsets": None}, "data_offsets None is not a [begin, end] pair"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, 4, 8]}, "is not a [begin, end] pair"),
        ({"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}, "shape '2' is not a list of non-negative"),
        ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, "shape [-2] is not a list of non-negative"),
    ],
)
def test_malformed_header_entries_name_the_file(tmp_path, entry, problem):
    bad = _write_raw(tmp_path / "x.safetensors", {"w": entry}, b"\0" * 8)
    with pytest.raises(UnreadableWeightsError) as e:
        read_header(open_source(bad))
    assert str(e.value).startswith(f"{bad} (tensor 'w'): ") and problem in str(e.value)


def test_legacy_non_zip_pickle_loads_safely(tmp_path):
    state = {"model.layers.0.mlp.up_proj.weight": torch.randn(4, 3)}
    torch.save(state, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    (name, t), = list(iter_tensors(open_source(tmp_path)))
    assert torch.equal(t, state[name])


def test_gpt2_qkv_bias_is_learned_not_a_buffer():
    from mothertree.indexer.roles import assign_role

    assert assign_role("transformer.h.0.attn.c_attn.bias", "gpt2").part == "bias"
    assert assign_role("transformer.h.0.attn.bias", "gpt2").part == "buffer"


def test_model_card_declares_base_and_a_bad_card_only_warns(tiny_models, tmp_path):
    folder = shutil.copytree(tiny_models["llama"], tmp_path / "carded")
    (folder / "README.md").write_text("---\nbase_model:\n- org/a\n- org/b\n---\nA model.\n")
    assert scan_model(folder).declared_base_models == ("org/a", "org/b")
    (folder / "README.md").write_text("---\nbase_model: [unclosed\n---\n")
    scan = scan_model(folder)
    assert scan.declared_base_models == ()
    assert any(w.startswith(f"model card {folder / 'README.md'} unreadable") for w in scan.warnings)
