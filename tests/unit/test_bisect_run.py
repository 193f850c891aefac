"""The bisect command's own parts: its arguments, how a step's result is judged, and what it
writes."""

from __future__ import annotations

from pathlib import Path

import pytest

import pinmatrix.bisect.run as bisect_run
from pinmatrix.bisect.base_cell import base_candidates, choose_base, companion_table, companions_at
from pinmatrix.bisect.nightly import candidates
from pinmatrix.bisect.run import _judge_result, parse_spec, release_notes_url, render_markdown
from pinmatrix.bisect.search import Judgement
from pinmatrix.bisect.target import Target, TargetError, judge_checks, signature_target
from pinmatrix.errors import UsageError
from pinmatrix.report.diff import render_bisect_lines
from pinmatrix.results import CellResult
from pinmatrix.run.options import RunOptions

GROUPS = ("imports", "exaone3.5", "lora-train")


def result(*checks):
    data = {"cell": {"id": "c", "hash": "h", "pins": {}}, "checks": list(checks)}
    return CellResult(path=None, data=data)  # type: ignore[arg-type]


def check(name, status, signature=None, **evidence):
    out = {"name": name, "status": status, "duration_s": 0.1, "evidence": evidence}
    if signature:
        out["error"] = {"type": "X", "message": f"msg {signature}", "signature": signature}
    return out


def test_spec_parsing_and_bad_ranges() -> None:
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


def test_a_step_is_bad_on_a_failed_named_check_and_good_when_they_pass() -> None:
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


def test_one_break_among_several_is_bisected_by_its_signature() -> None:
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


def test_every_named_check_skipped_or_infra_is_not_judged() -> None:
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


def test_release_notes_links() -> None:
    assert (
        release_notes_url("transformers", "5.0.0")
        == "https://github.com/huggingface/transformers/releases/tag/v5.0.0"
    )
    assert release_notes_url("some-pkg", "1.2") == "https://pypi.org/project/some-pkg/1.2/"


def test_markdown_gives_the_answer_the_evidence_and_the_cost() -> None:
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


def test_nightly_bisects_only_a_check_that_broke_one_axis_away_from_a_good_cell() -> None:
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


def test_a_check_skipped_because_the_release_predates_the_feature_is_absent_not_infra() -> None:
    old = check("exaone4.native", "skip")
    old["reason"] = "Exaone4ForCausalLM absent before transformers 4.54 (installed 4.53.3)"
    judged = judge_checks(result(old), ["exaone4.native"], ("exaone4",), Target("check"))
    assert judged.verdict == "bad" and judged.detail.startswith("absent: exaone4.native")
    assert judged.check == "exaone4.native" and "absent before" in judged.message
    gpu = check("exaone4.native", "skip")
    gpu["reason"] = "needs a GPU (unsloth-no-accelerator)"
    assert judge_checks(result(gpu), ["exaone4.native"], ("exaone4",), Target("check")).verdict == (
        "infra"
    )


def surface_check(failed_ids, causes, status="fail"):
    out = check(
        "exaone3.5.surface",
        status,
        causes[0]["signature"] if causes else None,
        facts_checked=40,
        failed_fact_ids=failed_ids,
        facts_failed=[{"id": f, "error_type": "TypeError",
                       "message": "got an unexpected keyword argument"} for f in failed_ids],
        causes=causes,
        signatures=sorted(c["signature"] for c in causes),
    )
    return result(check("imports", "pass"), out)


MASK = "call:transformers.masking_utils.create_causal_mask(input_embeds=)"
LEGACY = "call:transformers.cache_utils.DynamicCache.from_legacy_cache(1 positional)"
GONE = "module transformers.modeling_flash_attention_utils is gone"


def test_a_fact_is_bisected_by_its_readable_id_and_a_grouped_cause_by_its_words() -> None:
    causes = [
        {"signature": "transformers-create-causal-mask-input-embeds-renamed", "cause": "kw",
         "facts": [MASK]},
        {"signature": "fp-0123456789ab", "cause": GONE,
         "facts": ["import:transformers.modeling_flash_attention_utils.x", "import:y"]},
    ]
    newer = surface_check([MASK, "import:transformers.modeling_flash_attention_utils.x",
                           "import:y"], causes)
    older = surface_check([], [], status="pass")
    checks = ["exaone3.5.surface"]
    judged = judge_checks(newer, checks, GROUPS, Target("fact", MASK))
    assert judged.verdict == "bad" and MASK in judged.detail
    assert judged.check == "exaone3.5.surface"
    # bisect.md quotes the fact's own words, not the check's summary of every fact
    assert judged.message == f"{MASK}: TypeError: got an unexpected keyword argument"
    assert judge_checks(older, checks, GROUPS, Target("fact", MASK)).verdict == "good"
    # another fact fails here, this one holds: good for it
    only_gone = surface_check(["import:y"], causes[1:])
    held = judge_checks(only_gone, checks, GROUPS, Target("fact", MASK))
    assert held.verdict == "good" and "holds" in held.detail and "import:y" in held.detail
    # a grouped cause, as the report words it, is bad where any of its facts fails
    assert judge_checks(only_gone, checks, GROUPS, Target("fact", GONE)).verdict == "bad"
    assert judge_checks(older, checks, GROUPS, Target("fact", GONE)).verdict == "good"
    # a surface check that crashed before it listed facts cannot judge a fact
    crashed = result(check("exaone3.5.surface", "fail", "fp-aaaaaaaaaaaa"))
    assert judge_checks(crashed, checks, GROUPS, Target("fact", MASK)).verdict == "infra"


def test_signature_names_are_catalogue_ids_or_fingerprints() -> None:
    known = signature_target("transformers-create-causal-mask-cache-position-removed")
    assert known.known and "catalogue" in known.describe()
    unknown = signature_target("fp-0123456789ab")
    assert not unknown.known and "fingerprint" in unknown.describe()
    with pytest.raises(TargetError, match="did you mean transformers-create-causal-mask"):
        signature_target("transformers-create-causal-mask-cache-position")
    with pytest.raises(TargetError):
        signature_target("fp-xyz")


def test_fact_and_signature_together_are_a_usage_error() -> None:
    with pytest.raises(UsageError):
        parse_spec(["transformers", "4.57.6..5.17.0"], signature="x", fact=MASK)


def test_the_held_stack_is_the_newest_and_include_companions_follow_the_package() -> None:
    axes = ["python", "transformers", "unsloth"]
    fa = {"4.57.6": ("none", "none"), "5.5.0": ("4.0.0b36[cu13]", "0.8.5"),
          "5.17.0": ("4.0.0b36[cu13]", "0.8.5")}
    trl = {"2026.10.9": "1.15.0", "2026.9.14": "0.24.0", "none": "none"}
    cells = [
        {"python": "3.12", "transformers": tf, "unsloth": u, "trl": trl[u],
         "flash-attn-4": fa[tf][0], "liger-kernel": fa[tf][1]}
        for tf in fa for u in trl
    ]
    table = companion_table(cells, axes, "transformers")
    assert set(table["5.5.0"]) == {"flash-attn-4", "liger-kernel"}  # trl follows unsloth
    assert companions_at(table, "5.3.0") == {"flash-attn-4": "none", "liger-kernel": "none"}
    assert companions_at(table, "5.9.0")["liger-kernel"] == "0.8.5"
    assert companions_at(table, "4.50.0")["liger-kernel"] == "none"  # below every anchor
    stacks = base_candidates(cells, axes, "transformers", ["flash-attn-4", "liger-kernel"])
    assert [(s["unsloth"], s["trl"]) for s in stacks] == [
        ("2026.10.9", "1.15.0"), ("2026.9.14", "0.24.0"), ("none", "none")
    ]


def test_the_held_stack_is_the_first_good_at_the_good_end_that_installs_at_the_other() -> None:
    verdicts = {0: {"1.0": "bad"}, 1: {"1.0": "good", "2.0": "unresolvable"},
                2: {"1.0": "good", "2.0": "bad"}, 3: {"1.0": "good", "2.0": "bad"}}
    asked = []

    def judge_with(index):
        return lambda v: asked.append((index, v)) or Judgement(v, verdicts[index][v])

    chosen, tried = choose_base([{}] * 4, "1.0", "2.0", judge_with)
    assert chosen == 2 and len(tried) == 3
    assert (3, "1.0") not in asked
    assert choose_base([{}], "1.0", "2.0", judge_with) == (0, [])


def test_markdown_quotes_the_bisected_checks_message_and_honest_counts() -> None:
    doc = {
        "package": "transformers", "good": "4.57.6", "bad": "5.1.0",
        "checks": ["exaone3.5.remote-code"], "releases_in_range": ["4.57.6", "5.0.0", "5.1.0"],
        "first_bad": "5.0.0", "last_good": "4.57.6", "monotonic": None, "judgements": 3,
        "probes_run": 1, "release_notes": "u",
        "steps": {
            "4.57.6": {"verdict": "good", "run": "/r/a", "checks": {}},
            "5.0.0": {
                "verdict": "bad", "run": "/r/b", "judged_by": "exaone3.5.remote-code",
                "message": "'list' object has no attribute 'keys'",
                "checks": {
                    "imports": {"status": "fail", "signature": "x", "message": "another check"},
                    "exaone3.5.remote-code": {"status": "fail", "signature": "t",
                                              "message": "'list' object has no attribute 'keys'"},
                },
            },
            "5.1.0": {"verdict": "bad", "run": "/r/c", "checks": {}},
        },
    }
    md = render_markdown(doc)
    assert ("First bad message (`exaone3.5.remote-code`): 'list' object has no attribute 'keys'"
            in md)
    assert "another check" not in md
    assert "releases judged: 3; probes run now: 1; from the result cache: 2" in md
    first_good = {**doc, "direction": "first-good", "first_bad": None, "last_good": None,
                  "first_good": "5.0.0", "last_bad": "4.57.6",
                  "followed": "signature s (fingerprint, not in the catalogue)"}
    md = render_markdown(first_good)
    assert "**First good release: transformers 5.0.0** (last bad: 4.57.6)" in md
    assert "- followed: signature s (fingerprint, not in the catalogue)" in md


def test_two_packages_together_through_run_bisect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`bisect unsloth A..B --with trl=C..D` on the default matrix, each step judged by a table (the
    real steps are cells): the held stack is chosen on the corners, both searches of each package
    are reported, and trl does not follow unsloth's include rule while it is the other package."""

    unsloth = ["2026.9.14", "2026.9.20", "2026.10.1", "2026.10.9"]
    trl = ["0.24.0", "1.0.0", "1.10.0", "1.15.0"]

    def files(package):
        versions = {"unsloth": unsloth, "trl": trl}[package]
        return [{"filename": f"{package}-{v}.tar.gz"} for v in versions]

    seen = []

    def fake_step(context, pins, label, suffix, steps):
        seen.append(dict(pins))
        if pins["transformers"] == "5.17.0" and pins["unsloth"] == "2026.9.14":
            verdict = "unresolvable"  # unsloth 2026.9.x caps transformers <= 5.5.0
        else:
            both_new = unsloth.index(pins["unsloth"]) >= 2 and trl.index(pins["trl"]) >= 2
            verdict = "bad" if both_new else "good"
        steps[label] = {"verdict": verdict, "detail": label, "run": "r", "reused_from": None}
        return Judgement(label, verdict, label)

    monkeypatch.setattr(bisect_run, "run_step", fake_step)
    spec = parse_spec(["unsloth", "2026.9.14..2026.10.9"], ["imports"],
                      together="trl=0.24.0..1.15.0")
    opts = RunOptions(matrix_path=Path(__file__).parents[2] / "matrix.yaml", reports_dir=tmp_path)
    folder, _ = bisect_run.run_bisect(spec, opts, echo=lambda line: None, list_files=files)
    doc = __import__("json").loads((folder / "bisect.json").read_text())
    assert "transformers=5.5.0" in doc["held_stack"]  # 5.17.0 cannot install unsloth 2026.9.14
    assert doc["together"]["lines"] == [
        "unsloth with trl held at 0.24.0: no switch in range (2026.10.9 is good, not bad: "
        "2026.10.9+trl0.24.0)",
        "unsloth with trl held at 1.15.0: first bad 2026.10.1 (before it: 2026.9.20)",
        "trl with unsloth held at 2026.9.14: no switch in range (1.15.0 is good, not bad: "
        "2026.9.14+trl1.15.0)",
        "trl with unsloth held at 2026.10.9: first bad 1.10.0 (before it: 1.0.0)",
    ]
    # trl is the one moving or held, never the include rule's companion of unsloth
    assert {(p["unsloth"], p["trl"]) for p in seen} >= {("2026.9.14", "1.15.0"),
                                                       ("2026.10.9", "0.24.0")}
    assert "first bad 1.10.0" in (folder / "bisect.md").read_text()
    assert bisect_run._print_together(folder) == 0
    assert "trl with unsloth held at 2026.10.9: first bad 1.10.0" in capsys.readouterr().out
    with pytest.raises(UsageError):
        parse_spec(["unsloth", "1..2"], together="trl")


def test_nightly_bisect_line_names_the_signature_and_the_probes_run_now() -> None:
    (line,) = render_bisect_lines([{
        "cell": "c", "check": "exaone3.5.surface", "package": "transformers", "good": "5.17.0",
        "bad": "5.25.0", "first_bad": "5.24.0", "last_good": "5.23.0", "probes": 5,
        "probes_run": 2, "releases": 12, "bisect": "b/bisect.md",
        "signature": "fp-0123456789ab",
    }])
    assert "**first bad transformers 5.24.0** (last good 5.23.0; `fp-0123456789ab`;" in line
    assert "5 releases judged, 2 probed now, of 12" in line


def test_nightly_bisects_a_new_failing_fact_of_a_check_that_failed_before() -> None:
    def cell(cid, tf):
        return {"id": cid, "pins": {"transformers": tf, "unsloth": "none"},
                "checks": {"exaone3.5.surface": {"status": "fail"}}}

    facts = {"a": {"buffer:X.inv_freq"}, "c": {"buffer:X.inv_freq", MASK}}

    def facts_of(c, check):
        return facts[c["id"]]

    before, now = {"cells": [cell("a", "5.17.0")]}, {"cells": [cell("c", "5.25.0")]}
    assert candidates(now, before) == []  # by check alone: it failed before, nothing new
    (found,) = candidates(now, before, (facts_of, facts_of))
    assert (found["fact"], found["good"], found["bad"]) == (MASK, "5.17.0", "5.25.0")
    facts["c"] = {"buffer:X.inv_freq"}
    assert candidates(now, before, (facts_of, facts_of)) == []  # the same facts fail: no break
    (line,) = render_bisect_lines([{**found, "first_bad": "5.24.0", "last_good": "5.23.0",
                                    "probes": 4, "releases": 9, "bisect": "b.md"}])
    assert f"`exaone3.5.surface` fact `{MASK}`: transformers 5.17.0..5.25.0" in line
