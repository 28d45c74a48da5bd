"""Ctrl-C ends every command within a second, with exit status 130 and one line, never a traceback.

Python turns SIGINT into ``KeyboardInterrupt`` in whatever Python code the main thread runs next. Two places lose
it: a garbage-collection callback (JAX registers one; an exception raised there is printed as "Exception ignored"
and dropped, so the command runs on to the end and exits 0), and the imports of the first second (a traceback
through importlib). So the handler here raises as Python would and also arms a watchdog: if the process is still
alive :data:`GRACE_S` later, the interrupt was lost or is stuck in a long C call, and it exits 130 itself. When the
signal lands inside a garbage-collection callback, where raising can only print "Exception ignored" and be lost,
it exits 130 at once instead.

The long-running commands (``replay``, ``run``, the distributed roles) stop on SIGINT through their event loop's own
handler (:mod:`streamer.app.signals`), which replaces this one while the loop runs: their orderly stop (a
checkpoint, the Kafka flush) is not cut short.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
from types import FrameType

GRACE_S = 1.0
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command ended by Ctrl-C
_armed = threading.Event()


def said() -> None:
    """The one line an interrupted command leaves on stderr."""
    try:
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr closed or gone: nothing to say it on
        pass


def _force() -> None:
    said()
    os._exit(EXIT_INTERRUPTED)


def _in_gc_callback(frame: FrameType | None) -> bool:
    """Whether ``frame`` (or one of the frames below it) runs a garbage-collection callback."""
    codes = {getattr(cb, "__code__", None) for cb in gc.callbacks} - {None}
    while frame is not None and codes:
        if frame.f_code in codes:
            return True
        frame = frame.f_back
    return False


def _handler(signum: int, frame: FrameType | None) -> None:
    if _in_gc_callback(frame):
        _force()
    if not _armed.is_set():
        _armed.set()
        watchdog = threading.Timer(GRACE_S, _force)
        watchdog.daemon = True
        watchdog.start()
    raise KeyboardInterrupt


def install() -> None:
    """Handle SIGINT as described in the module doc (main thread only, as Python requires)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _handler)
