"""PEFT adapters from peft's save_pretrained on zoo models: effective update, kind, and placement
under the true base even when a fine-tune of that base (same shapes) is indexed too."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from mothertree.indexer import open_source, scan_model
from mothertree.indexer.readers import iter_tensors, read_header
from mothertree.lineage.adapters import place_adapter
from mothertree.registry.errors import UnreadableWeightsError

ZOO = Path(os.environ.get("MOTHERTREE_ZOO_DIR", "/work/zoo")) / "test"


@pytest.fixture(scope="module")
def zoo() -> Path:
    if not (ZOO / "llama-a" / "model.safetensors").is_file():
        pytest.skip(f"test zoo not built at {ZOO}")
    return ZOO


def _adapter(base: Path, out: Path, *, hint: str | None | bool = True, seed: int = 0, **lora) -> Path:
    """A LoRA adapter on ``base`` with trained-looking (non-zero) factors, saved by peft."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    cfg = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                     **{"target_modules": ["q_proj", "v_proj", "up_proj"], **lora})
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():  # a little "training" of the saved copies too
        for name, p in peft_model.named_parameters():
            if "modules_to_save" in name or "lora_magnitude" in name:
                p.add_(0.01 * p.std() * torch.randn_like(p))
    peft_model.save_pretrained(out)
    if hint is not True:
        cfg_path = out / "adapter_config.json"
        doc = json.loads(cfg_path.read_text())
        doc["base_model_name_or_path"] = hint
        cfg_path.write_text(json.dumps(doc))
        (out / "README.md").unlink(missing_ok=True)  # the card repeats the hint
    return out


def test_effective_update_is_scaled_b_times_a(zoo, tmp_path):
    from safetensors.torch import load_file

    a = _adapter(zoo / "llama-a", tmp_path / "ad", use_rslora=True)
    src = open_source(a)
    assert src.format == "peft" and src.default_name == "ad"
    infos = read_header(src)
    name = "model.layers.1.self_attn.q_proj.weight"
    assert infos[name].shape == (64, 64) and len(infos) == 3 * 4
    raw = load_file(a / "adapter_model.safetensors")
    pre = "base_model.model.model.layers.1.self_attn.q_proj"
    expected = (8 / 4 ** 0.5) * raw[f"{pre}.lora_B.weight"] @ raw[f"{pre}.lora_A.weight"]
    got = dict(iter_tensors(src))[name]
    assert torch.allclose(got, expected)
    scan = scan_model(src)
    assert scan.architecture == "llama" and scan.role_counts == {"attn.q": 4, "attn.v": 4, "mlp.up": 4}


def test_gpt2_fan_in_fan_out_update_in_conv1d_layout(zoo, tmp_path):
    a = _adapter(zoo / "gpt2-a", tmp_path / "g", target_modules=["c_attn"], fan_in_fan_out=True)
    infos = read_header(open_source(a))
    (name,) = [n for n in infos if n.endswith("h.0.attn.c_attn.weight")]
    assert infos[name].shape == (64, 192)  # [in, out] like the base's Conv1D
    assert scan_model(a).role_counts == {"attn.qkv": 4}


def test_place_adapter_rules_are_pure():
    shapes = {"m.q.weight": (4, 4)}
    assert place_adapter(shapes, {"x": {"m.q.weight": (4, 8)}}).decided_by == "none"
    p = place_adapter(shapes, {"base": {"model.m.q.weight": (4, 4)}, "ft": {"m.q.weight": (4, 4)}})
    assert p.decided_by == "undecided" and p.base == "base" and "cannot" not in p.notes[0]
    assert "neither the weights nor a declared base" in p.notes[0]
    p = place_adapter(shapes, {"base": {"m.q.weight": (4, 4)}, "ft": {"m.q.weight": (4, 4)}}, declared=["ft"])
    assert (p.base, p.decided_by) == ("ft", "declared")


def test_adapters_land_under_their_true_base_not_the_fine_tune(zoo, tmp_path, registry):
    base, ft = zoo / "llama-a", zoo / "llama-a-ft"
    declared = _adapter(base, tmp_path / "lora-declared")  # peft records the base path
    saved = _adapter(base, tmp_path / "lora-lm-head", hint=str(ft), modules_to_save=["lm_head"], seed=1)
    dora = _adapter(base, tmp_path / "dora", hint=None, use_dora=True, seed=2)
    blind = _adapter(base, tmp_path / "lora-blind", hint=None, seed=3)
    stray = _adapter(zoo / "gpt2-a", tmp_path / "gpt2-lora", target_modules=["c_attn"], fan_in_fan_out=True)
    registry.index([base, ft, declared, saved, dora, blind, stray])
    assert {m.name: m.file_format for m in registry.models()}["dora"] == "peft"
    plan = registry.plan_resolve()  # adapters are placed by execute, never pair-tested
    adapters = {"lora-declared", "lora-lm-head", "dora", "lora-blind", "gpt2-lora"}
    assert set(plan.adapters) == adapters and plan.to_dict()["adapters"] == sorted(adapters)
    assert not adapters & {n for pair in plan.pairs for n in pair}
    report = plan.execute()
    assert any(w.startswith("adapter gpt2-lora: no indexed model has the 4 target shapes") for w in report.warnings)
    fam = registry.family("llama-a")
    edges = {e.child: (e.parent, e.relation) for e in fam.edges}
    assert edges["llama-a-ft"] == ("llama-a", "finetune")
    for name in ("lora-declared", "lora-lm-head", "dora"):
        assert edges[name] == ("llama-a", "adapter"), (name, edges)
    evidence = {e.child: e.evidence["adapter"] for e in fam.edges if e.relation == "adapter"}
    assert evidence["lora-declared"]["decided_by"] == "declared"
    assert evidence["lora-declared"]["fitting"] == ["llama-a", "llama-a-ft"]
    # The hint names the fine-tune, but the saved lm_head copy is the base's: the weights win.
    assert evidence["lora-lm-head"]["decided_by"] == "weights"
    assert evidence["dora"]["decided_by"] == "weights", evidence["dora"]  # magnitudes = the base row norms
    assert evidence["lora-blind"]["decided_by"] == "undecided"
    assert "neither the weights nor a declared base" in evidence["lora-blind"]["notes"][0]
    assert registry.family("gpt2-lora").edges == ()
    # Idempotent: a second resolve places them the same way.
    registry.resolve()
    again = {e.child: (e.parent, e.relation) for e in registry.family("llama-a").edges}
    assert again == edges


def test_new_adapter_upload_is_placed(zoo, tmp_path, registry):
    registry.index([zoo / "llama-a", zoo / "llama-a-ft"])
    registry.resolve()
    up = _adapter(zoo / "llama-a-ft", tmp_path / "upload", hint=None, modules_to_save=["lm_head"])
    view = registry.ancestry(str(up), add=True)
    assert [(e.parent, e.child, e.relation) for e in view.edges if e.child == "upload"] == [
        ("llama-a-ft", "upload", "adapter")
    ]


def test_bad_adapters(tmp_path, zoo):
    a = _adapter(zoo / "llama-a", tmp_path / "bad")
    (a / "adapter_model.safetensors").rename(tmp_path / "weights.safetensors")
    with pytest.raises(UnreadableWeightsError, match="adapter config without weights"):
        open_source(a)
    (tmp_path / "weights.safetensors").rename(a / "adapter_model.safetensors")
    (a / "adapter_config.json").write_text("{not json")
    with pytest.raises(UnreadableWeightsError, match="adapter_config.json.*not valid JSON"):
        open_source(a)
    (a / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 0}))
    with pytest.raises(UnreadableWeightsError, match="r must be a positive integer, got 0"):
        open_source(a)
