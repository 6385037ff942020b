"""``sentex.load`` on checkpoints, and the int8 storage/runtime in ``sentex.deploy.quant.int8``."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForSeq2SeqLM

from sentex.deploy.load import Extractor, load
from sentex.deploy.quant.int4 import (
    Int4Linear,
    dequantize_groups,
    int4_linears,
    load_int4_into,
    pack_nibbles,
    quantize_groups,
    save_int4,
    unpack_nibbles,
)
from sentex.deploy.quant.int8 import (
    SCALE_SUFFIX,
    RowScaledDynamicLinear,
    cpu_has_vnni,
    dequantize_rows,
    dynamic_int8,
    int8_compute,
    load_int8_into,
    quantizable_weights,
    quantize_rows,
    save_int8,
)
from sentex.errors import CheckpointError, SentexError
from sentex.models import SpanExtractor
from tests.conftest import (
    SENTIMENTS,
    TEXTS,
    FittedCheckpoint,
    t5_checkpoint,
)


def test_quantize_rows_error_is_at_most_half_a_step() -> None:
    torch.manual_seed(0)
    w = torch.randn(5, 40) * torch.tensor([[0.01], [1.0], [100.0], [0.0], [3.0]])
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and q.abs().max() == 127
    err = (dequantize_rows(q, scale) - w).abs().amax(dim=1)
    assert torch.all(err <= scale / 2 + 1e-6)
    assert torch.equal(q[3], torch.zeros(40, dtype=torch.int8))


def test_int8_file_roundtrip_keeps_ties_and_t5_wo(tiny_t5: Path, tmp_path: Path) -> None:
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5).eval()
    assert model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr()  # the tiny T5 ties them
    save_int8(model, tmp_path / "w.safetensors", keep=["wo"])
    from safetensors.torch import load_file

    raw = load_file(str(tmp_path / "w.safetensors"))
    assert raw["encoder.block.0.layer.1.DenseReluDense.wi.weight"].dtype == torch.int8
    assert raw["encoder.block.0.layer.1.DenseReluDense.wo.weight"].dtype == torch.float32
    assert "lm_head.weight" not in raw and "shared.weight" + SCALE_SUFFIX in raw

    fresh = AutoModelForSeq2SeqLM.from_config(model.config).eval()
    packed = load_int8_into(fresh, tmp_path / "w.safetensors")
    wo = "decoder.block.1.layer.2.DenseReluDense.wo.weight"
    assert torch.equal(fresh.state_dict()[wo], model.state_dict()[wo])
    assert torch.allclose(fresh.lm_head.weight, model.lm_head.weight, atol=0.02)

    dynamic_int8(fresh, ["wo"], packed, compute="int8")
    wi = fresh.encoder.block[0].layer[1].DenseReluDense.wi
    assert type(fresh.encoder.block[0].layer[1].DenseReluDense.wo) is nn.Linear
    assert type(wi) is not nn.Linear  # the dynamic-quantized Linear
    assert torch.equal(wi.weight().int_repr(), packed["encoder.block.0.layer.1.DenseReluDense.wi.weight"][0])


def test_int4_groups_error_is_at_most_half_a_step_and_file_roundtrips(tiny_t5: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 64) * torch.tensor([[0.01], [1.0], [100.0], [0.0], [3.0], [-2.0]])
    codes, scale, zero = quantize_groups(w)
    assert codes.max() <= 15 and scale.shape == (6, 2)
    err = (dequantize_groups(codes, scale, zero) - w).abs().reshape(6, 2, 32).amax(dim=-1)
    assert torch.all(err <= scale / 2 + 1e-5)
    assert torch.equal(unpack_nibbles(pack_nibbles(codes)), codes)

    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5).eval()
    save_int4(model, tmp_path / "w4.safetensors", keep=["wo"])
    fresh = AutoModelForSeq2SeqLM.from_config(model.config).eval()
    quantized, group = load_int4_into(fresh, tmp_path / "w4.safetensors")
    wi = "encoder.block.0.layer.1.DenseReluDense.wi.weight"
    wo = "decoder.block.1.layer.2.DenseReluDense.wo.weight"
    assert group == 32 and wi in quantized and wo not in quantized
    assert torch.equal(fresh.state_dict()[wo], model.state_dict()[wo])
    shared = "shared.weight"  # tied to lm_head and stored once; 4-bit error within half a group step
    assert torch.allclose(fresh.lm_head.weight, fresh.shared.weight)
    half_step = quantized[shared][1].repeat_interleave(32, dim=1) / 2
    assert torch.all((fresh.shared.weight - model.shared.weight).abs() <= half_step + 1e-5)
    # the packed-kernel Linear computes what the dequantized float Linear computes (bf16 activations)
    linear = fresh.encoder.block[0].layer[1].DenseReluDense.wi
    x = torch.randn(5, 3, linear.in_features)
    four = Int4Linear(*quantized[wi], linear.bias)
    torch.testing.assert_close(four(x), linear(x), atol=0.05, rtol=0.05)
    int4_linears(fresh, quantized)
    assert type(fresh.encoder.block[0].layer[1].DenseReluDense.wi) is Int4Linear
    assert type(fresh.encoder.block[0].layer[1].DenseReluDense.wo) is nn.Linear
    # the kernel packs only output sizes that are multiples of 16: others keep the dequantized Linear
    odd = nn.Sequential(nn.Linear(64, 50))
    int4_linears(odd, {"0.weight": quantize_groups(odd[0].weight)})
    assert type(odd[0]) is nn.Linear


def int8_linear_errors(x: torch.Tensor) -> dict[bool, float]:
    """Mean absolute error of an int8 Linear against its float32 original, with 7-bit and 8-bit activations."""
    torch.manual_seed(0)
    linear = nn.Linear(64, 32).eval()
    errors = {}
    for full in (False, True):
        q = dynamic_int8(nn.Sequential(copy.deepcopy(linear)), [], full_range=full, compute="int8")
        assert type(q[0]) is RowScaledDynamicLinear and q[0].full_range is full
        with torch.no_grad():
            errors[full] = (q(x) - linear(x)).abs().mean().item()
    return errors


@pytest.mark.skipif(not cpu_has_vnni(), reason="about CPUs with VNNI/AMX (int32 accumulation); twin below")
def test_full_range_activations_are_more_accurate_where_the_cpu_accumulates_in_int32() -> None:
    errors = int8_linear_errors(torch.randn(16, 64) * 3)
    assert errors[True] < 0.75 * errors[False]


@pytest.mark.skipif(cpu_has_vnni(), reason="about CPUs without VNNI (fbgemm's saturating int16 pairs); twin above")
def test_full_range_activations_saturate_without_vnni_so_7_bits_are_the_default() -> None:
    errors = int8_linear_errors(torch.randn(16, 64) * 3)
    assert errors[False] < 0.5 * errors[True]  # 8 bits overflow int16 pair sums: far worse than 7
    assert dynamic_int8(nn.Sequential(nn.Linear(4, 2)), [], compute="int8")[0].full_range is False
    # ... and int8 kernels are not used by default there: the weights are computed in float32
    assert type(dynamic_int8(nn.Sequential(nn.Linear(4, 2)), [])[0]) is nn.Linear


def test_int8_rows_are_quantized_alone_so_a_row_gets_the_same_output_in_any_batch() -> None:
    """One scale per row: a row's output is identical whether its batch holds huge rows or not (#24)."""
    torch.manual_seed(0)
    linear = nn.Linear(64, 32).eval()
    q = dynamic_int8(nn.Sequential(copy.deepcopy(linear)), [], compute="int8")
    row = torch.randn(1, 64)
    batch = torch.cat([row, torch.randn(7, 64) * 50])  # rows 50x larger would set a per-batch scale
    with torch.no_grad():
        alone, together, want = q(row), q(batch)[:1], linear(row)
    assert torch.equal(alone, together)
    assert (alone - want).abs().max() < 0.05 * want.abs().max()  # and the small row keeps its precision


def test_packing_engine_is_restored_and_outputs_agree() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(32, 16).eval()
    before = torch.backends.quantized.engine
    quantized = dynamic_int8(nn.Sequential(copy.deepcopy(linear)), [], compute="int8")
    assert torch.backends.quantized.engine == before
    x = torch.randn(4, 32)
    with torch.no_grad():
        assert torch.allclose(quantized(x), linear(x), atol=0.05)


def test_float_compute_keeps_the_linear_with_its_weights_rounded_to_int8() -> None:
    """Weight-only int8 (CPUs without VNNI): float32 Linear layers holding exactly the int8 values."""
    torch.manual_seed(0)
    linear = nn.Linear(32, 16).eval()
    got = dynamic_int8(nn.Sequential(copy.deepcopy(linear)), [], compute="float")[0]
    assert type(got) is nn.Linear and not torch.equal(got.weight, linear.weight)
    assert torch.equal(got.weight, dequantize_rows(*quantize_rows(linear.weight)))
    assert torch.equal(got.bias, linear.bias)
    with pytest.raises(ValueError, match="int8 compute must be one of int8, float"):
        dynamic_int8(nn.Sequential(nn.Linear(2, 2)), [], compute="int4")


def test_the_int8_compute_follows_the_cpu_unless_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SENTEX_INT8_COMPUTE", raising=False)
    assert int8_compute() == ("int8" if cpu_has_vnni() else "float")
    monkeypatch.setenv("SENTEX_INT8_COMPUTE", "int8")
    assert type(dynamic_int8(nn.Sequential(nn.Linear(4, 2)), [])[0]) is RowScaledDynamicLinear
    monkeypatch.setenv("SENTEX_INT8_COMPUTE", "Float")
    assert type(dynamic_int8(nn.Sequential(nn.Linear(4, 2)), [])[0]) is nn.Linear
    monkeypatch.setenv("SENTEX_INT8_COMPUTE", "int4")
    with pytest.raises(ValueError, match="SENTEX_INT8_COMPUTE must be one of int8, float, got 'int4'"):
        int8_compute()


def test_quantizable_weights_skip_kept_modules(tiny_t5: Path) -> None:
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5)
    keys = quantizable_weights(model, ["wo"])
    assert "shared.weight" in keys and "encoder.block.0.layer.0.SelfAttention.q.weight" in keys
    assert not any(k.endswith("wo.weight") for k in keys)
    assert not any("layer_norm" in k for k in keys)


def test_checkpoint_loads_and_predicts_like_the_module(span_fit: FittedCheckpoint) -> None:
    span_ckpt = span_fit.path
    ex = load(span_ckpt)
    assert isinstance(ex, Extractor) and ex.family == "span"
    # the score the real ModelCheckpoint kept, rounded to the 6 decimals sentex reports
    assert ex.info["metrics"] == {"val/jaccard": round(span_fit.metrics["val/jaccard"], 6)}
    assert ex.info["base_model"] == "packaged:all-MiniLM-L6-v2" and ex.info["hyper_parameters"]["max_length"] == 32
    module = SpanExtractor.load_from_checkpoint(span_ckpt, map_location="cpu").eval()
    rows = [{"text": t, "sentiment": s} for t, s in zip(TEXTS, SENTIMENTS)]
    expected = module.extract(module.collate(rows))
    assert ex.extract(TEXTS, SENTIMENTS, batch_size=4) == expected
    assert all(p in t for p, t in zip(expected, TEXTS))


def test_batching_by_length_keeps_input_order(span_ckpt: Path) -> None:
    ex = load(span_ckpt)
    one_by_one = [ex.extract([t], [s])[0] for t, s in zip(TEXTS, SENTIMENTS)]
    assert ex.extract(TEXTS, SENTIMENTS, batch_size=3) == one_by_one
    assert ex.extract(TEXTS[::-1], SENTIMENTS[::-1], batch_size=16) == one_by_one[::-1]


def test_bad_inputs_are_one_line_errors(span_ckpt: Path) -> None:
    ex = load(span_ckpt)
    with pytest.raises(SentexError, match="2 texts but 1 sentiments"):
        ex.extract(["a", "b"], ["neutral"])
    with pytest.raises(SentexError, match="row 1: sentiment 'happy' is not one of"):
        ex.extract(["a", "b"], ["neutral", "happy"])
    with pytest.raises(SentexError, match="takes no generation settings"):
        ex.extract(["a"], ["neutral"], num_beams=2)
    with pytest.raises(SentexError, match="batch_size must be at least 1"):
        ex.extract(["a"], ["neutral"], batch_size=0)
    assert ex.extract([], []) == []


def test_seq2seq_generation_settings_apply_per_call(tiny_t5: Path, tmp_path: Path) -> None:
    ex = load(t5_checkpoint(tiny_t5, tmp_path / "t5.ckpt"))
    assert ex.family == "seq2seq"
    before = dict(ex.pipeline.codec.generation)
    short = ex.extract(TEXTS[:4], SENTIMENTS[:4], max_new_tokens=1)
    assert all(len(p) <= 4 for p in short)  # one token of the byte-level tokenizer is at most one character
    assert ex.pipeline.codec.generation == before


def test_missing_corrupt_and_foreign_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load(tmp_path / "nope.ckpt")
    (tmp_path / "bad.ckpt").write_bytes(b"not a zip at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load(tmp_path / "bad.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not a sentex checkpoint"):
        load(tmp_path / "other.ckpt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(CheckpointError, match="not a sentex export"):
        load(tmp_path / "folder")
