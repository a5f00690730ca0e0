"""resolve on architectures outside the zoo: BERT, Qwen2, Gemma, Phi-3 (fused), GPT-NeoX."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers as tf
from safetensors.torch import load_file, save_file

from mothertree.registry import Registry

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             vocab_size=96, max_position_embeddings=48)

ARCHS = {
    "bert": lambda: tf.BertForMaskedLM(tf.BertConfig(**SMALL)),
    "qwen2": lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(**SMALL, num_key_value_heads=2)),
    "gemma": lambda: tf.GemmaForCausalLM(tf.GemmaConfig(**SMALL, num_key_value_heads=2, head_dim=8)),
    "phi3": lambda: tf.Phi3ForCausalLM(tf.Phi3Config(**SMALL, num_key_value_heads=4, pad_token_id=0)),
    "neox": lambda: tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(**SMALL)),
}


def _save(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    return folder


def _perturb(src: Path, dst: Path, seed: int) -> Path:
    import shutil

    shutil.copytree(src, dst)
    state = load_file(src / "model.safetensors")
    g = torch.Generator().manual_seed(seed)
    state = {k: v + 0.2 * v.std() * torch.randn(v.shape, generator=g) if v.ndim == 2 else v for k, v in state.items()}
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def other_archs(tmp_path_factory):
    root = tmp_path_factory.mktemp("archs")
    out = {}
    for i, (name, make) in enumerate(ARCHS.items()):
        torch.manual_seed(100 + i)
        parent = _save(make(), root / f"{name}-base")
        out[f"{name}-base"] = parent
        out[f"{name}-child"] = _perturb(parent, root / f"{name}-child", seed=i)
    return out


def test_families_recovered_on_unseen_architectures(other_archs, tmp_path):
    with Registry(str(tmp_path / "archs.db")) as reg:
        for name, path in other_archs.items():
            reg.index_one(path, name=name)
        report = reg.resolve()
        assert report.families == len(ARCHS)
        for arch in ARCHS:
            fam = reg.family(f"{arch}-base")
            assert set(fam.models) == {f"{arch}-base", f"{arch}-child"}, arch
            (edge,) = fam.edges
            assert edge.p_value_log10 < -6 and edge.relation == "finetune", (arch, edge)
