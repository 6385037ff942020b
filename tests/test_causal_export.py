"""The causal family exported: ``sentex export`` merges the LoRA adapter in float32, and ``sentex.load``
of the folder (fp32, bf16, int8) answers like the checkpoint; the packaged GGUF model's record does
not follow it into the export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sentex.deploy.export import export
from sentex.deploy.load import Extractor, load
from sentex.models import CausalExtractor
from tests.conftest import TWEETS, save_untrained
from tests.test_causal import LORA, build_tiny_llama

TEXTS = [t[1] for t in TWEETS]
SENTIMENTS = [t[3] for t in TWEETS]


@pytest.fixture(scope="module")
def causal_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny-Llama LoRA checkpoint whose adapters are random, so merging them changes the weights."""
    root = tmp_path_factory.mktemp("causal-export")
    llama = build_tiny_llama(root / "llama")
    torch.manual_seed(0)
    model = CausalExtractor(str(llama), generation={"max_new_tokens": 6}, **LORA)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return save_untrained(model, root / "causal.ckpt")


def test_exported_causal_model_answers_like_its_checkpoint(causal_ckpt: Path, tmp_path: Path) -> None:
    from_ckpt = load(causal_ckpt)
    expected = from_ckpt.extract(TEXTS, SENTIMENTS)
    manifest = export(causal_ckpt, tmp_path / "fp32", "fp32")
    assert manifest["family"] == "causal" and manifest["lora"]["merged"] is True
    exported = load(tmp_path / "fp32")
    assert isinstance(exported, Extractor) and exported.family == "causal"
    assert exported.extract(TEXTS, SENTIMENTS) == expected
    # The merged weights differ from the base's: the adapter is in them, not beside them.
    base = from_ckpt.pipeline.net.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    assert not torch.allclose(exported.pipeline.net.model.layers[0].self_attn.q_proj.weight, base)
    # Generation settings per call, as for seq2seq models.
    assert len(exported.extract(TEXTS, SENTIMENTS, num_beams=2)) == len(TEXTS)
    card = (tmp_path / "fp32" / "README.md").read_text()
    assert card.startswith("# sentex causal extractor (fp32)") and "AutoModelForCausalLM" in card


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
def test_cast_and_quantized_causal_exports_answer_with_substrings(causal_ckpt: Path, tmp_path: Path, dtype) -> None:
    export(causal_ckpt, tmp_path / dtype, dtype)
    manifest = json.loads((tmp_path / dtype / "sentex.json").read_text())
    assert manifest["dtype"] == dtype
    answers = load(tmp_path / dtype).extract(TEXTS, SENTIMENTS)
    assert len(answers) == len(TEXTS) and all(a in t for a, t in zip(answers, TEXTS))
    # Neutral tweets are answered by rule, whatever the weights.
    assert all(a == t.strip() for a, t, s in zip(answers, TEXTS, SENTIMENTS) if s == "neutral")
