"""``SIGUSR1`` while a run is inside :func:`aqnet.train.requeue.usr1_flag`."""

from __future__ import annotations

import os
import signal
import threading

from aqnet.train.requeue import REQUEUE_EXIT_CODE, usr1_flag


def test_sigusr1_sets_the_flag_and_the_previous_handler_comes_back() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    with usr1_flag() as flag:
        assert not flag.is_set()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert flag.wait(5)
    assert signal.getsignal(signal.SIGUSR1) == before
    assert REQUEUE_EXIT_CODE == 75


def test_outside_the_main_thread_the_flag_is_never_set() -> None:
    seen: list[object] = []

    def run() -> None:
        with usr1_flag() as flag:
            seen.append(signal.getsignal(signal.SIGUSR1))
            seen.append(flag.is_set())

    before = signal.getsignal(signal.SIGUSR1)
    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    assert seen == [before, False]
