"""ONNX: graphs built with onnx.helper from zoo weights the way the TorchScript exporter lays them out
(MatMul weights [in, out] under onnx::MatMul_N names, modules in node names, Gemm transB=1), with
external data, and as an int8 QDQ export that the registry places as the quantized child."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from mothertree.indexer import open_source, scan_model  # noqa: E402
from mothertree.indexer.weights import load_weight_map  # noqa: E402
from mothertree.registry.errors import UnreadableWeightsError  # noqa: E402

ZOO = Path(os.environ.get("MOTHERTREE_ZOO_DIR", "/work/zoo")) / "test"
_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def export_llama(src: Path, out: Path, *, int8: bool = False, node_names: bool = True,
                 external: bool = False) -> Path:
    """A Llama folder as an exporter would write it: model.onnx (+ weights.data) and config.json."""
    from safetensors.numpy import load_file

    state = load_file(str(src / "model.safetensors"))
    cfg = json.loads((src / "config.json").read_text())
    inits, nodes, k = [], [], 0
    nodes.append(helper.make_node("Gather", ["model.embed_tokens.weight", "input_ids"], ["h0"],
                                  name="/model/embed_tokens/Gather" if node_names else ""))
    inits.append(numpy_helper.from_array(state["model.embed_tokens.weight"], "model.embed_tokens.weight"))
    x = "h0"
    for i in range(cfg["num_hidden_layers"]):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            nm = f"model.layers.{i}.{norm}.weight"
            inits.append(numpy_helper.from_array(state[nm], nm))
            nodes.append(helper.make_node("Mul", [x, nm], [f"{nm}_out"]))
            x = f"{nm}_out"
        for lin in _LINEARS:
            w = np.ascontiguousarray(state[f"model.layers.{i}.{lin}.weight"].T)  # [in, out] for x @ W
            k += 1
            init = f"onnx::MatMul_{100 + k}"
            node = f"/model/layers.{i}/{lin.replace('.', '/')}/MatMul" if node_names else ""
            if int8:
                scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
                q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
                inits += [numpy_helper.from_array(q, init), numpy_helper.from_array(scale, f"{init}_scale"),
                          numpy_helper.from_array(np.zeros_like(q[0]), f"{init}_zero_point")]
                nodes.append(helper.make_node("DequantizeLinear", [init, f"{init}_scale", f"{init}_zero_point"],
                                              [f"{init}_dq"], axis=1))
                nodes.append(helper.make_node("MatMul", [x, f"{init}_dq"], [f"{init}_out"], name=node))
            else:
                inits.append(numpy_helper.from_array(w, init))
                nodes.append(helper.make_node("MatMul", [x, init], [f"{init}_out"], name=node))
            x = f"{init}_out"
    inits.append(numpy_helper.from_array(state["model.norm.weight"], "model.norm.weight"))
    nodes.append(helper.make_node("Mul", [x, "model.norm.weight"], ["normed"]))
    inits.append(numpy_helper.from_array(state["lm_head.weight"], "lm_head.weight"))
    nodes.append(helper.make_node("Gemm", ["normed", "lm_head.weight"], ["logits"], transB=1, name="/lm_head/Gemm"))
    graph = helper.make_graph(
        nodes, "llama", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 8, cfg["vocab_size"]])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "config.json", out / "config.json")
    if external:
        onnx.save_model(model, str(out / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx.data", size_threshold=0)
    else:
        onnx.save_model(model, str(out / "model.onnx"))
    return out


@pytest.fixture(scope="module")
def zoo() -> Path:
    if not (ZOO / "llama-a" / "model.safetensors").is_file():
        pytest.skip(f"test zoo not built at {ZOO}")
    return ZOO


def test_float_export_with_external_data_reads_back_exactly(zoo, tmp_path):
    out = export_llama(zoo / "llama-a", tmp_path / "llama-a-onnx", external=True)
    assert (out / "model.onnx.data").is_file()
    src = open_source(out)
    assert src.format == "onnx" and src.config["model_type"] == "llama"
    w, ref = load_weight_map(src), load_weight_map(zoo / "llama-a")
    assert set(w) == set(ref) and all(torch.equal(w[k], ref[k]) for k in ref)
    scan = scan_model(src)
    assert scan.architecture == "llama" and scan.role_counts["attn.q"] == 4 and scan.role_counts["head.lm"] == 1


def test_renamed_initializers_without_node_names_are_role_other(zoo, tmp_path):
    out = export_llama(zoo / "llama-a", tmp_path / "anon", node_names=False)
    scan = scan_model(out)
    assert scan.role_counts["other"] == 4 * len(_LINEARS)
    names = {t.name for t in scan.tensors if t.role == "other"}
    assert "onnx::MatMul_101" in names


def test_int8_qdq_is_dequantized_and_the_quantized_child(zoo, tmp_path, registry):
    out = export_llama(zoo / "llama-a", tmp_path / "llama-a-int8", int8=True)
    src = open_source(out)
    scan = scan_model(src)
    assert {t.dtype for t in scan.tensors if t.role == "attn.q"} == {"I8"}
    w, ref = load_weight_map(src), load_weight_map(zoo / "llama-a")
    err = max(float((w[k] - ref[k]).norm() / ref[k].norm()) for k in ref if k[0] != "embed.tokens")
    assert 0 < err < 0.02
    registry.index([zoo / "llama-a", out])
    registry.resolve()
    edges = [(e.parent, e.child, e.relation) for e in registry.family("llama-a").edges]
    assert edges == [("llama-a", "llama-a-int8", "quantized")]


def test_missing_or_lying_external_data(zoo, tmp_path):
    out = export_llama(zoo / "llama-a", tmp_path / "ext", external=True)
    data = out / "model.onnx.data"
    blob = data.read_bytes()
    data.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UnreadableWeightsError, match=r"external data range .* does not hold") as exc:
        scan_model(out)
    assert "\n" not in str(exc.value) and "model.onnx.data" in str(exc.value)
    data.unlink()
    with pytest.raises(UnreadableWeightsError, match="external data file of model.onnx is missing"):
        scan_model(out)
    (out / "model.onnx").write_bytes(b"\x08garbage" * 3)
    with pytest.raises(UnreadableWeightsError, match="not a readable ONNX model"):
        scan_model(out)
