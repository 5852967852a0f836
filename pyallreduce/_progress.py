"""The progress thread behind a communicator's asynchronous calls.

Collectives on one communicator must start in the same order on every rank.
Asynchronous calls are therefore queued in the order they are made and run one
after another on a single thread per communicator; the C++ calls release the
GIL, so the caller (for DDP, the backward pass) goes on meanwhile. A
synchronous call made while asynchronous ones are still queued joins the queue
too, so it cannot overtake them.

At interpreter exit, every progress thread first finishes the calls queued on
it (all ranks exit after the same calls, so they complete together).
"""

from __future__ import annotations

import atexit
import collections
import queue
import threading
import weakref
from concurrent.futures import Future
from typing import Any, Callable


class ProgressThread:
    """Runs submitted calls in order on one daemon thread, started on first use."""

    def __init__(self, name: str, before_first_call: Callable[[], None] | None = None):
        self._name = name
        self._before_first_call = before_first_call
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._unfinished = 0  # submitted and not yet returned
        # What each job in _jobs is, in the same order (see submit), or None.
        self._waiting: collections.deque[Any] = collections.deque()

    def submit(self, call: Callable[[], Any], queued_as: Any = None) -> Future:
        """Queues ``call``; the future gets its return value or its exception.
        ``queued_as`` is what :meth:`queued` says of it until it starts.

        Submitted from the progress thread itself (by a callback of a
        finished call's future, such as torch's PowerSGD hook, which waits
        inside one for a call it makes), ``call`` runs at once and the future
        is done on return: queued, it would wait behind the callback that
        waits for it. Every rank makes such a call at the same point of its
        sequence, as its callback runs when the call before it ends."""
        future: Future = Future()
        if threading.current_thread() is self._thread:
            try:
                future.set_result(call())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
                future.set_exception(exc)
            return future
        with self._lock:
            if self._thread is None:
                if self._before_first_call is not None:
                    self._before_first_call()
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
                _started.add(self)
            self._unfinished += 1
            # Under the lock, so that entries and jobs keep one order.
            self._waiting.append(queued_as)
            self._jobs.put((call, future))
        return future

    def queued(self) -> list[Any]:
        """What the calls submitted and not yet started were queued as, in order."""
        with self._lock:
            return [entry for entry in self._waiting if entry is not None]

    def run_in_order(self, call: Callable[..., Any], *args: Any, queued_as: Callable[..., Any] | None = None) -> Any:
        """Runs ``call(*args)`` after everything submitted so far and returns
        its result: at once when nothing is queued (or when called from the
        progress thread itself, by a future's callback), else through the
        queue, waiting for it, and meanwhile listed by :meth:`queued` as
        ``queued_as(*args)``. Arguments rather than closures keep the common,
        direct case cheap: small allreduces take microseconds."""
        # Unlocked read: a thread that submitted earlier calls has already
        # counted them, so it cannot see 0 before they have run.
        if self._unfinished == 0 or threading.current_thread() is self._thread:
            return call(*args)
        entry = queued_as(*args) if queued_as is not None else None
        return self.submit(lambda: call(*args), entry).result()

    def stop(self) -> None:
        """Lets queued calls finish, then ends the thread."""
        thread = self.close()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def close(self) -> threading.Thread | None:
        """Lets queued calls finish and the thread end, without waiting for
        it (safe from the thread itself, or from a finalizer); returns it."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
        return thread

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            call, future = job
            with self._lock:
                self._waiting.popleft()
            # The job's closure holds its communicator: drop it before
            # waiting for the next, so that a communicator nobody holds any
            # more can be collected (which ends this thread).
            del job
            try:
                result = call()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
                del call
                self._finished()
                future.set_exception(exc)
                del exc
            else:
                del call
                self._finished()
                future.set_result(result)
                del result
            del future

    def _finished(self) -> None:
        # Counted before the future completes, so that a caller woken by it sees
        # the thread idle and may call synchronously.
        with self._lock:
            self._unfinished -= 1


_started: weakref.WeakSet[ProgressThread] = weakref.WeakSet()


@atexit.register
def _finish_queued_calls() -> None:
    """Left to the interpreter's shutdown, a daemon thread inside a C++ call
    is killed when it takes the GIL back, which aborts the process
    ("terminate called without an active exception") with calls unfinished.
    It runs while MPI is still initialized: mpi4py finalizes MPI after the
    atexit handlers."""
    for progress in list(_started):
        progress.stop()
