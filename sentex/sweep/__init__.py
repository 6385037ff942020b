"""``sentex sweep``: hyper-parameter searches on Optuna, each trial a normal ``sentex fit`` run.

:mod:`~sentex.sweep.space` reads and checks the space file (pure), :mod:`~sentex.sweep.recipe`
checks it against the recipe and runs one trial through the sentex CLI, :mod:`~sentex.sweep.study`
drives the Optuna study (storage, resume, pruning, progress), :mod:`~sentex.sweep.report` writes
the results table, plot and best config, and :mod:`~sentex.sweep.command` is the command line.
"""
