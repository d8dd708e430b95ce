"""Many threads' statements of one kind run as one: the sender's claims, outcomes and receipts.

Each of the sender's threads claims its email and records its outcome with a statement of its
own, so at a high rate Postgres runs two commits per email, and most of its time is the
per-statement work around the rows (a commit, a WAL flush, the round trip). A `Batch` lets the
threads that arrive while `width` statements of the kind are running wait, then runs all of
them as one statement, one commit: the first thread through the gate takes everything waiting
and runs it, and each thread gets its own item's result. One thread alone runs its statement at
once. Under load, that is while the last statement of the kind carried more than one item, the
thread that takes first waits `linger` at the gate, so that the threads arriving meanwhile share
its statement: without it, at a few hundred emails a second most claims and outcomes still
arrived one by one, between two statements, and each paid a commit and a round trip alone.

An item's result is the batched statement's answer for it. When Postgres refuses the batched
statement for a reason that is not an outage (a value it refuses, a lock or statement timeout, a
deadlock with another batch), every item is run again alone, so one bad item fails only its own
thread (`on_fallback` is told). An outage fails them all, and each thread handles it as it did
its own statement's; so does a bug outside Postgres.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Generic, TypeVar

import psycopg2

Item = TypeVar("Item")
Result = TypeVar("Result")


def outage(error: psycopg2.Error) -> bool:
    """The database cannot be reached, or is going away (the connection's error classes), as
    opposed to something in the statement or its rows."""
    if isinstance(error, psycopg2.InterfaceError):
        return True
    code = getattr(error, "pgcode", None)
    return isinstance(error, psycopg2.OperationalError) and (code is None or code[:2] == "08" or code[:3] == "57P")


class _Slot(Generic[Item, Result]):
    __slots__ = ("item", "key", "size", "taken", "done", "result", "error")

    def __init__(self, item: Item, key: Hashable, size: int):
        self.item, self.key, self.size = item, key, size
        self.taken = False
        self.done = threading.Event()
        self.result: Result | None = None
        self.error: BaseException | None = None


class Batch(Generic[Item, Result]):
    """Run `run_many(items)` (one statement; a result per item, in order) for the items threads
    `submit` while others run; `run_one(item)` when the batch fails for a non-outage reason.
    Items of one `key` are never in the same statement (the statement would touch their rows
    twice): a later one waits for the next. A statement carries items of `size` (rows) up to
    `most` in all, or one item of any size. While the last take carried more than one item, a
    take first waits `linger` seconds for more."""

    def __init__(
        self,
        *,
        run_many: Callable[[list[Item]], Sequence[Result]],
        run_one: Callable[[Item], Result],
        key: Callable[[Item], Hashable],
        size: Callable[[Item], int] = lambda item: 1,
        width: int = 1,
        most: int = 200,
        linger: float = 0.0,
        on_fallback: Callable[[psycopg2.Error, int], object] = lambda error, items: None,
    ):
        self._run_many, self._run_one, self._key, self._size, self._most = run_many, run_one, key, size, most
        self._linger = max(0.0, linger)
        self._busy = False  # the last take carried more than one item
        self._on_fallback = on_fallback
        self._width = max(1, width)
        self._gate = threading.BoundedSemaphore(self._width)
        self._lock = threading.Lock()
        self._waiting: list[_Slot[Item, Result]] = []
        self.statements = 0  # takes: a batch, or an item alone
        self.largest = 0  # the most items one take carried
        self.fallbacks = 0  # batches that failed and ran item by item

    def waiting(self) -> int:
        """Items submitted and not yet taken."""
        with self._lock:
            return len(self._waiting)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Let no statement start until the block ends: what is submitted meanwhile waits, then
        goes as one batch (for tests and benchmarks)."""
        for _ in range(self._width):
            self._gate.acquire()
        try:
            yield
        finally:
            for _ in range(self._width):
                self._gate.release()

    def submit(self, item: Item) -> Result:
        slot: _Slot[Item, Result] = _Slot(item, self._key(item), self._size(item))
        with self._lock:
            self._waiting.append(slot)
        # Until a thread takes the item, its own thread passes the gate and takes what is waiting:
        # its item, unless an earlier thread took it, or left it for the next statement (a second
        # item of one key, or one beyond `most`). A thread that takes items finishes them, so an
        # item taken only waits for its result; no item waits for a thread that has gone.
        # Under load the thread first waits at the gate for the threads arriving behind it (not
        # when a statement's worth is waiting already). With several gates, threads that arrive
        # meanwhile may wait too: one whose item was taken while it waited takes nothing more.
        while not slot.taken:
            with self._gate:
                if self._busy and self._linger and not slot.taken and not self._full():
                    time.sleep(self._linger)
                    if slot.taken:
                        break
                taken = self._take()
                if taken:
                    self._run(taken)
        slot.done.wait()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _full(self) -> bool:
        """Whether the items waiting fill a statement (`most` rows) already."""
        with self._lock:
            return sum(slot.size for slot in self._waiting) >= self._most

    def _take(self) -> list[_Slot[Item, Result]]:
        with self._lock:
            taken: list[_Slot[Item, Result]] = []
            keys: set[Hashable] = set()
            rest: list[_Slot[Item, Result]] = []
            room = self._most
            for slot in self._waiting:
                if slot.key not in keys and (slot.size <= room or not taken):
                    slot.taken = True
                    taken.append(slot)
                    keys.add(slot.key)
                    room -= slot.size
                else:
                    rest.append(slot)
            self._waiting = rest
            if taken:
                self.statements += 1
                self.largest = max(self.largest, len(taken))
                self._busy = len(taken) > 1
            return taken

    def _run(self, taken: list[_Slot[Item, Result]]) -> None:
        """Finish every slot of `taken`, whatever happens: their threads wait for nothing else."""
        if len(taken) == 1:
            self._alone(taken[0])
            return
        try:
            results = self._run_many([slot.item for slot in taken])
            if len(results) != len(taken):
                raise RuntimeError(f"{len(results)} results for {len(taken)} items")
        except psycopg2.Error as error:
            if outage(error):
                for slot in taken:
                    slot.error = error
                    slot.done.set()
                return
            # A value Postgres refuses, a lock or statement timeout, a deadlock with another
            # batch: each item alone, so only the one at fault fails.
            with self._lock:
                self.fallbacks += 1
            self._on_fallback(error, len(taken))
            for slot in taken:
                self._alone(slot)
            return
        except BaseException as error:  # a bug: every thread of the batch sees it
            for slot in taken:
                slot.error = error
                slot.done.set()
            return
        for slot, result in zip(taken, results, strict=True):
            slot.result = result
            slot.done.set()

    def _alone(self, slot: _Slot[Item, Result]) -> None:
        try:
            slot.result = self._run_one(slot.item)
        except BaseException as error:  # the thread that submitted it raises it
            slot.error = error
        slot.done.set()
