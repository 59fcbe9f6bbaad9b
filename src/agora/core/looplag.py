"""How late the event loop runs, and who held it when it ran late.

Every service shares one event loop, so one callback that computes for a second stalls
every client of every protocol for that second. Two cheap instruments show it:

- A timer re-armed every ``TICK`` seconds records how late it fired (the loop's lag)
  in a histogram, exported at /metrics as ``agora_event_loop_lag_seconds``.
- A watchdog thread notices when the timer has not fired for longer than
  ``slow_callback`` and logs a warning naming what the loop was running: the protocol,
  user and command of the session whose task holds it (each session keeps an
  :class:`Activity` up to date at the start of every command), else the coroutine.
  When the loop comes back, one more line says how long it was held in all.
- A garbage collection stops every thread: one that lasts longer than the threshold
  is logged too, and the watchdog names it when it is what holds the loop.

Not asyncio's debug mode (``loop.slow_callback_duration``): it wraps every callback and
costs too much to run in production, and it only speaks once the callback has ended.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import threading
import time
import weakref
from bisect import bisect_left
from types import FrameType
from typing import Iterable

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

log = logging.getLogger("agora.looplag")

TICK = 0.05  # seconds between two lag samples (at most half the warning threshold)
BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))


class Activity:
    """What one session is doing: set by the protocol at the start of each command.

    Plain attributes, written by the loop's thread and read by the watchdog's only when
    the loop is stuck: no lock, nothing costlier than an assignment per command.
    """

    __slots__ = ("protocol", "user", "command", "__weakref__")

    def __init__(self, protocol: str, user: str | None = None, command: str | None = None):
        self.protocol = protocol
        self.user = user
        self.command = command

    def begin(self, command: str, user: str | None = None) -> None:
        self.command = command
        if user is not None:
            self.user = user

    def __str__(self) -> str:
        return f"{self.protocol} user {self.user or '-'} command {self.command or '-'!r}"


# The activity of each task that declared one; read by the watchdog through the loop's
# current task (a thread cannot read another thread's context variables).
_activities: "weakref.WeakKeyDictionary[asyncio.Task, Activity]" = weakref.WeakKeyDictionary()


def attach(activity: Activity) -> None:
    """``activity`` is what the running task does from now on."""
    task = asyncio.current_task()
    if task is not None:
        _activities[task] = activity


def begin(protocol: str, command: str, user: str | None = None) -> None:
    """The running task starts ``command`` (for the watchdog's warning): one weak-dict
    look-up, cheap enough for every command of every protocol."""
    task = asyncio.current_task()
    if task is None:
        return
    activity = _activities.get(task)
    if activity is None:
        activity = _activities[task] = Activity(protocol)
    activity.begin(command, user)


def _where(thread: int) -> str:
    """The innermost frame of Agora's own code that ``thread`` is in (else its innermost):
    what a callback outside any session is doing. sys._current_frames() is documented
    for exactly this (debugging a thread that is stuck) and runs only on a stall."""
    frame = sys._current_frames().get(thread)
    innermost = frame
    while frame is not None and f"{os.sep}agora{os.sep}" not in frame.f_code.co_filename:
        frame = frame.f_back
    where = _frame(frame)
    if innermost is not frame:
        where += f" calling {_frame(innermost)}"
    return where


def _frame(frame: FrameType | None) -> str:
    if frame is None:
        return "?"
    return f"{frame.f_code.co_qualname} ({frame.f_code.co_filename}:{frame.f_lineno})"


def _running(loop: asyncio.AbstractEventLoop, thread: int) -> str:
    """What the loop's thread is running, as well as another thread can tell."""
    task = asyncio.current_task(loop)
    activity = _activities.get(task) if task is not None else None
    if activity is not None:
        return f"{activity} in {_where(thread)}"
    if task is None:
        frame = sys._current_frames().get(thread)
        if frame is not None and frame.f_code.co_name in _LOOP_RUNNERS:
            # No Python callback at all: the loop waits for the GIL that another thread
            # holds (work handed to a thread, a garbage collection), or for a CPU.
            return "no callback (the loop's thread waits for the GIL or a CPU)"
        return f"a callback outside any task in {_where(thread)}"
    return f"task {task.get_name()} in {_where(thread)}"


# Where the loop's thread is when it runs no Python callback (uvloop's loop is C code).
_LOOP_RUNNERS = {"run", "run_forever", "run_until_complete", "_run_once"}


class LoopLag(Collector):
    """The lag histogram, and the watchdog that names a callback holding the loop."""

    def __init__(self) -> None:
        self.counts = [0] * len(BOUNDS)
        self.total = 0.0
        self.threshold = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._last_tick = 0.0       # time.monotonic() of the last tick, read by the watchdog
        self._reported = 0.0        # the _last_tick whose stall the watchdog has reported
        self._held_by = ""
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._collecting: tuple[float, int] | None = None  # a collection's start and generation

    def start(self, threshold: float) -> None:
        """Start sampling on the running loop; warn past ``threshold`` seconds (0: never)."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self.threshold = threshold
        self._tick_every = min(TICK, threshold / 2) if threshold else TICK
        self._last_tick = time.monotonic()
        self._due = self._loop.time() + self._tick_every
        self._timer = self._loop.call_at(self._due, self._tick)
        if threshold:
            gc.callbacks.append(self._collection)
            self._stop.clear()
            self._watchdog = threading.Thread(target=self._watch, name="agora-looplag", daemon=True)
            self._watchdog.start()

    def stop(self) -> None:
        if self._collection in gc.callbacks:
            gc.callbacks.remove(self._collection)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join()
            self._watchdog = None

    def observe(self, lag: float) -> None:
        self.counts[bisect_left(BOUNDS, lag)] += 1
        self.total += lag

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        lag = max(0.0, now - self._due)
        self.observe(lag)
        stalled_since, self._last_tick = self._last_tick, time.monotonic()
        if self._reported == stalled_since:
            log.warning("the event loop was held for %.3f s by %s", lag, self._held_by,
                        extra={"lag": lag, "held_by": self._held_by})
        self._due = now + self._tick_every
        self._timer = self._loop.call_at(self._due, self._tick)

    def _collection(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._collecting = (time.perf_counter(), info["generation"])
            return
        if self._collecting is None:
            return
        took = time.perf_counter() - self._collecting[0]
        self._collecting = None
        if took > self.threshold:
            log.warning("a garbage collection (generation %d) held every thread for %.3f s", info["generation"],
                        took, extra={"generation": info["generation"], "took": took})

    def _watch(self) -> None:
        assert self._loop is not None
        while not self._stop.wait(self.threshold / 2):
            last = self._last_tick
            held = time.monotonic() - last - self._tick_every
            if held > self.threshold and last != self._reported:
                collecting = self._collecting
                self._held_by = (f"a garbage collection (generation {collecting[1]})" if collecting
                                 else _running(self._loop, self._thread))
                self._reported = last
                log.warning("the event loop has been held for more than %.3f s by %s", self.threshold,
                            self._held_by, extra={"threshold": self.threshold, "held_by": self._held_by})

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily("agora_event_loop_lag_seconds",
                                       "The event loop's lag: how late it ran a timer due every 50 ms")
        cumulative, buckets = 0, []
        for bound, count in zip(BOUNDS, list(self.counts)):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        family.add_metric([], buckets, sum_value=self.total)
        yield family
