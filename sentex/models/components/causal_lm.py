"""Loading a decoder-only (causal) language model and its tokenizer, in full precision or 4-bit.

The network of the causal family is the transformers ``AutoModelForCausalLM`` itself (LoRA-wrapped
while training); this module is the one place that builds it from a name (see
:mod:`~sentex.models.components.pretrained`: a hub id, a folder, or ``packaged:smollm2-135m-instruct``).
"""

from __future__ import annotations

import importlib.util
import tempfile
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from sentex.errors import SentexError
from sentex.models.components.pretrained import PretrainedSource

QUANTIZATIONS = ("nf4",)
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_causal_tokenizer(source: PretrainedSource) -> Any:
    """The model's tokenizer, with a padding token (Llama 3 has none: its end-of-sequence token pads)."""
    tokenizer = AutoTokenizer.from_pretrained(source.path, **source.kwargs())
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    source: PretrainedSource, quantize_base: str | None = None, compute_dtype: str = "float32"
) -> nn.Module:
    """The pretrained causal LM in float32, or with its linear layers in 4-bit (QLoRA's frozen base).

    Args:
        source: where the weights are.
        quantize_base: ``None`` (float32) or ``"nf4"``: bitsandbytes 4-bit NormalFloat with double
            quantization (https://arxiv.org/abs/2305.14314); embeddings, norms and the output layer
            stay float32. bitsandbytes >= 0.45 runs it on CPU too.
        compute_dtype: dtype the 4-bit layers compute in (``float32``; ``bfloat16`` on GPUs that have it).

    Raises:
        SentexError: an unknown quantization or compute dtype, or bitsandbytes missing.
    """
    if source.gguf_file and importlib.util.find_spec("gguf") is None:
        raise SentexError(
            f"{source.path}/{source.gguf_file}: reading GGUF weights needs the 'gguf' package: pip install gguf"
        )
    if quantize_base is None:
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32, **source.kwargs())
        return forget_gguf(model)
    if quantize_base not in QUANTIZATIONS:
        raise SentexError(
            f"model.quantize_base must be null or one of {', '.join(QUANTIZATIONS)}, got {quantize_base!r}"
        )
    config = four_bit_config(compute_dtype)
    if source.gguf_file:
        # transformers cannot quantize while it reads a GGUF file (it refuses the combination), so the
        # dequantized float32 weights go through a temporary folder: a few seconds, nothing kept.
        with tempfile.TemporaryDirectory(prefix="sentex-gguf-") as folder:
            load_causal_lm(source, None).save_pretrained(folder)
            return _load_4bit(folder, config)
    return _load_4bit(source.path, config)


def four_bit_config(compute_dtype: str) -> Any:
    """bitsandbytes' 4-bit NF4 settings of QLoRA, computing in ``compute_dtype``."""
    if compute_dtype not in COMPUTE_DTYPES:
        raise SentexError(
            f"model.quantize_compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {compute_dtype!r}"
        )
    try:
        import bitsandbytes  # noqa: F401  (transformers needs it installed; say so in one line)
    except ImportError as err:
        raise SentexError(f"model.quantize_base needs bitsandbytes >= 0.45: pip install bitsandbytes ({err})") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=COMPUTE_DTYPES[compute_dtype],
    )


def _load_4bit(path: str, config: Any) -> nn.Module:
    # Quantized on the CPU; Lightning moves the module (4-bit weights and their quantization state) to
    # the training device like any other.
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, quantization_config=config, device_map={"": "cpu"}
    )
    for module in model.modules():
        # bitsandbytes 0.50 repacks a layer's 4-bit weights for its bf16 CPU kernel at the first
        # eval-mode forward on AVX512-BF16 CPUs, and keeps them so: training after a validation then
        # no longer learns (train-mode losses stop changing, measured on a tiny Llama), and layers
        # narrower than 64 fail. Every forward stays on the dequantizing path, as in training.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def forget_gguf(model: nn.Module) -> nn.Module:
    """Drop transformers' record that ``model`` was read from a GGUF file.

    Its weights are already dequantized to ordinary float32 tensors, but the record makes
    ``save_pretrained`` refuse ("quantized with gguf and is not serializable") and would make an
    export or a merged model look quantized.
    """
    method = getattr(model, "quantization_method", None)
    if getattr(method, "value", method) == "gguf":
        model.hf_quantizer = None
        model.is_quantized = False
        model.quantization_method = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model
