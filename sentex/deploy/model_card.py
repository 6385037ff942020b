"""The ``README.md`` model card written next to an exported model."""

from __future__ import annotations

from typing import Any

DATA_NOTE = (
    "Trained on the Kaggle *Tweet Sentiment Extraction* data (tweets from Figure Eight's "
    "*Data for Everyone*, CC BY-NC-SA 4.0 as redistributed by Kaggle): check the competition "
    "rules and that licence before any commercial use."
)


def _metrics_lines(metrics: dict[str, float]) -> list[str]:
    if not metrics:
        return ["No validation score was recorded in the checkpoint."]
    return ["| metric | value |", "|---|---|", *(f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items()))]


# How each family is called once loaded, and which transformers class reads a float export's weights.
USAGE = {
    "classifier": ('clf.classify(["my phone died again, worst day"])', "AutoModelForSequenceClassification"),
    "causal": ('ex.extract(["my phone died again, worst day"], ["negative"])', "AutoModelForCausalLM"),
    "seq2seq": ('ex.extract(["my phone died again, worst day"], ["negative"])', "AutoModelForSeq2SeqLM"),
}
PROMPT_NOTE = {
    "classifier": "the label names, in output order, and the truncation are `settings` in `sentex.json`.",
    "causal": "prompt it with the chat template and `settings.instruction` from `sentex.json`.",
    "seq2seq": "prompt it with `settings.prompt_template` from `sentex.json`.",
}


def _how_to_load(manifest: dict[str, Any]) -> list[str]:
    family = manifest["family"]
    name = "clf" if family == "classifier" else "ex"
    call = USAGE.get(family, ('ex.extract(["my phone died again, worst day"], ["negative"])', ""))[0]
    lines = [
        "```python",
        "import sentex.deploy.load as si",
        f'{name} = si.load("path/to/this/folder")',
        call,
        "```",
        "",
    ]
    if manifest.get("runtime") == "onnx":
        lines.append(_onnx_note(manifest))
    elif manifest.get("quantization"):  # int8 / int4: sentex's own weight files
        detail = "per-row scales" if manifest["dtype"] == "int8" else "groups of 32 with scale and offset"
        lines.append(
            f"The weights are {manifest['dtype']} (`{manifest.get('weights')}`, {detail}); only `sentex` reads them. "
            "Plain `transformers` can read `config.json` and the tokenizer."
        )
    elif manifest["family"] == "span":
        lines.append(
            "The encoder alone loads with `transformers.AutoModel.from_pretrained(folder)`; the start/end head is "
            "`head.safetensors` (`nn.Linear(hidden_size, 2)`) and the decoding settings are in `sentex.json`."
        )
    else:
        lines.append(
            f"LoRA is merged, so `transformers.{USAGE[family][1]}.from_pretrained(folder)` loads the whole model; "
            f"{PROMPT_NOTE[family]}"
        )
    return lines


def _onnx_note(manifest: dict[str, Any]) -> str:
    """How an ONNX export's graph can be run without sentex, and what it leaves to sentex."""
    onnx = manifest.get("onnx") or {}
    inputs, outputs = ", ".join(onnx.get("inputs") or []), ", ".join(onnx.get("outputs") or [])
    quantized = " after ONNX Runtime's dynamic int8 quantization" if manifest["dtype"] == "int8" else ""
    return (
        f"`{manifest.get('weights')}` is the span network (encoder and heads) as one ONNX graph (opset "
        f"{onnx.get('opset')}){quantized}: inputs {inputs} (int64, batch x tokens), outputs {outputs} logits. "
        "`onnxruntime.InferenceSession` runs it; choosing the span and mapping it back to the tweet (the settings in "
        "`sentex.json`) is sentex's decoding, which `sentex.load` applies (`pip install 'sentex[onnx]'`)."
    )


def _title_dtype(manifest: dict[str, Any]) -> str:
    return f"{manifest['dtype']}, ONNX Runtime" if manifest.get("runtime") == "onnx" else manifest["dtype"]


WHAT = {
    "span": "picks the start and end token of the phrase in the tweet, so every answer is an exact substring",
    "seq2seq": "generates the phrase from a prompt; answers are mapped back onto the tweet's spelling where possible",
    "causal": "writes the phrase as its chat reply; a reply that is not in the tweet is mapped onto its closest "
    "substring",
}


def render_card(manifest: dict[str, Any]) -> str:
    """Markdown model card: what the model does, how to load it, its metrics and limitations."""
    family = manifest["family"]
    what = WHAT.get(family, WHAT["seq2seq"])
    lora = manifest.get("lora")
    lora_line = (
        f"LoRA r={lora['r']}, alpha={lora['alpha']} on {', '.join(lora['target_modules'])}, merged into the base."
        if lora
        else "Fully fine-tuned (no LoRA)."
    )
    if family == "classifier":
        labels = ", ".join((manifest.get("settings") or {}).get("labels") or [])
        title, intro = (
            "sentiment classifier",
            f"Given a text, returns its class ({labels}) and the class probabilities.",
        )
    else:
        title = f"{family} extractor"
        intro = (
            "Given a tweet and its sentiment (negative, neutral, positive), returns the phrase that carries the "
            f"sentiment. This {family} model {what}."
        )
    lines = [
        f"# sentex {title} ({_title_dtype(manifest)})",
        "",
        intro,
        "",
        f"- Base model: `{manifest.get('base_model')}`",
        f"- {lora_line}",
        f"- Weights: {manifest['dtype']}; exported by sentex {manifest.get('sentex_version')} "
        f"from `{manifest.get('source_checkpoint')}`.",
        "",
        "## How to load",
        "",
        *_how_to_load(manifest),
        "",
        "## Validation metrics",
        "",
        *_metrics_lines(manifest.get("metrics") or {}),
        "",
        "Metrics were measured on the full-precision checkpoint; `sentex bench` measures this export.",
        "",
        *_closing_lines(),
    ]
    return "\n".join(lines)


def _closing_lines() -> list[str]:
    return [
        "## Limitations",
        "",
        "- English tweets from 2020; slang, sarcasm and other domains are handled poorly.",
        "- Scored by word-level Jaccard, not by human judgement; neutral tweets are usually answered in full.",
        "- The labels are crowd-sourced and noisy; do not use the output for decisions about people.",
        "",
        "## Data licence",
        "",
        DATA_NOTE,
        "",
    ]


def _member_row(member: dict[str, Any]) -> str:
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted((member.get("metrics") or {}).items())) or "not recorded"
    lora = member.get("lora")
    tuning = f"LoRA r={lora['r']} (merged)" if lora else "full fine-tuning"
    return (
        f"| `{member['path']}` | `{member.get('base_model')}` | {tuning}, {member.get('span_scoring')} scoring | "
        f"{metrics} | `{member.get('source_checkpoint')}` |"
    )


def render_ensemble_card(manifest: dict[str, Any]) -> str:
    """Markdown model card of an ensemble folder: its members, their metrics, how to load it."""
    members = manifest["member_info"]
    dtype = _title_dtype(manifest)
    lines = [
        f"# sentex {manifest['family']} ensemble of {len(members)} members ({dtype})",
        "",
        "Given a tweet and its sentiment (negative, neutral, positive), returns the phrase that carries the "
        f"sentiment. The {len(members)} member span models share one tokenizer; each scores every span of the "
        f"tweet, and the answer is the span of highest {manifest['ensemble']['combine']} (the members' span "
        "distributions averaged), so every answer is an exact substring.",
        "",
        f"- Weights: {dtype}, each member in its own folder (a complete single-model export); exported by "
        f"sentex {manifest.get('sentex_version')}.",
        f"- Cost: one forward pass per member, so about {len(members)}x the latency and size of one member.",
        "",
        "## How to load",
        "",
        "```python",
        "import sentex.deploy.load as si",
        'ex = si.load("path/to/this/folder")  # loads every member',
        'ex.extract(["my phone died again, worst day"], ["negative"])',
        "```",
        "",
        "`sentex predict|test|validate --ckpt_path path/to/this/folder`, `sentex bench` and `sentex app` run it "
        "like a single model; only `sentex` combines the members.",
        "",
        "## Members",
        "",
        "| member | base model | training | validation metrics | source checkpoint |",
        "|---|---|---|---|---|",
        *(_member_row(m) for m in members),
        "",
        "Each member's metrics were measured on its own validation data (for k-fold members, its held-out fold) "
        "in full precision; the ensemble's own score comes from `sentex test` or `sentex bench` on this folder.",
        "",
        *_closing_lines(),
    ]
    return "\n".join(lines)
