"""Fuzz the GGUF header path: any corruption is an UnreadableWeightsError naming the file, never a crash."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mothertree.indexer.readers import gguf as reader
from mothertree.registry.errors import UnreadableWeightsError


def _valid(path: Path) -> bytes:
    import gguf
    from gguf.quants import quantize

    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(1)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_embedding_length(32)
    rng = np.random.default_rng(0)
    w.add_tensor("blk.0.attn_q.weight", quantize(rng.standard_normal((32, 32), dtype=np.float32),
                                                 gguf.GGMLQuantizationType.Q8_0),
                 raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.attn_k.weight", rng.standard_normal((16, 32), dtype=np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(32, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> bytes:
    return _valid(tmp_path_factory.mktemp("fuzz") / "ok.gguf")


def _read_all(path: Path) -> None:
    reader._CACHE.clear()
    infos = reader.read_header(path)
    for _name, t in reader.iter_tensors(path, list(infos)):
        assert t.dtype.is_floating_point


def _check(data: bytes, path: Path) -> None:
    path.write_bytes(data)
    try:
        _read_all(path)
    except UnreadableWeightsError as exc:
        msg = str(exc)
        assert str(path) in msg and "\n" not in msg


def test_valid_file_reads(valid, tmp_path):
    p = tmp_path / "v.gguf"
    p.write_bytes(valid)
    _read_all(p)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_headers(valid, tmp_path, data):
    buf = bytearray(valid)
    header_end = min(len(buf), 700)  # metadata and tensor infos live in the first bytes
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, header_end - 1))
        buf[i] = data.draw(st.integers(0, 255))
    _check(bytes(buf), tmp_path / "m.gguf")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 4000))
def test_truncations(valid, tmp_path, cut):
    _check(valid[: min(cut, len(valid) - 1)], tmp_path / "t.gguf")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from([8, 16]), value=st.integers(0, 2**64 - 1))
def test_counts(valid, tmp_path, field, value):
    buf = bytearray(valid)
    struct.pack_into("<Q", buf, field, value)
    _check(bytes(buf), tmp_path / "c.gguf")
