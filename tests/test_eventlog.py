"""One contract for every event-log backend (SQLite always; MongoDB with EMBER_TEST_MONGO_URL)."""

import asyncio
import os
import subprocess
import sys
import uuid

import pytest

from ember.envelope import Envelope
from ember.eventlog import open_eventlog
from ember.testing import assert_eventually

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["sqlite", "mongo"])
async def eventlog(request, tmp_path):
    if request.param == "sqlite":
        log = open_eventlog(f"sqlite:///{tmp_path / 'events.sqlite3'}")
    else:
        url = os.environ.get("EMBER_TEST_MONGO_URL")
        if not url:
            pytest.skip("EMBER_TEST_MONGO_URL is not set: no MongoDB server to run the contract against")
        log = open_eventlog(url.rstrip("/") + f"/ember_test_{uuid.uuid4().hex[:8]}")
    async with log:
        yield log


def event(i: int, subject: str = "job-1", type_: str = "JobSubmitted") -> Envelope:
    return Envelope(id=f"ev-{i}", type=type_, subject=subject, source="test", data={"i": i})


async def test_append_assigns_increasing_seq_and_reads_in_order(eventlog):
    stored = [await eventlog.append(event(i)) for i in range(5)]
    assert [s.seq for s in stored] == sorted({s.seq for s in stored})
    assert [e.envelope.data["i"] for e in await eventlog.read()] == [0, 1, 2, 3, 4]
    assert [e.envelope.data["i"] for e in await eventlog.read(after=stored[2].seq)] == [3, 4]
    assert await eventlog.last_seq() == stored[-1].seq
    assert stored[0].aggregate == "job"


async def test_append_is_idempotent_on_event_id(eventlog):
    first = await eventlog.append(event(1))
    again = await eventlog.append(event(1))
    assert again.duplicate and again.seq == first.seq
    assert len(await eventlog.read()) == 1


async def test_read_by_subject_and_get(eventlog):
    await eventlog.append(event(1, "job-a"))
    await eventlog.append(event(2, "job-b"))
    await eventlog.append(event(3, "job-a"))
    assert [e.id for e in await eventlog.read(subject="job-a")] == ["ev-1", "ev-3"]
    assert (await eventlog.get("ev-2")).subject == "job-b"
    assert await eventlog.get("missing") is None
    assert [e.id for e in await eventlog.read(limit=2)] == ["ev-1", "ev-2"]


async def test_concurrent_appends_lose_nothing(eventlog):
    await asyncio.gather(*(eventlog.append(event(i)) for i in range(200)))
    events = await eventlog.read()
    assert sorted(e.envelope.data["i"] for e in events) == list(range(200))
    assert len({e.seq for e in events}) == 200


def test_sqlite_survives_kill_of_a_writer_process(tmp_path):
    """Acknowledged appends survive SIGKILL of the writer; a second process sees all of them."""
    db = tmp_path / "events.sqlite3"
    code = (
        "import asyncio, os, signal, sys\n"
        "from ember.eventlog import open_eventlog\n"
        "from ember.envelope import Envelope\n"
        "async def main():\n"
        f"    log = open_eventlog('sqlite:///{db}')\n"
        "    for i in range(300):\n"
        "        await log.append(Envelope(id=f'e{i}', type='JobSubmitted', subject='j', data={}))\n"
        "        print(i, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9
    acknowledged = len(proc.stdout.split())

    async def count():
        async with open_eventlog(f"sqlite:///{db}") as log:
            return len(await log.read())

    assert asyncio.run(count()) == acknowledged == 300


async def test_sqlite_append_waits_for_another_writer_instead_of_failing(tmp_path):
    """An append while another connection holds the write lock waits for it (it is never lost)."""
    import sqlite3

    db = tmp_path / "events.sqlite3"
    async with open_eventlog(f"sqlite:///{db}") as log:
        await log.append(event(0))
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another service mid-write
        append = asyncio.ensure_future(log.append(event(1)))
        # the append found the database busy and now waits in a worker thread holding the log's lock
        await assert_eventually(log._lock.locked, timeout=10, message="the append never waited for the other writer")
        assert not append.done()
        other.execute("COMMIT")
        other.close()
        stored = await asyncio.wait_for(append, 10)
        assert not stored.duplicate
        assert [e.id for e in await log.read()] == ["ev-0", "ev-1"]


def _open_log_at_barrier(path, barrier, results):
    barrier.wait()
    try:
        open_eventlog(f"sqlite:///{path}")
        results.put("ok")
    except Exception as exc:  # reported to the test, which names it
        results.put(f"{type(exc).__name__}: {exc}")


def test_sqlite_services_opening_a_new_log_together_all_start(tmp_path):
    """Manager, builder and notifier open a new home's log at the same moment: none may fail.
    (Switching a new file to WAL answered "database is locked" at once, 1 start in 4 with 4 openers.)"""
    import multiprocessing

    import ember.eventlog.sqlite  # noqa: F401  (imported before the fork, so the openers meet at once)

    ctx = multiprocessing.get_context("fork")
    openers, failures = 6, []
    for attempt in range(15):
        path = tmp_path / f"events-{attempt}.sqlite3"
        barrier, results = ctx.Barrier(openers), ctx.Queue()
        procs = [ctx.Process(target=_open_log_at_barrier, args=(path, barrier, results)) for _ in range(openers)]
        for proc in procs:
            proc.start()
        outcomes = [results.get(timeout=40) for _ in procs]
        for proc in procs:
            proc.join(10)
        failures += [o for o in outcomes if o != "ok"]
    assert failures == []
