"""Jobs racing for one run dir's lease, each in its own process (tests/test_lease.py).

A module of its own so that processes started with "spawn" (a fresh interpreter, no copy
of the test process's storage clients) can import `contend` by name.
"""

from __future__ import annotations

import multiprocessing

from disttrain.lease import LeaseHeld, acquire, this_process
from disttrain.storage import RunDir

LEASE_SECONDS = 60.0


def contend(job: str, urls: list[str], barrier, outcomes) -> None:
    """For each run dir in turn: wait until every contender is ready, then take the lease
    as `job`. Reports (url, job, "won") or (url, job, "held by <job>")."""
    for url in urls:
        run_dir = RunDir(url)  # opened before the barrier: the race is the acquire alone
        barrier.wait(timeout=60)
        try:
            acquire(run_dir, this_process(job), LEASE_SECONDS, log=lambda _: None)
            outcomes.put((url, job, "won"))
        except LeaseHeld as exc:
            outcomes.put((url, job, f"held by {exc.holder.job}"))


def race(jobs: list[str], urls: list[str]) -> list[tuple[str, str, str]]:
    """Every job in its own process, all acquiring each run dir of `urls` at the same
    instant; every outcome, as `contend` reports them."""
    context = multiprocessing.get_context("spawn")
    barrier, outcomes = context.Barrier(len(jobs)), context.Queue()
    processes = [
        context.Process(target=contend, args=(job, urls, barrier, outcomes)) for job in jobs
    ]
    for process in processes:
        process.start()
    found = [outcomes.get(timeout=120) for _ in range(len(jobs) * len(urls))]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0, f"contender exited {process.exitcode}"
    return found
