"""Rates measured in several processes at once, as a baseline of one single-threaded process per core."""

from __future__ import annotations

import multiprocessing


def summed_rate(target, per_process: list[tuple]) -> float:
    """Starts target(*args, queue) in a fresh process for each args tuple, all at once; sums the rates they put."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=target, args=(*args, queue)) for args in per_process]
    for w in workers:
        w.start()
    rates = [queue.get() for _ in workers]
    for w in workers:
        w.join()
    return sum(rates)
