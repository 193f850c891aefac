"""probes/schema_check.py agrees with the jsonschema library on the result schema."""
from __future__ import annotations

import copy

import pytest

from probes.schema_check import UnsupportedSchema, load_schema, validate

jsonschema = pytest.importorskip("jsonschema")

SCHEMA = load_schema()

VALID = {
    "schema": 1,
    "cell": {"id": "py3.11-torch2.13.0", "hash": "a" * 64,
             "pins": {"torch": "2.13.0+cpu", "unsloth": "none"},
             "runner": "docker", "reused_from": None},
    "environment": {"python": "3.11.7", "platform": "Linux", "device": "cpu", "torch": "2.13.0+cpu",
                    "cuda": None, "gpu": None, "gpu_count": 0, "driver": None,
                    "packages": {"xformers": {"installed": "0.0.35", "imports": False,
                                              "error": "ImportError: x"},
                                 "unsloth": {"installed": None, "imports": None}}},
    "checks": [
        {"name": "imports", "status": "pass", "duration_s": 0.5, "evidence": {"n": 1},
         "warnings": ["w"]},
        {"name": "kernel.flash-attn", "status": "skip", "duration_s": 0, "reason": "needs a GPU"},
        {"name": "kernel.xformers", "status": "fail", "duration_s": 1.25, "evidence": {},
         "error": {"type": "RuntimeError", "message": "m", "traceback_tail": "t",
                   "signature": "xformers-extensions-not-loaded", "known": True}},
    ],
    "started": "2026-11-27T17:00:00Z", "finished": "2026-11-27T17:01:00Z",
}


def _mutate(path, value=None, delete=False):
    doc = copy.deepcopy(VALID)
    node = doc
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


INVALID = {
    "schema-const": _mutate(["schema"], 2),
    "schema-bool-is-not-1": _mutate(["schema"], True),
    "missing-checks": _mutate(["checks"], delete=True),
    "extra-top-level": _mutate(["surprise"], 1),
    "cell-id-empty": _mutate(["cell", "id"], ""),
    "pin-not-string": _mutate(["cell", "pins", "torch"], 2.13),
    "device-enum": _mutate(["environment", "device"], "tpu"),
    "gpu-count-negative": _mutate(["environment", "gpu_count"], -1),
    "gpu-count-float": _mutate(["environment", "gpu_count"], 1.5),
    "package-extra-key": _mutate(["environment", "packages", "xformers", "why"], "x"),
    "package-imports-string": _mutate(["environment", "packages", "xformers", "imports"], "yes"),
    "package-missing-installed": _mutate(["environment", "packages", "unsloth", "installed"],
                                         delete=True),
    "check-name-pattern": _mutate(["checks", 0, "name"], "Imports!"),
    "check-status-enum": _mutate(["checks", 0, "status"], "ok"),
    "check-duration-negative": _mutate(["checks", 0, "duration_s"], -0.1),
    "check-duration-bool": _mutate(["checks", 0, "duration_s"], True),
    "check-warnings-item": _mutate(["checks", 0, "warnings"], [1]),
    "error-missing-signature": _mutate(["checks", 2, "error", "signature"], delete=True),
    "error-empty-signature": _mutate(["checks", 2, "error", "signature"], ""),
    "error-known-not-bool": _mutate(["checks", 2, "error", "known"], 1),
    "checks-not-array": _mutate(["checks"], {}),
    "reused-from-number": _mutate(["cell", "reused_from"], 3),
}


def _library_ok(doc) -> bool:
    return jsonschema.Draft202012Validator(SCHEMA).is_valid(doc)


def test_schema_is_valid_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_valid_document_agrees() -> None:
    assert _library_ok(VALID)
    assert validate(VALID, SCHEMA) == []


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_documents_agree(name) -> None:
    doc = INVALID[name]
    assert not _library_ok(doc), "the library accepts it: the test case is wrong"
    errors = validate(doc, SCHEMA)
    assert errors, f"schema_check accepted {name}"
    assert all(error.startswith("$") for error in errors)


def test_error_paths_name_the_place() -> None:
    errors = validate(INVALID["check-status-enum"], SCHEMA)
    assert errors == ['$.checks[0].status: "ok" is not one of ["pass", "fail", "skip", "infra", '
                      '"flaky"]']
    errors = validate(INVALID["package-extra-key"], SCHEMA)
    assert errors == ["$.environment.packages.xformers: unexpected property 'why'"]


def test_integer_accepts_whole_floats_like_the_library() -> None:
    doc = _mutate(["environment", "gpu_count"], 2.0)
    assert _library_ok(doc) and validate(doc, SCHEMA) == []


def test_unsupported_keyword_is_refused() -> None:
    with pytest.raises(UnsupportedSchema):
        validate(1, {"type": "integer", "maximum": 3})
