"""Threads for store work, with results handed back to the event loop in batches.

A fleet's devices each send their SQLite work (signing and committing readings, sealing, peer
headers, serving pulls) off the event loop, about once a second each: thousands of small jobs a
second in one process. ``loop.run_in_executor`` costs the loop, per job, a
``concurrent.futures.Future`` with its condition variable, a chained asyncio future and a wake-up
through the loop's self-pipe. ``StoreThreads.run`` queues ``(fn, args, asyncio future)`` on a
plain queue instead; a worker that finishes a job appends its outcome to a list and wakes the
loop only if the list was empty, and the loop then settles every future of the list in one go.
Under load, one wake-up settles tens of jobs.

Jobs run in no particular order across threads; callers that need an order (one device's store
is used by one thread at a time) serialize their own jobs (``DeviceContext.run_store``).

Group commit (``group``: a ``ledger.groupsync.GroupSync`` the stores were opened with). A job
whose store made a durable commit (``GroupSync.take_noted`` on its worker thread) is not handed
back yet: it waits for the sync thread, which runs one group sync for every such job finished
by then (while a sync runs, the next jobs gather for the one after) and only then hands them
back, or fails them all with the sync's ``StoreError``. So a result still means "durable", and
a thousand commits a second cost tens of syncs, not a thousand fsyncs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ledger.groupsync import GroupSync

T = TypeVar("T")

_Job = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]", asyncio.AbstractEventLoop]
_Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]


class StoreThreads(concurrent.futures.Executor):
    """``threads`` worker threads serving one event loop (``run``, from that loop); ``submit``
    (the plain Executor interface) from anywhere."""

    def __init__(
        self, threads: int = 4, name: str = "edgefleet-io", *, group: GroupSync | None = None
    ) -> None:
        if threads < 1:
            raise ValueError(f"store threads: expected at least 1, found {threads}")
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._done: list[_Outcome] = []
        self._done_lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"{name}-any")
        self._closed = False
        self.group = group
        self._unsynced: list[tuple[_Outcome, asyncio.AbstractEventLoop]] = []
        self._unsynced_cv = threading.Condition()
        self._workers_done = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(threads)
        ]
        for t in self._threads:
            t.start()
        self._syncer: threading.Thread | None = None
        if group is not None:
            self._syncer = threading.Thread(
                target=self._sync_loop, name=f"{name}-sync", daemon=True
            )
            self._syncer.start()

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn(*args)`` on a worker thread; the returned future settles on this loop."""
        if self._closed:
            raise RuntimeError("store threads: shut down")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._jobs.put((fn, args, fut, loop))
        return fut

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        """The plain Executor interface (off the hot path): a separate single thread (which
        syncs the group itself before it returns a job that made a durable commit)."""
        if self.group is None:
            return self._pool.submit(fn, *args, **kwargs)
        return self._pool.submit(self._synced, fn, *args, **kwargs)

    def _synced(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        assert self.group is not None
        try:
            return fn(*args, **kwargs)
        finally:
            if self.group.take_noted():
                self.group.sync()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if not self._closed:
            self._closed = True
            for _ in self._threads:
                self._jobs.put(None)
        if wait:
            for t in self._threads:
                t.join()
        with self._unsynced_cv:  # the sync thread ends once the workers' last jobs are synced
            self._workers_done = self._workers_done or wait
            self._unsynced_cv.notify()
        if wait and self._syncer is not None:
            self._syncer.join()
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)

    def _work(self) -> None:
        group = self.group
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args, fut, loop = job
            try:
                outcome: _Outcome = (fut, fn(*args), None)
            except BaseException as exc:  # handed to the awaiting task, like run_in_executor
                outcome = (fut, None, exc)
            if group is not None and group.take_noted():
                with self._unsynced_cv:
                    self._unsynced.append((outcome, loop))
                    self._unsynced_cv.notify()
            else:
                self._hand_back(outcome, loop)

    def _sync_loop(self) -> None:
        assert self.group is not None
        while True:
            with self._unsynced_cv:
                while not self._unsynced and not self._workers_done:
                    self._unsynced_cv.wait()
                if not self._unsynced:
                    return
                batch, self._unsynced = self._unsynced, []
            failure: BaseException | None = None
            try:
                self.group.sync()
            except BaseException as exc:  # every job of the batch learns it is not durable
                failure = exc
            for (fut, result, error), loop in batch:
                self._hand_back((fut, None, failure) if failure else (fut, result, error), loop)

    def _hand_back(self, outcome: _Outcome, loop: asyncio.AbstractEventLoop) -> None:
        with self._done_lock:
            self._done.append(outcome)
            first = len(self._done) == 1
        if first:
            try:
                loop.call_soon_threadsafe(self._settle)
            except RuntimeError:  # the loop is closed: nobody awaits these any more
                with self._done_lock:
                    self._done.clear()

    def _settle(self) -> None:
        with self._done_lock:
            done, self._done = self._done, []
        for fut, result, exc in done:
            if fut.cancelled():
                continue
            if exc is None:
                fut.set_result(result)
            else:
                fut.set_exception(exc)
