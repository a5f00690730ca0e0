"""Bad input per format: one error line naming the file, the database unchanged."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import gguf
import pytest
import torch

from gguf_writer import write_gguf
from mothertree.indexer import open_source, scan_model
from mothertree.registry.errors import UnreadableWeightsError

ZOO = Path(os.environ.get("MOTHERTREE_ZOO_DIR", "/work/zoo")) / "test"


@pytest.fixture(scope="module")
def good_gguf(tmp_path_factory) -> Path:
    if not (ZOO / "llama-a" / "model.safetensors").is_file():
        pytest.skip(f"test zoo not built at {ZOO}")
    return write_gguf(ZOO / "llama-a", tmp_path_factory.mktemp("g") / "llama-a.Q8_0.gguf", "Q8_0")


def _part_offset(path: Path, tensor: str, part: int) -> int:
    """Byte offset of one part of a tensor-info record (4: GGML type, 5: data offset)."""
    r = gguf.GGUFReader(path)
    t = next(t for t in r.tensors if t.name == tensor)
    return t.field.offset + sum(int(p.nbytes) for p in t.field.parts[:part])


def _patched(src: Path, dst: Path, offset: int, fmt: str, value: int) -> Path:
    data = bytearray(src.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    dst.write_bytes(bytes(data))
    return dst


def _one_line(exc: pytest.ExceptionInfo, path: Path) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_truncated_gguf(good_gguf, tmp_path):
    bad = tmp_path / "trunc.gguf"
    bad.write_bytes(good_gguf.read_bytes()[: good_gguf.stat().st_size - 100])
    with pytest.raises(UnreadableWeightsError) as exc:
        scan_model(bad)
    assert "truncated" in _one_line(exc, bad)
    bad.write_bytes(good_gguf.read_bytes()[:300])
    with pytest.raises(UnreadableWeightsError) as exc:
        open_source(bad)
    _one_line(exc, bad)


def test_unknown_quantization_type(good_gguf, tmp_path):
    bad = _patched(good_gguf, tmp_path / "fork.gguf", _part_offset(good_gguf, "blk.0.attn_q.weight", 4), "<I", 208)
    with pytest.raises(UnreadableWeightsError) as exc:
        open_source(bad)
    assert "unknown quantization type 208" in _one_line(exc, bad)


def test_lying_offsets(good_gguf, tmp_path):
    off = _part_offset(good_gguf, "blk.1.ffn_up.weight", 5)
    bad = _patched(good_gguf, tmp_path / "lie.gguf", off, "<Q", 10**12)
    with pytest.raises(UnreadableWeightsError) as exc:
        open_source(bad)
    msg = _one_line(exc, bad)
    assert "blk.1.ffn_up.weight" in msg and "offsets lie" in msg


@pytest.mark.parametrize("where,label", [(8, "tensors"), (16, "metadata keys")])
def test_absurd_counts(good_gguf, tmp_path, where, label):
    bad = _patched(good_gguf, tmp_path / "absurd.gguf", where, "<Q", 2**62)
    with pytest.raises(UnreadableWeightsError) as exc:
        open_source(bad)
    assert "more than a" in _one_line(exc, bad)


def test_not_gguf_and_registry_unchanged(good_gguf, tmp_path, cli):
    bad = tmp_path / "junk.gguf"
    bad.write_bytes(b"NOTGGUF" + b"\0" * 100)
    assert cli("index", str(good_gguf))[0] == 0
    _, before, _ = cli("--json", "models")
    code, out, err = cli("index", str(bad))
    assert code == 1 and "not a GGUF file" in err and str(bad) in err and len(err.strip().splitlines()) == 1
    assert cli("--json", "models")[1] == before


def test_adapter_that_fits_nothing_leaves_no_edge(tmp_path, registry):
    from safetensors.torch import save_file

    folder = tmp_path / "odd-adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2, "lora_alpha": 4}')
    save_file({
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(2, 48),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.randn(48, 2),
    }, str(folder / "adapter_model.safetensors"))
    if not (ZOO / "llama-a" / "model.safetensors").is_file():
        pytest.skip("zoo missing")
    registry.index([ZOO / "llama-a", folder])
    report = registry.resolve()
    assert any("odd-adapter" in w and "no indexed model has the 1 target shapes" in w for w in report.warnings)
    assert registry.family("odd-adapter").edges == ()


def test_adapter_factors_that_do_not_multiply(tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "broken-adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2, "lora_alpha": 4}')
    save_file({
        "base_model.model.q_proj.lora_A.weight": torch.randn(2, 8),
        "base_model.model.q_proj.lora_B.weight": torch.randn(8, 3),
    }, str(folder / "adapter_model.safetensors"))
    with pytest.raises(UnreadableWeightsError) as exc:
        scan_model(folder)
    assert "LoRA factors do not multiply: A [2, 8], B [8, 3]" in _one_line(exc, folder / "adapter_model.safetensors")
