"""The bisect command's own parts: its arguments, how a step's result is judged, and what it
writes."""

from __future__ import annotations

import pytest

from pinmatrix.bisect.run import _judge_result, parse_spec, release_notes_url, render_markdown
from pinmatrix.errors import UsageError
from pinmatrix.results import CellResult

GROUPS = ("imports", "exaone3.5", "lora-train")


def result(*checks):
    data = {"cell": {"id": "c", "hash": "h", "pins": {}}, "checks": list(checks)}
    return CellResult(path=None, data=data)  # type: ignore[arg-type]


def check(name, status, signature=None, **evidence):
    out = {"name": name, "status": status, "duration_s": 0.1, "evidence": evidence}
    if signature:
        out["error"] = {"type": "X", "message": f"msg {signature}", "signature": signature}
    return out


def test_spec_parsing_and_bad_ranges():
    spec = parse_spec(["transformers", "4.57.6..5.17.0", "unsloth=none"], ["exaone3.5.remote-code"])
    assert (spec.package, spec.good, spec.bad, spec.selectors) == (
        "transformers",
        "4.57.6",
        "5.17.0",
        ("unsloth=none",),
    )
    for bad in (
        ["transformers"],
        ["transformers", "4.57.6"],
        ["transformers", "4.57.6...5.1"],
        ["transformers", "4.57.6..x" + "9" * 5000],
        ["transformers", "..5.0"],
    ):
        with pytest.raises(UsageError):
            parse_spec(bad)


def test_a_step_is_bad_on_a_failed_named_check_and_good_when_they_pass():
    broken = result(
        check("imports", "pass"),
        check("exaone3.5.remote-code", "fail", "transformers-tied-weights-keys-list"),
        check("exaone3.5.llamafied", "pass"),
    )
    judged = _judge_result(broken, ["exaone3.5.remote-code"], GROUPS)
    assert judged.verdict == "bad" and "transformers-tied-weights-keys-list" in judged.detail
    assert _judge_result(broken, ["exaone3.5.llamafied"], GROUPS).verdict == "good"
    # a group name covers the checks it emits
    assert _judge_result(broken, ["exaone3.5"], GROUPS).verdict == "bad"
    assert _judge_result(broken, ["lora-train"], GROUPS).verdict == "infra"  # none of them ran


def test_one_break_among_several_is_bisected_by_its_signature():
    surface = check(
        "exaone3.5.surface",
        "fail",
        "transformers-tied-weights-keys-list",
        signatures=[
            "transformers-tied-weights-keys-list",
            "transformers-create-causal-mask-cache-position-removed",
        ],
    )
    older = check(
        "exaone3.5.surface",
        "fail",
        "transformers-tied-weights-keys-list",
        signatures=["transformers-tied-weights-keys-list"],
    )
    sig = "transformers-create-causal-mask-cache-position-removed"
    assert _judge_result(result(surface), ["exaone3.5.surface"], GROUPS, sig).verdict == "bad"
    judged = _judge_result(result(older), ["exaone3.5.surface"], GROUPS, sig)
    assert judged.verdict == "good" and "absent" in judged.detail
    assert (
        _judge_result(
            result(check("exaone3.5.surface", "pass")), ["exaone3.5.surface"], GROUPS, sig
        ).verdict
        == "good"
    )


def test_every_named_check_skipped_or_infra_is_not_judged():
    assert (
        _judge_result(
            result(check("exaone3.5.remote-code", "skip")), ["exaone3.5.remote-code"], GROUPS
        ).verdict
        == "infra"
    )
    assert (
        _judge_result(
            result(check("exaone3.5.remote-code", "infra")), ["exaone3.5.remote-code"], GROUPS
        ).verdict
        == "infra"
    )


def test_release_notes_links():
    assert (
        release_notes_url("transformers", "5.0.0")
        == "https://github.com/huggingface/transformers/releases/tag/v5.0.0"
    )
    assert release_notes_url("some-pkg", "1.2") == "https://pypi.org/project/some-pkg/1.2/"


def test_markdown_gives_the_answer_the_evidence_and_the_cost():
    doc = {
        "package": "transformers",
        "good": "4.57.6",
        "bad": "5.1.0",
        "checks": ["exaone3.5.remote-code"],
        "releases_in_range": ["4.57.6", "5.0.0", "5.1.0"],
        "yanked_left_out": ["5.0.1"],
        "prereleases_left_out": [],
        "first_bad": "5.0.0",
        "last_good": "4.57.6",
        "monotonic": None,
        "probes_run": 3,
        "release_notes": release_notes_url("transformers", "5.0.0"),
        "unresolvable": [],
        "steps": {
            "4.57.6": {
                "verdict": "good",
                "detail": "",
                "run": "/r/a",
                "checks": {
                    "exaone3.5.remote-code": {"status": "pass", "signature": None, "message": ""}
                },
            },
            "5.0.0": {
                "verdict": "bad",
                "detail": "x",
                "run": "/r/b",
                "checks": {
                    "exaone3.5.remote-code": {
                        "status": "fail",
                        "signature": "transformers-tied-weights-keys-list",
                        "message": "'list' object has no attribute 'keys'",
                    }
                },
            },
            "5.1.0": {"verdict": "bad", "detail": "x", "run": "/r/c", "checks": {}},
        },
    }
    md = render_markdown(doc)
    assert "**First bad release: transformers 5.0.0** (last good: 4.57.6)" in md
    assert "releases/tag/v5.0.0" in md and "yanked, left out: 5.0.1" in md
    assert "releases judged: 3; probes run now: 3" in md
    assert "| `exaone3.5.remote-code` | pass | fail `transformers-tied-weights-keys-list` |" in md
    assert "Binary search assumes one switch" in md


def test_nightly_bisects_only_a_check_that_broke_one_axis_away_from_a_good_cell():
    from pinmatrix.bisect.nightly import candidates

    def cell(cid, tf, unsloth, status):
        return {"id": cid, "pins": {"transformers": tf, "unsloth": unsloth},
                "checks": {"exaone3.5.remote-code": {"status": status}}}

    before = {"cells": [cell("a", "4.57.6", "none", "pass"),
                        cell("b", "4.57.6", "2026.10.9", "pass")]}
    now = {"cells": [cell("c", "5.17.0", "none", "fail"),          # one axis from a: bisect
                     cell("d", "5.17.0", "2026.9.14", "fail")]}    # two axes from every old cell
    found = candidates(now, before)
    assert found == [{"cell": "c", "check": "exaone3.5.remote-code", "package": "transformers",
                      "good": "4.57.6", "bad": "5.17.0", "previous_cell": "a"}]
    assert candidates({"cells": [cell("c", "5.17.0", "none", "pass")]}, before) == []
