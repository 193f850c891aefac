"""Cell status derivation: every rule of docs/CONTRACTS.md §3, and its precedence."""

from __future__ import annotations

import pytest

from pinmatrix.status import CORE_CHECKS, EXAONE35_ROUTES, cell_status

REMOTE, LLAMAFIED = EXAONE35_ROUTES["remote-code"], EXAONE35_ROUTES["llamafied"]
# Every check that decides broken / infra: the core, and both EXAONE 3.5 routes.
DECIDING = CORE_CHECKS + REMOTE


def core(status: str = "pass", **override: str) -> list[dict]:
    values = {name: status for name in CORE_CHECKS + REMOTE}
    values.update({k.replace("__", ".").replace("_", "-"): v for k, v in override.items()})
    return [{"name": n, "status": s, "duration_s": 0.0} for n, s in values.items()]


def checks(**statuses: str) -> list[dict]:
    return [{"name": n, "status": s, "duration_s": 0.0} for n, s in statuses.items()]


def test_core_names_are_the_contract() -> None:
    assert CORE_CHECKS == ("imports",)
    assert REMOTE == ("exaone3.5.remote-code", "lora-train.hf-peft")
    assert LLAMAFIED == ("exaone3.5.llamafied", "lora-train.hf-peft-llamafied")


@pytest.mark.parametrize("failing", REMOTE)
def test_remote_code_failing_with_llamafied_training_is_partial(failing) -> None:
    """transformers 5.x: the hub's remote code fails, the llamafied route trains; the stack can
    still
    be used for the job, so the cell is partial, never broken and never works."""
    result = checks(
        **{"imports": "pass", **{n: "pass" for n in REMOTE + LLAMAFIED}, failing: "fail"}
    )
    assert cell_status(result) == "partial"


def test_every_route_failing_is_broken() -> None:
    result = checks(
        **{
            "imports": "pass",
            "exaone3.5.remote-code": "fail",
            "lora-train.hf-peft": "fail",
            "exaone3.5.llamafied": "pass",
            "lora-train.hf-peft-llamafied": "fail",
        }
    )
    assert cell_status(result) == "broken"


def test_a_route_that_could_not_be_judged_is_not_called_broken() -> None:
    result = checks(
        **{
            "imports": "pass",
            "exaone3.5.remote-code": "fail",
            "lora-train.hf-peft": "fail",
            "exaone3.5.llamafied": "pass",
            "lora-train.hf-peft-llamafied": "infra",
        }
    )
    assert cell_status(result) == "infra"


def test_both_routes_passing_with_nothing_else_failing_works() -> None:
    assert (
        cell_status(checks(**{"imports": "pass", **{n: "pass" for n in REMOTE + LLAMAFIED}}))
        == "works"
    )


def test_unresolvable_wins_over_everything() -> None:
    assert cell_status(None, unresolvable=True) == "unresolvable"
    assert cell_status(core("pass"), unresolvable=True) == "unresolvable"


def test_no_valid_result_is_infra() -> None:
    assert cell_status(None) == "infra"


def test_a_result_without_checks_is_infra() -> None:
    assert cell_status([]) == "infra"


@pytest.mark.parametrize("name", DECIDING)
def test_core_infra_is_infra(name) -> None:
    result = core("pass") + [{"name": "generate", "status": "fail", "duration_s": 0.0}]
    for check in result:
        if check["name"] == name:
            check["status"] = "infra"
    assert cell_status(result) == "infra"


def test_core_infra_beats_core_fail() -> None:
    result = [
        {"name": "imports", "status": "fail", "duration_s": 0},
        {"name": "lora-train.hf-peft", "status": "infra", "duration_s": 0},
    ]
    assert cell_status(result) == "infra"


@pytest.mark.parametrize("name", DECIDING)
def test_core_fail_is_broken(name) -> None:
    result = core("pass")
    for check in result:
        if check["name"] == name:
            check["status"] = "fail"
    assert cell_status(result) == "broken"


def test_all_pass_or_skip_works() -> None:
    result = core("pass") + [
        {"name": "exaone4.native", "status": "skip", "duration_s": 0},
        {"name": "generate", "status": "pass", "duration_s": 0},
    ]
    assert cell_status(result) == "works"


@pytest.mark.parametrize("status", ["fail", "flaky", "infra"])
def test_non_core_trouble_is_partial(status) -> None:
    result = core("pass") + [{"name": "unsloth.load.exaone3.5", "status": status, "duration_s": 0}]
    assert cell_status(result) == "partial"


def test_core_flaky_is_partial_not_broken() -> None:
    assert cell_status(core("pass", imports="flaky")) == "partial"


def test_missing_core_checks_do_not_break_a_cell() -> None:
    # A matrix may run only some groups; absent core checks are not failures.
    assert cell_status([{"name": "imports", "status": "pass", "duration_s": 0}]) == "works"


def test_a_measurement_that_does_not_fit_the_card_does_not_demote_the_cell() -> None:
    # eager attention at 4 x 2048 OOMs on an 80 GB H100 (reports/h100): the stack still works.
    oom = {
        "name": "throughput.eager",
        "status": "infra",
        "duration_s": 1.3,
        "reason": "CUDA out of memory at 4x2048",
    }
    assert cell_status(core("pass") + [oom]) == "works"
    # ... but a measurement that failed is the stack's failure, and infra elsewhere still counts.
    assert cell_status(core("pass") + [{**oom, "status": "fail"}]) == "partial"
    assert (
        cell_status(core("pass") + [oom, {"name": "generate", "status": "infra", "duration_s": 0}])
        == "partial"
    )
