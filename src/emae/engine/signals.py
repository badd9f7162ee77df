"""Graceful stop on SIGTERM / SIGINT: the first one sets a flag that the training loop reads after each optimiser
step (it then writes a checkpoint and returns); a second SIGINT aborts at once (KeyboardInterrupt: the
checkpoint being written, if any, is dropped and the previous one kept). The previous handlers are restored on
exit. Data-loader workers ignore both signals (``emae.data.loader.ignore_stop_signals``): the main process shuts them down."""

from __future__ import annotations

import signal
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Context manager; ``received`` is the name of the first stop signal (e.g. "SIGTERM"), else None."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.received = self.received or signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

