"""The packaged runbook corpus and labelled incidents: parsing, coverage, chunking, splits."""

import itertools
from collections import Counter

import pytest

from x0tta6bl4.corpus import (
    NUM_REGIONS,
    IncidentError,
    Runbook,
    RunbookError,
    chunk_runbook,
    load_incidents,
    load_runbooks,
    parse_runbook,
)
from x0tta6bl4.errors import ConfigError
from x0tta6bl4.mesh.faults import ACTIONS, FAULT_TYPES, HEALED_BY
from x0tta6bl4.telemetry.frame import FEATURES

GOOD_FRONT = """---
id: demo
title: Demo runbook
fault_type: congestion
action: rate_limit
preconditions: [ingress identified]
severity: high
tags: [demo]
---
"""
GOOD = GOOD_FRONT + "## Summary\n\nSome text.\n"


@pytest.fixture(scope="module")
def runbooks():
    return load_runbooks()


@pytest.fixture(scope="module")
def incidents():
    return load_incidents()


def test_every_packaged_runbook_parses_with_sane_metadata(runbooks):
    assert 10 <= len(runbooks) <= 14
    assert len({rb.id for rb in runbooks}) == len(runbooks)
    for rb in runbooks:
        assert isinstance(rb, Runbook)
        assert 300 <= len(rb.body.split()) <= 700, rb.id
        assert rb.preconditions and all(rb.preconditions)
        assert rb.severity in {"low", "medium", "high", "critical"}
        assert rb.path.endswith(".md")
        assert {"Symptoms", "When to use it"} & rb.sections().keys(), rb.id


def test_every_fault_type_and_every_action_has_a_runbook(runbooks):
    by_fault = {rb.fault_type for rb in runbooks}
    assert set(FAULT_TYPES) <= by_fault
    action_runbooks = {rb.action for rb in runbooks if rb.fault_type is None}
    assert action_runbooks == set(ACTIONS)
    for rb in runbooks:
        if rb.fault_type is not None:
            # A fault runbook recommends the action that really heals the fault.
            assert rb.action == HEALED_BY[rb.fault_type], rb.id


def test_fault_runbooks_describe_symptoms_in_the_platforms_feature_names(runbooks):
    for rb in runbooks:
        if rb.fault_type is not None:
            symptoms = rb.sections()["Symptoms"]
            assert sum(f in symptoms for f in FEATURES) >= 3, rb.id


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("## Summary\n\nno front matter\n", "must start with YAML front matter"),
        ("---\nid: [unclosed\n---\nbody\n", "not valid YAML"),
        ("---\n- a\n- b\n---\nbody\n", "must be a YAML mapping"),
        (GOOD.replace("action: rate_limit\n", ""), "lacks action"),
        (GOOD.replace("fault_type: congestion", "fault_type: meltdown"), "unknown fault type 'meltdown'"),
        (GOOD.replace("action: rate_limit", "action: pray"), "unknown action 'pray'"),
        (GOOD.replace("severity: high", "severity: dire"), "severity 'dire'"),
        (
            GOOD.replace("preconditions: [ingress identified]", "preconditions: yes"),
            "preconditions must be a list",
        ),
        (GOOD.replace("id: demo", "id: Demo Runbook"), "id 'Demo Runbook'"),
        (GOOD.replace("tags: [demo]", "tags: [demo]\nowner: me"), "unknown front matter keys owner"),
        (GOOD_FRONT, "no body"),
    ],
)
def test_bad_front_matter_raises_runbook_error_with_a_clear_message(text, message):
    with pytest.raises(RunbookError, match=message) as info:
        parse_runbook(text, "rb/bad.md")
    assert "rb/bad.md" in str(info.value)
    assert isinstance(info.value, ConfigError)


def test_action_runbook_with_null_fault_type_parses():
    rb = parse_runbook(GOOD.replace("fault_type: congestion", "fault_type: null"), "x.md")
    assert rb.fault_type is None and rb.action == "rate_limit" and rb.preconditions == ("ingress identified",)


def test_load_runbooks_refuses_duplicates_and_empty_directories(tmp_path):
    with pytest.raises(RunbookError, match="no runbooks"):
        load_runbooks(tmp_path)
    (tmp_path / "a.md").write_text(GOOD)
    (tmp_path / "b.md").write_text(GOOD)
    with pytest.raises(RunbookError, match="duplicate runbook id 'demo'"):
        load_runbooks(tmp_path)
    (tmp_path / "b.md").unlink()
    assert [rb.id for rb in load_runbooks(str(tmp_path))] == ["demo"]
    with pytest.raises(RunbookError, match="does not exist"):
        load_runbooks(tmp_path / "missing")


@pytest.mark.parametrize(("max_words", "overlap"), [(120, 20), (60, 10), (40, 0)])
def test_chunks_respect_bounds_and_cover_every_word(runbooks, max_words, overlap):
    for rb in runbooks:
        chunks = chunk_runbook(rb, max_words=max_words, overlap_words=overlap)
        assert [c.index for c in chunks] == list(range(len(chunks)))
        assert all(len(c.text.split()) <= max_words for c in chunks)
        assert all(c.runbook_id == rb.id and c.action == rb.action for c in chunks)
        assert all(c.fault_type == rb.fault_type and c.text.startswith(rb.title) for c in chunks)
        covered = {w for c in chunks for w in c.text.split()}
        body_words = {w for line in rb.body.splitlines() if not line.startswith("#") for w in line.split()}
        assert body_words <= covered
        assert {c.heading for c in chunks} == set(rb.sections())


def test_long_paragraphs_are_split_into_overlapping_windows():
    words = [f"w{i}" for i in range(100)]
    rb = parse_runbook(GOOD_FRONT + "## Steps\n\n" + " ".join(words) + "\n", "x.md")
    chunks = chunk_runbook(rb, max_words=30, overlap_words=5)
    bodies = [c.text.split("\n", 1)[1].split() for c in chunks]
    assert all(len(c.text.split()) <= 30 for c in chunks)
    for prev, nxt in itertools.pairwise(bodies):
        assert prev[-5:] == nxt[:5]
    assert {w for b in bodies for w in b} == set(words)


def test_chunking_rejects_impossible_bounds(runbooks):
    with pytest.raises(ConfigError, match="overlap_words"):
        chunk_runbook(runbooks[0], max_words=12, overlap_words=10)
    with pytest.raises(ConfigError):
        chunk_runbook(runbooks[0], max_words=0)


def test_incidents_have_enough_test_items_and_cover_every_fault_in_every_split_and_region(incidents):
    assert len(incidents) >= 240
    assert len({i.id for i in incidents}) == len(incidents)
    assert len({i.text for i in incidents}) == len(incidents)
    test = [i for i in incidents if i.split == "test"]
    assert len(test) >= 100
    assert 0.5 <= 1 - len(test) / len(incidents) <= 0.7
    cells = Counter((i.split, i.region, i.fault_type) for i in incidents)
    for split in ("train", "test"):
        for region in range(NUM_REGIONS):
            for fault in FAULT_TYPES:
                assert cells[(split, region, fault)] >= 3, (split, region, fault)


def test_incident_filters_and_region_styles_differ(incidents):
    assert load_incidents("test", 2) == [i for i in incidents if i.split == "test" and i.region == 2]
    mean_words = {
        r: sum(len(i.text.split()) for i in incidents if i.region == r)
        / sum(i.region == r for i in incidents)
        for r in range(NUM_REGIONS)
    }
    # Region 0 writes terse alerts, region 1 chatty tickets: the federated clients are not IID.
    assert mean_words[1] > 2 * mean_words[0]


def test_incident_errors_are_typed(tmp_path):
    with pytest.raises(IncidentError, match="split must be one of"):
        load_incidents("validation")
    with pytest.raises(IncidentError, match="region must be"):
        load_incidents(region=7)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "t", "fault_type": "gremlins", "region": 0, "split": "train"}\n')
    with pytest.raises(IncidentError, match="unknown fault type 'gremlins'"):
        load_incidents(path=bad)
    bad.write_text("{not json\n")
    with pytest.raises(IncidentError, match=r"bad\.jsonl:1: not valid JSON"):
        load_incidents(path=bad)
