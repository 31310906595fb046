"""x0tta6bl4.connect.sigterm_interrupts: TERM takes Ctrl-C's path inside the block, and only there."""

import os
import signal
import threading

import pytest

from x0tta6bl4.connect import sigterm_interrupts

pytestmark = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signal handlers need the main thread"
)


def test_a_term_inside_the_block_raises_keyboard_interrupt_and_the_old_handler_comes_back() -> None:
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with pytest.raises(KeyboardInterrupt), sigterm_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # after the block: the handler from before
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_off_the_main_thread_the_block_changes_nothing() -> None:
    before = signal.getsignal(signal.SIGTERM)
    entered: list[bool] = []

    def enter() -> None:
        with sigterm_interrupts():
            entered.append(signal.getsignal(signal.SIGTERM) is before)

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    assert entered == [True]
