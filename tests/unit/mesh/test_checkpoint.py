"""Shard checkpoints: exact round trips without pickle, torn or hostile files refused, rewinding, the journal."""

import dataclasses
import io
import pickle

import numpy as np
import pytest

from x0tta6bl4.mesh.checkpoint import CheckpointError, decode_state, encode_state
from x0tta6bl4.mesh.faults import Action, random_schedule
from x0tta6bl4.mesh.journal import ActionJournal, read_journal
from x0tta6bl4.mesh.pipeline import LocalMesh
from x0tta6bl4.mesh.shard import MeshSpec, ShardCore, checkpoint_file, checkpoint_ticks
from x0tta6bl4.mesh.topology import TopologySpec

TOPO = TopologySpec(300, 3, seed=4)


def _spec(tmp_path, every=5):
    topology = TOPO.build()
    faults = tuple(random_schedule(topology, 40, 4, faults_per_1000_ticks=200))
    return topology, MeshSpec(
        topology=TOPO, seed=4, faults=faults, checkpoint_dir=str(tmp_path), checkpoint_every_ticks=every
    )


def _frames(mesh, ticks, actions=None):
    out = []
    for _ in range(ticks):
        tick = mesh.tick + 1
        out.append(mesh.frame(mesh.step((actions or {}).get(tick, ()))))
    return out


def test_a_shard_state_survives_the_round_trip_exactly(tmp_path):
    topology, spec = _spec(tmp_path)
    mesh = LocalMesh(topology, spec)
    _frames(mesh, 12)
    core = mesh.cores[1]
    state = {"sim": core.sim.dynamic_state(), "control": core.control.state(), "x": (1.5, b"\x00k", None)}
    back = decode_state(encode_state(state))
    assert back["x"] == (1.5, b"\x00k", None)
    assert back["sim"]["rng"] == state["sim"]["rng"]
    for key, value in state["control"].items():
        assert _same(value, back["control"][key]), key


def _same(a, b):
    """Deep equality with arrays compared by value and dtype."""
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(
            _same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
        )
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def test_a_rewound_shard_continues_bit_for_bit(tmp_path):
    topology, spec = _spec(tmp_path)
    actions = {7: (Action("restart_node", spec.faults[0].node),)}
    mesh = LocalMesh(topology, spec)
    reference = _frames(mesh, 20, actions)
    mesh.close()
    assert checkpoint_ticks(tmp_path, 0) == [14, 19]  # the two newest of ticks 4, 9, 14, 19
    core = ShardCore(topology, 0, spec)  # restores the newest (tick 19)
    assert core.restored_tick == 19
    core.rewind(14)
    assert core.tick == 14
    # Rebuild the others from the same checkpoint and step on: frames equal the reference's.
    cores = [ShardCore(topology, r, spec) for r in range(topology.num_regions)]
    messages = [c.rewind(14) for c in cores]
    for tick in range(15, 20):
        outs = [c.step(tick, (), [m for q, m in enumerate(messages) if q != r]) for r, c in enumerate(cores)]
        messages = [o[1] for o in outs]
        assert np.array_equal(outs[0][0].features, reference[tick].features[: outs[0][0].features.shape[0]])


def test_a_torn_newest_checkpoint_falls_back_to_the_one_before(tmp_path):
    topology, spec = _spec(tmp_path)
    mesh = LocalMesh(topology, spec)
    _frames(mesh, 20)
    mesh.close()
    checkpoint_file(tmp_path, 2, 19).write_bytes(checkpoint_file(tmp_path, 2, 19).read_bytes()[:100])
    core = ShardCore(topology, 2, spec)
    assert core.restored_tick == 14
    assert "tick 19 skipped" in core.checkpoint_errors[0]


def test_a_checkpoint_holding_a_pickle_is_refused_and_runs_nothing(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('ran code')",))

    buf = io.BytesIO()
    np.savez(
        buf, __structure__=np.frombuffer(b'{"nd": "a0"}', dtype=np.uint8), a0=np.array([Boom()], dtype=object)
    )
    with pytest.raises(CheckpointError):
        decode_state(buf.getvalue())
    with pytest.raises(CheckpointError):
        decode_state(pickle.dumps({"sim": 1}))
    with pytest.raises(CheckpointError):
        encode_state({"obj": np.array([object()], dtype=object)})


def test_a_checkpoint_naming_an_unknown_type_is_refused():
    buf = io.BytesIO()
    structure = b'{"dc": "Popen", "fields": {"args": "sh"}}'
    np.savez(buf, __structure__=np.frombuffer(structure, dtype=np.uint8))
    with pytest.raises(CheckpointError, match="unknown type 'Popen'"):
        decode_state(buf.getvalue())


def test_the_journal_cuts_a_torn_line_and_counts_a_replayed_tick_once(tmp_path):
    path = tmp_path / "actions.jsonl"
    journal = ActionJournal(path)
    a, b = Action("restart_node", 3, tick=5), Action("rate_limit", 4, tick=9)
    journal.append(5, (a,))
    journal.append(5, (a,))  # a replay writes nothing new
    journal.append(6, ())
    with path.open("a") as fh:
        fh.write('{"tick": 9, "acti')  # the driver died mid-append
    journal = ActionJournal(path)
    journal.append(9, (b,))
    assert path.read_text().count("\n") == 2
    assert read_journal(path) == {5: (a,), 9: (b,)}
