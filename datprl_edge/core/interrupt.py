"""SIGTERM as an exception: a terminated run cleans up like an interrupted one."""

from __future__ import annotations

import contextlib
import signal
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that its cleanups run as for Ctrl-C."""


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM during cleanup kills at once
    raise Terminated


@contextlib.contextmanager
def sigterm_unwinds():
    """While a command runs, SIGTERM unwinds the stack like Ctrl-C: partial outputs and temporary
    folders are removed and child processes (bench workers) are killed, where Python's default
    would end the process on the spot and leave them behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
