"""Ctrl-C (SIGINT) and SIGTERM stop training cleanly: the step under way ends, a checkpoint is
written, and the run can be resumed. A second signal interrupts at once (``KeyboardInterrupt``;
atomic writes leave no partial file)."""
from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger("vlir.train")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """While entered (main thread only), SIGINT and SIGTERM set :attr:`received` (the signal's name)."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            raise KeyboardInterrupt(f"{name} (second signal)")
        self.received = name
        log.warning("%s: stopping after this step, with a checkpoint (send it again to stop at once)", name)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    @property
    def exit_code(self) -> int | None:
        """The shell's status for a process ended by the received signal (130 for SIGINT, 143 for SIGTERM)."""
        return None if self.received is None else 128 + int(signal.Signals[self.received])
