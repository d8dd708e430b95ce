"""core.deliveries.batching.Batch's linger: under load (the last statement carried more than one
item) a take waits for the threads arriving behind it; a thread alone never waits."""

import threading
import time

from core.deliveries.batching import Batch

LINGER = 0.5  # long beside the few milliseconds the threads take to arrive: the test cannot race it


def recording_batch(linger: float, *, width: int = 1, most: int = 200) -> tuple[Batch, list[list[str]]]:
    statements: list[list[str]] = []

    def run_many(items):
        statements.append(list(items))
        return [f"done {item}" for item in items]

    def run_one(item):
        statements.append([item])
        return f"done {item}"

    batch = Batch(run_many=run_many, run_one=run_one, key=lambda item: item, linger=linger, width=width, most=most)
    return batch, statements


def submit_all(batch: Batch, items: list[str], *, spacing: float = 0.0, at: list[float] | None = None) -> dict:
    """Each item on its own thread, `spacing` seconds apart (or at the times `at`, in seconds from
    now); returns each item's result."""
    results: dict[str, str] = {}
    start = time.monotonic()

    def run(item):
        results[item] = batch.submit(item)

    threads = []
    for index, item in enumerate(items):
        if at is not None:
            time.sleep(max(0.0, start + at[index] - time.monotonic()))
        threads.append(threading.Thread(target=run, args=(item,)))
        threads[-1].start()
        time.sleep(spacing)
    for thread in threads:
        thread.join(timeout=30)
    return results


def make_busy(batch: Batch, first: list[str]) -> None:
    """Two items taken together, as when threads queue: the batch is under load."""
    with batch.held():
        threads = [threading.Thread(target=batch.submit, args=(item,)) for item in first]
        for thread in threads:
            thread.start()
        while batch.waiting() < len(first):
            time.sleep(0.001)
    for thread in threads:
        thread.join(timeout=30)


def test_a_thread_alone_runs_its_statement_at_once():
    batch, statements = recording_batch(LINGER)
    started = time.monotonic()
    assert batch.submit("a") == "done a"
    assert batch.submit("b") == "done b"
    assert time.monotonic() - started < LINGER  # neither waited
    assert statements == [["a"], ["b"]]


def test_under_load_the_threads_arriving_during_the_linger_share_one_statement():
    batch, statements = recording_batch(LINGER)
    make_busy(batch, ["a", "b"])
    assert statements == [["a", "b"]]

    # c takes first and waits; d and e arrive while it waits and go in its statement.
    results = submit_all(batch, ["c", "d", "e"], spacing=0.05)

    assert results == {"c": "done c", "d": "done d", "e": "done e"}
    assert statements[1:] == [["c", "d", "e"]]
    assert (batch.statements, batch.largest) == (2, 3)


def test_a_statement_of_one_item_ends_the_load():
    batch, statements = recording_batch(LINGER)
    make_busy(batch, ["a", "b"])
    submit_all(batch, ["c"])  # waits, but nobody comes: a statement of one
    started = time.monotonic()
    assert batch.submit("d") == "done d"
    assert time.monotonic() - started < LINGER  # no longer under load: no wait
    assert statements == [["a", "b"], ["c"], ["d"]]


def test_without_a_linger_nothing_waits_even_under_load():
    batch, statements = recording_batch(0.0)
    make_busy(batch, ["a", "b"])
    started = time.monotonic()
    assert batch.submit("c") == "done c"
    assert time.monotonic() - started < LINGER
    assert statements == [["a", "b"], ["c"]]


def test_with_several_gates_a_thread_whose_item_was_taken_while_it_waited_takes_nothing_more():
    # Two gates: c waits, d arrives and waits too; c's statement takes both. f arrives after it and
    # before d's wait ends: d must leave f to f's own thread (which waits for g), not take it alone.
    batch, statements = recording_batch(2 * LINGER, width=2)
    make_busy(batch, ["a", "b"])
    results = submit_all(batch, ["c", "d", "f", "g"], at=[0.0, 0.8 * LINGER, 2.4 * LINGER, 3.2 * LINGER])
    assert results == {item: f"done {item}" for item in "cdfg"}
    assert statements == [["a", "b"], ["c", "d"], ["f", "g"]]


def test_no_wait_when_a_statement_s_worth_is_waiting_already():
    batch, statements = recording_batch(LINGER, most=2)
    make_busy(batch, ["a", "b"])
    started = time.monotonic()
    with batch.held():  # c and d both wait: together they fill a statement
        threads = [threading.Thread(target=batch.submit, args=(item,)) for item in ("c", "d")]
        for thread in threads:
            thread.start()
        while batch.waiting() < 2:
            time.sleep(0.001)
    for thread in threads:
        thread.join(timeout=30)
    assert time.monotonic() - started < LINGER
    assert statements == [["a", "b"], ["c", "d"]]
