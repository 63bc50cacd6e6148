"""A stopping worker leaves RQ's command listener at once: redis-py joins that thread at teardown."""

from __future__ import annotations

import time

from worker import rqside
from worker.main import BatchWorker


def test_the_command_listener_stops_within_a_second(redis_db):
    # The race (the thread sees the UNSUBSCRIBE before the stop, then waits for a subscription
    # for a whole poll) hit about one stop in five: ten tries catch it nine times in ten.
    for i in range(10):
        worker = BatchWorker([rqside.queue_for(redis_db, "q")], connection=redis_db, serializer=rqside.SERIALIZER,
                             name=f"listener-{i}")
        worker.subscribe()
        started = time.monotonic()
        worker.unsubscribe()
        assert time.monotonic() - started < 3, f"stop {i} took {time.monotonic() - started:.1f}s"
