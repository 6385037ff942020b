"""``sentex align``: DPO-train a model from its SFT checkpoint on preference pairs.

    sentex align --config configs/dpo_span.yaml --data.train_path data/train.csv \\
        --model.sft_checkpoint lightning_logs/version_0/checkpoints/best-....ckpt

This is ``sentex fit`` with an alignment module (:mod:`sentex.alignment.span`,
:mod:`sentex.alignment.seq2seq`, :mod:`sentex.alignment.causal`): when the fit starts, the module
builds preference pairs from the training tweets (:mod:`sentex.alignment.pairs`) — or reads them
from ``--model.pairs_path`` — and trains on them; validation rows are the usual held-out tweets, so
checkpoints, ``val/jaccard``, TensorBoard, ``--ckpt_path last`` and every Lightning option work as
for fit.

The model is the SFT model's: every model setting (family, scoring, head, LoRA, label-shift and target
options, tokenizer settings) is read from ``model.sft_checkpoint``, so the alignment config holds
alignment settings only. A model setting given in the config or on the command line must equal the
checkpoint's; one that contradicts it is a one-line error naming both values.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.utilities import rank_zero_info

from sentex.alignment.module import DPOMixin
from sentex.alignment.sft import model_setting_defaults, sft_model_settings
from sentex.cli import SentexCLI, run_cli
from sentex.errors import CheckpointError, SentexError
from sentex.io.checkpoints import read_checkpoint


class AlignCLI(SentexCLI):
    """``sentex fit`` for alignment modules (subclasses of :class:`~sentex.alignment.module.DPOMixin`)."""

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse and check ``ckpt_path`` as ``sentex fit`` does, but keep the align config's model settings.

        ``sentex fit`` takes a checkpoint's hyper-parameters into the config. An aligned span
        checkpoint stores plain span ones (so predict/export load it standalone), which must not turn
        a resumed ``align`` into supervised training; so ``ckpt_path`` is held back while LightningCLI
        reads checkpoints and restored before the classes are built. The model's own load checks
        family and weights.
        """
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        self._resume_path = None
        if subcommand:  # run=False (benchmarks) has no subcommand and no ckpt_path
            self._resume_path = self.config[subcommand].get("ckpt_path")
            self.config[subcommand]["ckpt_path"] = None
        if self._resume_path and "dpo" not in (read_checkpoint(self._resume_path).get("sentex") or {}):
            # SFT and align runs share lightning_logs/: "last" may be the SFT run's last.ckpt
            raise CheckpointError(
                f"{self._resume_path}: not a sentex align checkpoint (no alignment settings in it); resume"
                " with a last.ckpt of the align run, or start it from model.sft_checkpoint without --ckpt_path"
            )
        self.take_sft_model_settings(parser, args)

    def take_sft_model_settings(self, parser: LightningArgumentParser, args: Any) -> None:
        """Set the config's model settings to those ``model.sft_checkpoint`` was trained with.

        A setting the config or command line gives explicitly is kept only if it equals the
        checkpoint's; any that contradict it fail together in one line. Alignment settings (``beta``,
        ``loss_type``, the optimizer's) are the config's alone.

        Raises:
            SentexError: an explicit model setting contradicts the checkpoint.
            CheckpointError: the checkpoint is unreadable, not sentex's, or of another family.
        """
        subcommand = self.config.get("subcommand")
        prefix = f"{subcommand}." if subcommand else ""
        cls = dpo_class(self.config.get(f"{prefix}model.class_path"))
        init_args = self.config.get(f"{prefix}model.init_args")
        if cls is None or init_args is None or not init_args.get("sft_checkpoint"):
            return  # not a DPO module (before_instantiate_classes says so) or no checkpoint (the parser says so)
        path = init_args["sft_checkpoint"]
        saved = sft_model_settings(path, cls.family, cls.plain_family)
        given = explicit_model_args(parser, args, prefix)
        clashes = [
            f"{given_as(name, given[name], args)} contradicts the SFT checkpoint's {name}={saved[name]!r}"
            for name in saved
            if name in given and given[name] != saved[name]
        ]
        if clashes:
            raise SentexError(
                f"{'; '.join(clashes)} ({path}); sentex align takes the model settings from"
                f" model.sft_checkpoint: leave {'it' if len(clashes) == 1 else 'them'} out"
            )
        for name, value in saved.items():
            init_args[name] = value
        defaults = model_setting_defaults(cls.plain_family)
        changed = ", ".join(f"{k}={v!r}" for k, v in saved.items() if defaults.get(k) != v)
        rank_zero_info(f"sentex align: model settings of {path}: {changed or 'the defaults'}")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        if self.subcommand:
            config["ckpt_path"] = self._resume_path
        class_path = config["model"].get("class_path", "")
        if dpo_class(class_path) is None:
            raise SentexError(
                f"sentex align trains DPO modules (sentex.alignment.span.DPOSpanExtractor,"
                f" sentex.alignment.seq2seq.DPOSeq2SeqExtractor, sentex.alignment.causal.DPOCausalExtractor),"
                f" got model {class_path!r}; use configs/dpo_span.yaml, configs/dpo.yaml or configs/dpo_causal.yaml"
            )
        super().before_instantiate_classes()


def dpo_class(class_path: str | None) -> type[DPOMixin] | None:
    """The alignment module a ``class_path`` names, or ``None`` when it names none (or nothing importable)."""
    module, _, name = (class_path or "").rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name, None) if module else None
    except ImportError:
        return None  # the parser or before_instantiate_classes reports it
    return cls if isinstance(cls, type) and issubclass(cls, DPOMixin) else None


def explicit_model_args(parser: LightningArgumentParser, args: Any, prefix: str) -> dict[str, Any]:
    """The model ``init_args`` the config files and command line set themselves (defaults left out).

    LightningCLI's config has every default filled in, so it cannot tell ``head_lstm: false`` written
    in a config from the default; parsing again without defaults can.
    """
    if isinstance(args, (dict, Namespace)):
        given = parser.parse_object(args, defaults=False)
    else:
        given = parser.parse_args(args, defaults=False)
    init_args = given.get(f"{prefix}model.init_args")
    return init_args.as_dict() if isinstance(init_args, Namespace) else dict(init_args or {})


def given_as(name: str, value: Any, args: Any) -> str:
    """How the user wrote a model setting: ``--model.NAME VALUE``, or ``model.NAME: VALUE`` from a config.

    >>> given_as("head_lstm", False, ["--model.head_lstm", "false"]), given_as("lora_r", 8, [])
    ('--model.head_lstm false', 'model.lora_r: 8 (config)')
    """
    flags = (f"--model.{name}", f"--model.init_args.{name}")
    on_command_line = isinstance(args, list) and any(str(a).split("=", 1)[0] in flags for a in args)
    if isinstance(value, bool) or value is None:
        text = json.dumps(value)  # true / false / null, as YAML and the command line spell them
    elif isinstance(value, str) and value.strip() == value and value.isprintable():
        text = value
    else:
        text = json.dumps(value, default=str)
    return f"--model.{name} {text}" if on_command_line else f"model.{name}: {text} (config)"


def main(argv: list[str]) -> None:
    """Run ``sentex align ARGS``: ``sentex fit`` with a DPO module."""
    run_cli(AlignCLI, ["fit", *argv])
