"""The spec-driven trainer (``vlir train``).

Modules: ``trainer`` (stages, optimiser, schedule, AMP, EMA, validation, logs), ``data`` (the
deterministic sample stream and its sharding over processes), ``ddp`` (torchrun process
groups), ``ema``, ``checkpoint`` (atomic, ``weights_only``-safe files) and ``cli``. Importing
this package imports nothing heavy.
"""
