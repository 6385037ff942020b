"""sentex uses Lightning and torch through their public API only.

A private attribute (``self._trainer``, ``optimizer._step_supports_amp_scaling``) or a private name
(``lightning.fabric.utilities.types._PATH``) can change or vanish in any release without notice, and
the failure would show up far from its cause. The names checked are read from the installed
versions: the private attributes a ``LightningModule``, a ``Trainer`` and a fused torch optimizer
carry. The clipping path's public check (``optimizer.defaults["fused"]``) is exercised by
``tests/test_cpu_training.py``; the fallbacks for a module without a Trainer here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lightning.pytorch as pl
import torch

from sentex.models import SentimentClassifier, SpanExtractor

SOURCE = Path(__file__).resolve().parents[1] / "sentex"
UPSTREAM = ("lightning", "torch")


def private_names(obj: object, *, besides: object | None = None) -> set[str]:
    """The single-underscore instance attributes of ``obj`` (minus those of ``besides``)."""
    names = {k for k in vars(obj) if k.startswith("_") and not k.startswith("__")}
    return names - (set(vars(besides)) if besides is not None else set())


def upstream_private_attributes() -> set[str]:
    """Private instance attributes of Lightning's module and trainer and of a fused torch optimizer."""
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    optimizer = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], fused=True)
    module = private_names(pl.LightningModule(), besides=torch.nn.Module())  # nn.Module's own are its API
    return module | private_names(trainer) | private_names(optimizer)


def uses_of_private_api(tree: ast.AST, private: set[str]) -> list[tuple[int, str]]:
    """``(line, what)`` for each private upstream attribute read (``x._name``, ``getattr(x, "_name")``)
    and each private name imported from Lightning or torch."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in private:
            found.append((node.lineno, ast.unparse(node)))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr")
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in private
        ):
            found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UPSTREAM:
            private_imports = [a.name for a in node.names if a.name.startswith("_")]
            found += [(node.lineno, f"from {node.module} import {name}") for name in private_imports]
    return found


def test_sentex_reads_no_private_lightning_or_torch_attribute() -> None:
    private = upstream_private_attributes()
    # Were these renamed upstream, the scan would pass vacuously: say so instead.
    missing = {"_trainer", "_step_supports_amp_scaling"} - private
    assert not missing, f"installed Lightning/torch no longer have {missing}; update this test's expectations"
    found = [
        f"{path.relative_to(SOURCE.parent)}:{line}: {what}"
        for path in sorted(SOURCE.rglob("*.py"))
        for line, what in uses_of_private_api(ast.parse(path.read_text(encoding="utf-8")), private)
    ]
    assert not found, "private Lightning/torch API (use the public one):\n" + "\n".join(found)

    # The public replacements do what the private reads did for a module with no Trainer attached
    # (``self.trainer`` raises there): no file to name in errors, no data module to read labels from.
    for module in (SpanExtractor(max_length=32), SentimentClassifier(labels=["negative", "positive"], max_length=32)):
        assert module._checkpoint_name() == ""
        module.setup("fit")
