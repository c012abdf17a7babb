"""Stopping on SIGINT/SIGTERM: a flag the loop reads once per step, never an exception mid-step.

The step in progress finishes, every process agrees on the step to stop at (one all-reduced flag
in the loop), ``checkpoint_last.pt`` is written, then :class:`TrainingInterrupted` is raised.
Under torchrun, SIGTERM to the launcher reaches every worker (it then waits 30 s before SIGKILL).
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from ..errors import DynaMaskError

__all__ = ["StopFlag", "TrainingInterrupted"]


class TrainingInterrupted(DynaMaskError):
    """Training stopped on SIGINT/SIGTERM after writing ``checkpoint_last.pt``."""

    def __init__(self, message: str, iteration: int = 0, checkpoint: str = "", signal_name: str = ""):
        super().__init__(message)
        self.iteration = iteration
        self.checkpoint = checkpoint
        self.signal_name = signal_name


class StopFlag:
    """SIGINT/SIGTERM set a flag; the loop stops after the current iteration.

    A second SIGINT while the flag is set raises KeyboardInterrupt at once.
    Handlers are installed only in the main thread and restored on exit.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        if self.signum is None:
            return ""
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    self._previous[sig] = signal.getsignal(sig)
                    signal.signal(sig, self._handler)
                except (ValueError, OSError):  # not allowed here
                    self._previous.pop(sig, None)
        return self

    def __exit__(self, *exc):
        for sig, prev in self._previous.items():
            try:
                signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
            except (ValueError, OSError):
                pass
        self._previous.clear()
        return False
