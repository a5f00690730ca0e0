"""A stored reference fingerprint pins the sketch across versions.

Stored vectors depend on the sketch (its seeded projections, the products,
the normalisation). If this test fails, the fingerprints of every model
already in a registry no longer match those of newly indexed ones: changing
the sketch is a *versioned* decision. Bump the fingerprint version, document
the reindex path (``mothertree reindex`` after clearing the old vectors),
and only then regenerate ``tests/data/reference_fingerprint.json`` with::

    python tests/indexer/test_reference_fingerprint.py --write

The model is built from a seeded generator without any library's weight
initialisation, so the reference cannot move because a dependency did.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent.parent / "data" / "reference_fingerprint.json"
#: Absolute tolerance per vector component (sketches are float32; CPU BLAS may reorder sums).
ATOL = 1e-4
#: Leading components kept of each layer vector (the model vectors are kept whole).
LAYER_HEAD = 16


def build_reference_model(folder: Path) -> Path:
    """A 2-block Llama-layout model (d=16, h=32, vocab 32) with seeded weights, as safetensors."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(20260101)
    d, h, v, n = 16, 32, 32, 2

    def w(*shape):
        return (torch.randn(*shape, generator=g) * 0.05).contiguous()

    state = {"model.embed_tokens.weight": w(v, d), "model.norm.weight": torch.ones(d), "lm_head.weight": w(v, d)}
    for b in range(n):
        p = f"model.layers.{b}."
        state.update({
            p + "self_attn.q_proj.weight": w(d, d), p + "self_attn.k_proj.weight": w(d, d),
            p + "self_attn.v_proj.weight": w(d, d), p + "self_attn.o_proj.weight": w(d, d),
            p + "mlp.gate_proj.weight": w(h, d), p + "mlp.up_proj.weight": w(h, d),
            p + "mlp.down_proj.weight": w(d, h),
            p + "input_layernorm.weight": torch.ones(d), p + "post_attention_layernorm.weight": torch.ones(d),
        })
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": d, "intermediate_size": h,
        "num_hidden_layers": n, "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": v,
        "max_position_embeddings": 32, "tie_word_embeddings": False,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _fingerprint_doc(folder: Path) -> dict:
    from mothertree.indexer.fingerprints import fingerprint_model

    fp = fingerprint_model(folder, device="cpu")
    return {
        "model_vectors": {kind: [round(float(x), 6) for x in vec] for kind, vec in fp.model_vectors},
        "layers": sorted(
            [{"kind": lf.kind, "role": lf.role, "block": lf.block,
              "vector": [round(float(x), 6) for x in lf.vector[:LAYER_HEAD]]}
             for lf in fp.layers],
            key=lambda x: (x["kind"], x["role"], -1 if x["block"] is None else x["block"]),
        ),
    }


def test_fingerprint_matches_the_stored_reference(tmp_path):
    ref = json.loads(DATA.read_text())
    now = _fingerprint_doc(build_reference_model(tmp_path / "ref"))
    assert sorted(now["model_vectors"]) == sorted(ref["model_vectors"])
    for kind, vec in ref["model_vectors"].items():
        np.testing.assert_allclose(now["model_vectors"][kind], vec, atol=ATOL, err_msg=f"model vector {kind}")
    assert [(x["kind"], x["role"], x["block"]) for x in now["layers"]] == \
        [(x["kind"], x["role"], x["block"]) for x in ref["layers"]]
    for a, b in zip(now["layers"], ref["layers"]):
        np.testing.assert_allclose(a["vector"], b["vector"], atol=ATOL, err_msg=f"{b['kind']} {b['role']} {b['block']}")


if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        doc = _fingerprint_doc(build_reference_model(Path(tmp) / "ref"))
    DATA.parent.mkdir(parents=True, exist_ok=True)
    DATA.write_text(json.dumps({"note": "see tests/indexer/test_reference_fingerprint.py", **doc}, indent=0))
    print(f"wrote {DATA}")
