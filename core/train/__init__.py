"""The spec-driven trainer (``vlir train``).

Modules: ``trainer`` (stages, optimiser, schedule, AMP, EMA, validation, logs), ``objective``
(what training asks of a pipeline: teacher routing, loss inputs, the weighted loss), ``data``
(the deterministic sample stream and its sharding over processes), ``ddp`` (torchrun process
groups), ``ema``, ``checkpoint`` (atomic, ``weights_only``-safe files), ``resume`` (what
resuming checks and repairs), ``stop`` (Ctrl-C and SIGTERM), ``console`` (progress bar or
plain lines) and ``cli``. Importing this package imports nothing heavy.
"""
