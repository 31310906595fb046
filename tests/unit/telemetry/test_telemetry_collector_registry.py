"""Each shipped program is its C file plus one collector class: the collectors' registry is the program list."""

from __future__ import annotations

import pytest

from x0tta6bl4.telemetry.ebpf import COLLECTORS, PROGRAMS, ProgramCollector, bpf_dir


def test_programs_are_the_registered_collectors_in_load_order() -> None:
    assert PROGRAMS == ("tcp_retransmit", "tcp_state", "tcp_rtt", "skb_drops", "runqlat", "net_bytes")
    assert tuple(COLLECTORS) == PROGRAMS
    assert all(COLLECTORS[name].program == name for name in PROGRAMS)


def test_every_registered_program_has_its_c_source() -> None:
    assert all((bpf_dir() / f"{name}.c").is_file() for name in PROGRAMS)


def test_a_second_collector_for_a_program_is_refused() -> None:
    with pytest.raises(TypeError, match="'tcp_rtt' already has a collector: TcpRttCollector"):

        class Again(ProgramCollector):  # pragma: no cover - the class statement itself fails
            program = "tcp_rtt"

    assert COLLECTORS["tcp_rtt"].__name__ == "TcpRttCollector"


def test_a_subclass_that_names_no_program_does_not_register() -> None:
    class Generic(ProgramCollector):
        pass

    assert Generic not in COLLECTORS.values()
