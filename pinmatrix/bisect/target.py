"""What a bisect follows, and how one step's cell result is judged against it.

A target is one of:

- `check`: the named checks (names or groups) all pass: good; one fails: bad;
- `signature`: bad only where a named check fails with this signature (a surface check's failed
  facts count). A name is a catalogue id (probes/signatures.json) or a fingerprint (`fp-` and 12
  hex digits, as reports print them); anything else is bad input, with the nearest catalogue ids;
- `fact`: a readable fact id of a surface check (`call:transformers.masking_utils.
  create_causal_mask(input_embeds=)`, `import:transformers.cache_utils.DynamicCache`, as the
  check's evidence `failed_fact_ids` and the report's "Surface facts that fail, by cause" name
  them), or a grouped cause in the report's words (`module transformers.x is gone`): bad where the
  fact (or any fact of the cause) fails, good where the surface check ran and it holds.

A check skipped because the release predates the feature (its reason says the thing is `absent`,
e.g. "Exaone4ForCausalLM absent before transformers 4.54") does not hold there: the step is `bad`
with the detail "absent: …", which is what `--first-good` needs at its old end. Any other skip
(needs a GPU, not configured) is still `infra`: the host could not judge it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pinmatrix.bisect.search import Judgement
from pinmatrix.errors import BadInput
from pinmatrix.results import CellResult
from pinmatrix.run.flaky import group_of
from probes import signatures

__all__ = [
    "Target",
    "TargetError",
    "signature_target",
    "judge_checks",
    "ABSENT_REASON",
    "FACT_CHECKS",
]

# a skip reason that says the feature does not exist in the installed release
ABSENT_REASON = re.compile(r"\babsent\b")
_FINGERPRINT = re.compile(r"fp-[0-9a-f]{12}")
# the checks whose evidence lists facts (probes/checks/exaone35.py, check_surface_facts)
FACT_CHECKS = ("exaone3.5.surface",)


class TargetError(BadInput, ValueError):
    """A --signature or --fact that names nothing (bad input)."""


@dataclass(frozen=True)
class Target:
    kind: str  # check | signature | fact
    name: str | None = None  # the signature or fact id; None for a check target
    known: bool = False  # a signature from the catalogue
    cause: str | None = None  # a catalogue signature's cause, in its words

    def describe(self) -> str:
        """The line the output gives: which fact or signature this bisect followed."""
        if self.kind == "signature":
            origin = (
                f"catalogue: {self.cause}" if self.known else "fingerprint, not in the catalogue"
            )
            return f"signature {self.name} ({origin})"
        if self.kind == "fact":
            return f"fact {self.name}"
        return "the named checks"


def signature_target(name: str) -> Target:
    """A catalogue id or a fingerprint; TargetError otherwise, with the nearest catalogue ids."""

    catalogue = {str(e["id"]): e for e in signatures.load_catalogue()}
    if name in catalogue:
        return Target("signature", name, True, str(catalogue[name].get("cause") or ""))
    if _FINGERPRINT.fullmatch(name):
        return Target("signature", name, False)
    near = difflib.get_close_matches(name, list(catalogue), n=3, cutoff=0.5)
    raise TargetError(
        f"--signature {name!r}: neither a catalogue id (probes/signatures.json) nor a fingerprint "
        "(fp- and 12 hex digits)" + (f"; did you mean {', '.join(near)}?" if near else "")
    )


def _signatures_of(check: dict[str, Any]) -> set[str]:
    """The check's own signature, and for a surface check every failed fact's."""
    found = {(check.get("error") or {}).get("signature")}
    evidence = check.get("evidence") or {}
    if isinstance(evidence.get("signatures"), list):
        found |= {str(s) for s in evidence["signatures"]}
    found.discard(None)
    return found  # type: ignore[return-value]


def _message(check: dict[str, Any]) -> str:
    return str((check.get("error") or {}).get("message") or "")[:300]


def _fact_judgement(named: list[dict[str, Any]], fact: str) -> Judgement | None:
    """bad/good on the fact from the checks that list facts; None when none of them judged it."""
    for check in named:
        evidence = check.get("evidence") or {}
        if "facts_checked" not in evidence:
            continue
        failed = {str(f) for f in evidence.get("failed_fact_ids") or []}
        causes = [c for c in evidence.get("causes") or [] if isinstance(c, dict)]
        hit = [c for c in causes if c.get("cause") == fact or fact in (c.get("facts") or [])]
        if fact in failed or hit:
            cause = hit[0] if hit else {}
            ids = {fact, *(cause.get("facts") or [])}
            own = next(
                (
                    f"{f.get('id')}: {f.get('error_type')}: {f.get('message')}"
                    for f in evidence.get("facts_failed") or []
                    if isinstance(f, dict) and f.get("id") in ids
                ),
                None,
            )
            return Judgement(
                "",
                "bad",
                f"{check['name']}: {fact} fails"
                + (f" ({cause.get('cause')}, {cause.get('signature')})" if cause else ""),
                check=check["name"],
                message=(own or _message(check))[:300],  # the fact's own words, else the check's
            )
        return Judgement(
            "",
            "good",
            f"{check['name']}: {fact} holds ({evidence['facts_checked']} facts checked"
            + (f"; failing: {', '.join(sorted(failed))[:200]}" if failed else "")
            + ")",
            check=check["name"],
        )
    return None


def judge_checks(
    result: CellResult, checks: Sequence[str], groups: Sequence[str], target: Target
) -> Judgement:
    """One step's verdict on `target` from the named checks of its result (version left empty)."""

    named = [
        c for c in result.checks if c["name"] in checks or group_of(c["name"], groups) in checks
    ]
    if not named:
        return Judgement("", "infra", f"none of {', '.join(checks)} ran in the cell")
    failed = [c for c in named if c["status"] == "fail"]
    if target.kind == "fact" and target.name:
        judged = _fact_judgement(named, target.name)
        if judged is not None:
            return judged
    elif target.kind == "signature" and target.name:
        # one break among several: a release is bad for it only where this signature shows
        hits = [c for c in failed if target.name in _signatures_of(c)]
        if hits:
            return Judgement(
                "",
                "bad",
                f"{hits[0]['name']}: {target.name}",
                check=hits[0]["name"],
                message=_message(hits[0]),
            )
        if failed:
            others = sorted(set().union(*(_signatures_of(c) for c in failed)))
            return Judgement("", "good", f"{target.name} absent (fails with {', '.join(others)})")
    elif failed:
        first = failed[0]
        error = first.get("error") or {}
        return Judgement(
            "",
            "bad",
            f"{first['name']}: {error.get('signature')}: {_message(first)}",
            check=first["name"],
            message=_message(first),
        )
    infra = [c for c in named if c["status"] == "infra"]
    if infra:
        return Judgement("", "infra", f"{infra[0]['name']}: {infra[0].get('reason') or 'infra'}")
    absent = [
        c for c in named if c["status"] == "skip" and ABSENT_REASON.search(str(c.get("reason")))
    ]
    if absent:
        # the release predates the feature: it does not hold there (not a machine failure)
        return Judgement(
            "",
            "bad",
            f"absent: {absent[0]['name']}: {absent[0].get('reason')}",
            check=absent[0]["name"],
            message=str(absent[0].get("reason") or ""),
        )
    if all(c["status"] == "skip" for c in named):
        return Judgement(
            "",
            "infra",
            "every named check was skipped: "
            + "; ".join(f"{c['name']}: {c.get('reason')}" for c in named[:3]),
        )
    if target.kind == "fact":
        return Judgement(
            "", "infra", f"no check here lists facts ({', '.join(c['name'] for c in named)})"
        )
    return Judgement("", "good", ", ".join(f"{c['name']}: {c['status']}" for c in named))
