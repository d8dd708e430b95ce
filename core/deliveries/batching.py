"""Many threads' statements of one kind run as one: the sender's claims and outcomes.

Each of the sender's threads claims its email and records its outcome with a statement of its
own, so at a high rate Postgres runs two commits per email, and most of its time is the
per-statement work around the rows (a commit, a WAL flush, the round trip). A `Batch` lets the
threads that arrive while `width` statements of the kind are running wait, then runs all of
them as one statement, one commit: the first thread through the gate takes everything waiting
and runs it, and each thread gets its own item's result. Nothing waits on purpose, so one
thread alone runs its statement at once, as before; batches grow only when threads queue.

An item's result is the batched statement's answer for it. When the batched statement fails
for a reason that is not an outage (a bug, a value Postgres refuses, a deadlock with another
batch), every item is run again alone, so one bad item fails only its own thread; an outage
fails them all, and each thread handles it as it did its own statement's.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Generic, TypeVar

import psycopg2

Item = TypeVar("Item")
Result = TypeVar("Result")

OUTAGES = (psycopg2.OperationalError, psycopg2.InterfaceError)


class _Slot(Generic[Item, Result]):
    __slots__ = ("item", "taken", "done", "result", "error")

    def __init__(self, item: Item):
        self.item = item
        self.taken = False
        self.done = threading.Event()
        self.result: Result | None = None
        self.error: BaseException | None = None


class Batch(Generic[Item, Result]):
    """Run `run_many(items)` (one statement; a result per item, in order) for the items threads
    `submit` while others run; `run_one(item)` when the batch fails for a non-outage reason.
    Items of one `key` are never in the same statement (the statement would touch their rows
    twice): a later one waits for the next. A statement carries items of `size` (rows) up to
    `most` in all, or one item of any size."""

    def __init__(
        self,
        *,
        run_many: Callable[[list[Item]], Sequence[Result]],
        run_one: Callable[[Item], Result],
        key: Callable[[Item], Hashable],
        size: Callable[[Item], int] = lambda item: 1,
        width: int = 1,
        most: int = 200,
    ):
        self._run_many, self._run_one, self._key, self._size, self._most = run_many, run_one, key, size, most
        self._width = max(1, width)
        self._gate = threading.BoundedSemaphore(self._width)
        self._lock = threading.Lock()
        self._waiting: list[_Slot[Item, Result]] = []
        self.statements = 0  # statements run (batches, and items run alone)
        self.largest = 0  # the most items one statement carried

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
        slot: _Slot[Item, Result] = _Slot(item)
        with self._lock:
            self._waiting.append(slot)
        # Until a thread takes the item, its own thread passes the gate and takes what is waiting:
        # its item, unless an earlier thread took it, or left it for the next statement (a second
        # item of one key, or one beyond `most`). A thread that takes items finishes them, so an
        # item taken only waits for its result; no item waits for a thread that has gone.
        while not slot.taken:
            with self._gate:
                taken = self._take()
                if taken:
                    self._run(taken)
        slot.done.wait()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _take(self) -> list[_Slot[Item, Result]]:
        with self._lock:
            taken: list[_Slot[Item, Result]] = []
            keys: set[Hashable] = set()
            rest: list[_Slot[Item, Result]] = []
            room = self._most
            for slot in self._waiting:
                key, size = self._key(slot.item), self._size(slot.item)
                if key not in keys and (size <= room or not taken):
                    slot.taken = True
                    taken.append(slot)
                    keys.add(key)
                    room -= size
                else:
                    rest.append(slot)
            self._waiting = rest
            if taken:
                self.statements += 1
                self.largest = max(self.largest, len(taken))
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
        except psycopg2.extensions.TransactionRollbackError:
            pass  # a deadlock with another batch: each item alone cannot deadlock with it again
        except OUTAGES as error:
            for slot in taken:
                slot.error = error
                slot.done.set()
            return
        except BaseException:
            pass  # a bug, or a value Postgres refuses: each item alone, so it fails only its own
        else:
            for slot, result in zip(taken, results, strict=True):
                slot.result = result
                slot.done.set()
            return
        for slot in taken:
            self._alone(slot)

    def _alone(self, slot: _Slot[Item, Result]) -> None:
        try:
            slot.result = self._run_one(slot.item)
        except BaseException as error:  # the thread that submitted it raises it
            slot.error = error
        slot.done.set()
