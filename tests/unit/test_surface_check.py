"""exaone3.5.surface: each transformers fact of the remote code checked by executing it against
the installed transformers, and each failing fact kind shown failing: an import that is gone, a
keyword the callable rejects when called (through a wrapper that takes **kwargs and re-raises; and a
shim that maps an old keyword is judged by the call, not by its signature), class-attribute forms,
and a buffer that loads uninitialised. Facts broken by one root cause share one signature. Where a
kind fails only on transformers 5 (the list _tied_weights_keys, the buffer), the expectation follows
the installed version; tests/integration/test_surface_executed.py and test_exaone35_verdicts.py run
it on real 5.x venvs."""

from __future__ import annotations

import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path

if "transformers" not in sys.modules:
    os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="pinmatrix-hfmodules-"))

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hashlib  # noqa: E402
import inspect  # noqa: E402

from packaging.version import Version  # noqa: E402

from probes.checks import exaone35  # noqa: E402
from probes.checks.surface import check_calls, check_class_forms, check_imports  # noqa: E402
from probes.context import Context  # noqa: E402
from probes.fixtures.checkpoints import EXAONE35_REVISIONS, revision_facts, write_exaone35  # noqa: E402
from probes.framework import run_check  # noqa: E402
from probes.models import ModelHandle  # noqa: E402

TF5 = Version(transformers.__version__) >= Version("5.0.0")


def failed(findings):
    return [f for f in findings if not f.ok]


def test_an_import_that_is_gone_fails_with_pythons_words() -> None:
    findings = check_imports(
        {
            "imports": [
                {"module": "transformers.cache_utils", "name": "DynamicCache", "scope": "module"},
                {
                    "module": "transformers.cache_utils",
                    "name": "NoSuchCacheInAnyRelease",
                    "scope": "module",
                },
                {"module": "transformers.no_such_module_anywhere", "name": "X", "scope": "module"},
            ]
        }
    )
    assert [f.ok for f in findings] == [True, False, False]
    assert (
        findings[1].message
        == "cannot import name 'NoSuchCacheInAnyRelease' from 'transformers.cache_utils'"
    )
    assert (
        findings[1].signature.startswith("fp-") and findings[2].error_type == "ModuleNotFoundError"
    )
    assert [f.id for f in findings] == [
        "import:transformers.cache_utils.DynamicCache",
        "import:transformers.cache_utils.NoSuchCacheInAnyRelease",
        "import:transformers.no_such_module_anywhere.X",
    ]
    assert findings[2].cause == "module transformers.no_such_module_anywhere is gone"


@pytest.fixture
def toy_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A real module on sys.path with the shapes transformers' own API takes: a function that takes
    `b` but not `c`; a deprecation wrapper (`*args, **kwargs`, functools.wraps) that forwards to a
    function which no longer takes the old keyword and re-raises its TypeError; a shim wrapper that
    maps an old keyword to the new one (transformers' @deprecate_kwarg, 5.2-5.8 for input_embeds);
    and an output dataclass whose __init__ maps an old keyword while its documented signature lists
    only the new one (transformers 5's ModelOutput with past_key_values -> cache)."""
    (tmp_path / "pinmatrix_surface_toy.py").write_text(
        textwrap.dedent('''
        import dataclasses, functools, inspect
        def takes_b(a, *, b=None):
            return a
        def renamed(f):
            @functools.wraps(f)
            def wrapper(*args, **kwargs):
                if "old" in kwargs:
                    kwargs["new"] = kwargs.pop("old")
                return f(*args, **kwargs)
            return wrapper
        @renamed
        def shimmed(a, new=None):
            return a
        def deprecated(f):
            @functools.wraps(f)
            def wrapper(*args, **kwargs):
                try:
                    return f(*args, **kwargs)
                except TypeError as exc:
                    raise TypeError(str(exc)) from None
            return wrapper
        @deprecated
        def mask(config, inputs_embeds=None, attention_mask=None):
            return attention_mask
        @dataclasses.dataclass
        class Output:
            logits: object = None
            cache: object = None
        _init = Output.__init__
        def _compat_init(self, *args, **kwargs):
            if "past_key_values" in kwargs:
                kwargs["cache"] = kwargs.pop("past_key_values")
            _init(self, *args, **kwargs)
        _compat_init.__signature__ = inspect.signature(_init)
        Output.__init__ = _compat_init
        def broken_body(a, *, b=None):
            raise RuntimeError("needs a GPU")
        def takes_any(a, **kwargs):
            raise RuntimeError("needs a GPU")
    ''')
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "pinmatrix_surface_toy"


def _form(keywords, positional=1):
    return {
        "keywords": keywords,
        "positional": positional,
        "star_args": False,
        "star_kwargs": False,
    }


def test_a_keyword_the_callable_does_not_take_fails_and_each_keyword_is_its_own_fact(
    toy_module,
) -> None:
    findings = check_calls(
        {
            "calls": {
                f"{toy_module}.takes_b": _form(["b", "c", "d"]),
                f"{toy_module}.shimmed": _form(["old"]),
                f"{toy_module}.takes_b.nope": _form([], 0),
            }
        }
    )
    by_id = {f.id: f for f in findings}
    assert by_id[f"call:{toy_module}.takes_b(1 positional)"].ok
    assert (
        by_id[f"call:{toy_module}.takes_b(b=)"].ok
        and by_id[f"call:{toy_module}.takes_b(b=)"].judged
    )
    for keyword in ("c", "d"):
        finding = by_id[f"call:{toy_module}.takes_b({keyword}=)"]
        assert not finding.ok and finding.outcome == "rejects"
        assert f"takes_b() got an unexpected keyword argument '{keyword}'" == finding.message
    assert by_id[f"call:{toy_module}.shimmed(old=)"].ok
    gone = by_id[f"call:{toy_module}.takes_b.nope()"]
    assert not gone.ok and gone.outcome == "missing"  # an attribute that is gone


def test_a_wrapper_taking_kwargs_that_reraises_is_judged_by_the_call_not_by_its_signature(
    toy_module,
) -> None:
    """Binding says fine (the wrapper takes *args, **kwargs); the call raises TypeError naming the
    keyword: the keyword is rejected. The keyword the function does take is judged by the call that
    runs once the rejected one is dropped."""

    wrapper = __import__(toy_module).mask
    inspect.signature(wrapper, follow_wrapped=False).bind(None, input_embeds=None)  # binding: fine
    findings = check_calls(
        {"calls": {f"{toy_module}.mask": _form(["input_embeds", "attention_mask"])}}
    )
    by_id = {f.id: f for f in findings}
    rejected = by_id[f"call:{toy_module}.mask(input_embeds=)"]
    assert (rejected.ok, rejected.outcome) == (False, "rejects")
    assert "got an unexpected keyword argument 'input_embeds'" in rejected.message
    assert rejected.cause == "mask() does not take input_embeds="
    assert by_id[f"call:{toy_module}.mask(attention_mask=)"].outcome == "runs"


def test_a_shim_that_accepts_an_old_keyword_is_judged_by_the_call(toy_module) -> None:
    """The documented signature lacks `past_key_values` (binding says broken); the constructor maps
    it to `cache` (the call works): the fact holds."""

    output = __import__(toy_module).Output
    with pytest.raises(TypeError):
        inspect.signature(output).bind(past_key_values=None)  # binding: broken
    findings = check_calls(
        {"calls": {f"{toy_module}.Output": _form(["logits", "past_key_values"], 0)}}
    )
    assert [(f.id, f.ok, f.outcome) for f in findings] == [
        (f"call:{toy_module}.Output()", True, "runs"),
        (f"call:{toy_module}.Output(logits=)", True, "runs"),
        (f"call:{toy_module}.Output(past_key_values=)", True, "runs"),
    ]


def test_a_call_that_fails_later_judges_only_what_its_own_frame_bound(toy_module) -> None:
    """The body raises (here "needs a GPU"): the keyword reached a named parameter of the function's
    own frame, so it bound; nothing about the stack is failed."""
    findings = check_calls({"calls": {f"{toy_module}.broken_body": _form(["b"])}})
    assert all(f.ok for f in findings)
    assert {f.outcome for f in findings} == {"fails-later"} and all(f.judged for f in findings)
    assert "needs a GPU" in findings[0].detail["bound_then"]


def test_a_removed_module_gives_exactly_one_signature_that_names_it() -> None:
    """Three facts use one module that is gone (an import and two calls, as the remote code uses
    transformers.modeling_attn_mask_utils): one cause, one signature."""
    gone = "transformers.pinmatrix_no_such_module"
    surface = {
        "imports": [{"module": gone, "name": "AttentionMaskConverter", "scope": "module"}],
        "calls": {
            f"{gone}.AttentionMaskConverter._unmask_unattended": _form([], 2),
            f"{gone}.AttentionMaskConverter._ignore_causal_mask_sdpa": _form(["inputs_embeds"]),
        },
    }
    findings = check_imports(surface) + check_calls(surface)
    assert len(findings) == 4 and not any(f.ok for f in findings)
    assert len({f.signature for f in findings}) == 1
    assert {f.cause for f in findings} == {f"module {gone} is gone"}
    assert findings[0].id == f"import:{gone}.AttentionMaskConverter"


def test_the_mask_keywords_of_revision_current_follow_transformers_releases() -> None:
    """input_embeds went through a deprecate_kwarg shim from 5.2.0 and was removed in 5.9.0; so was
    cache_position (read from the release sources). The installed release decides; the catalogue
    names it."""
    call = revision_facts("current")["files"]["modeling_exaone.py"]["surface"]["calls"]
    findings = check_calls(
        {"calls": {k: v for k, v in call.items() if k.endswith("create_causal_mask")}}
    )
    bad = {f.signature for f in failed(findings)}
    if Version(transformers.__version__) >= Version("5.9.0"):
        assert bad == {
            "transformers-create-causal-mask-input-embeds-renamed",
            "transformers-create-causal-mask-cache-position-removed",
        }
    else:
        assert bad == set()


def _surface(tied: object, restores: list[str]) -> dict:
    return {
        "classes": {
            "ToyPreTrained": {
                "bases": ["transformers.modeling_utils.PreTrainedModel"],
                "attributes": {"base_model_prefix": {"form": "str", "value": "transformer"}},
            },
            "ToyForCausalLM": {
                "bases": ["ToyPreTrained"],
                "attributes": {"_tied_weights_keys": {"form": type(tied).__name__, "value": tied}},
            },
        },
        "buffers": [
            {"class": "Rotary", "method": "__init__", "name": "inv_freq", "persistent": False}
        ],
        "init_weights": {"ToyPreTrained": {"isinstance": ["torch.nn.Linear"], "buffers": restores}},
    }


def test_a_list_of_tied_keys_with_tied_embeddings_fails_on_transformers_5() -> None:
    as_list = failed(
        check_class_forms(_surface(["lm_head.weight"], ["inv_freq"]), tie_word_embeddings=True)
    )
    as_dict = failed(
        check_class_forms(
            _surface({"lm_head.weight": "transformer.wte.weight"}, ["inv_freq"]),
            tie_word_embeddings=True,
        )
    )
    assert [f.signature for f in as_list] == (
        ["transformers-tied-weights-keys-list"] if TF5 else []
    )
    assert as_dict == []


def test_a_buffer_init_weights_does_not_restore_comes_back_uninitialised_on_transformers_5(
) -> None:
    not_restored = failed(
        check_class_forms(
            _surface({"lm_head.weight": "transformer.wte.weight"}, []), tie_word_embeddings=True
        )
    )
    restored = failed(
        check_class_forms(
            _surface({"lm_head.weight": "transformer.wte.weight"}, ["inv_freq"]),
            tie_word_embeddings=True,
        )
    )
    assert [f.signature for f in not_restored] == (
        ["transformers-non-persistent-buffer-not-initialised"] if TF5 else []
    )
    assert restored == []


@pytest.mark.parametrize("revision", EXAONE35_REVISIONS)
def test_surface_check_of_each_revision_is_fast_and_matches_the_release(revision,
                                                                        tmp_path: Path) -> None:
    import transformers.modeling_utils  # noqa: F401 - the probe has imported it by then; time the check alone

    folder = write_exaone35(tmp_path / "EXAONE-3.5-2.4B-Instruct", revision=revision)
    handle = ModelHandle(
        "exaone3.5",
        folder,
        "fixture",
        "LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct",
        "main",
        "remote-code",
        revision,
    )
    ctx = Context(spec={"models": [], "pins": {}}, device="cpu", work_dir=tmp_path)
    start = time.monotonic()
    result = run_check(
        "exaone3.5.surface", lambda c: exaone35.check_surface_facts(c, handle), ctx, timeout_s=60
    )
    assert time.monotonic() - start < 5.0
    ev = result["evidence"]
    assert ev["facts_checked"] >= 40 and ev["facts_revision"] == revision
    if TF5:
        assert result["status"] == "fail"
        assert {
            "transformers-tied-weights-keys-list",
            "transformers-dynamiccache-from-legacy-cache-removed",
            "transformers-non-persistent-buffer-not-initialised",
        } <= set(ev["signatures"])
        # classified by the fact that breaks first: building the model
        assert result["error"]["signature"] == "transformers-tied-weights-keys-list"
    else:
        assert result["status"] == "pass", result.get("error")
        assert ev["facts_failed"] == []


@pytest.mark.skipif(
    TF5, reason="the remote code does not get to its forward pass on transformers 5"
)
def test_parity_with_the_llamafied_model_catches_a_buffer_left_wrong(tmp_path: Path) -> None:
    """Logits finite and the right shape, weights all loaded, and still wrong: an inv_freq that
    holds zeros
    (what transformers 5 leaves in a buffer _init_weights does not restore). Only parity catches
    it."""
    folder = write_exaone35(tmp_path / "EXAONE-3.5-2.4B-Instruct", revision="original")
    code = (folder / "modeling_exaone.py").read_text()
    marker = 'self.register_buffer("inv_freq", frequencies, persistent=False)'
    assert code.count(marker) == 1, (
        "the fixture registers inv_freq in __init__ as the hub code does"
    )
    (folder / "modeling_exaone.py").write_text(
        code.replace(marker, marker.replace("frequencies,", "frequencies * 0,"))
    )
    handle = ModelHandle(
        "exaone3.5",
        folder,
        "fixture",
        "LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct",
        "main",
        "remote-code",
        "original",
    )
    ctx = Context(spec={"models": [], "pins": {}}, device="cpu", work_dir=tmp_path)
    result = run_check(
        "exaone3.5.remote-code", lambda c: exaone35.check_remote_code(c, handle), ctx, timeout_s=300
    )
    assert result["status"] == "fail", result
    ev = result["evidence"]
    assert ev["nonfinite_logits"] == 0 and ev["max_weight_diff"] == 0.0
    assert ev["max_abs_diff_vs_llamafied"] > ev["parity_tolerance"]
    assert "differ from the llamafied model" in result["error"]["message"]


def test_a_real_hub_file_is_extracted_hashed_and_compared_with_its_revisions_facts(
    tmp_path: Path,
) -> None:
    """Where the hub cache holds the real remote code, its own surface is checked, its sha256
    recorded,
    and every difference from the facts file of the revision it should be is listed as a finding.
    The
    snapshot here holds our current fixture with LG-AI-EXAONE/EXAONE-3.5 PR #7 applied (a dict
    _tied_weights_keys): the very change the facts file does not have."""

    snapshot = write_exaone35(tmp_path / "snapshots" / ("e" * 40), revision="current")
    code = (snapshot / "modeling_exaone.py").read_text()
    old = '_tied_weights_keys = ["lm_head.weight"]'
    assert code.count(old) == 1
    (snapshot / "modeling_exaone.py").write_text(
        code.replace(old, '_tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}')
    )
    handle = ModelHandle(
        "exaone3.5",
        snapshot,
        "hub-cache",
        "LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct",
        "main",
        "remote-code",
    )
    ctx = Context(spec={"models": [], "pins": {}}, device="cpu", work_dir=tmp_path)
    result = run_check(
        "exaone3.5.surface", lambda c: exaone35.check_surface_facts(c, handle), ctx, timeout_s=60
    )
    ev = result["evidence"]
    assert ev["facts"] == "extracted from the hub snapshot" and ev["facts_revision"] == "current"
    assert (
        ev["sha256"]["modeling_exaone.py"]
        == hashlib.sha256((snapshot / "modeling_exaone.py").read_bytes()).hexdigest()
    )
    assert ev["differences_from_facts_file"] == {
        "modeling_exaone.py": [
            '~ class ExaoneForCausalLM._tied_weights_keys: {"form": "list", "value": '
            '["lm_head.weight"]} -> '
            '{"form": "dict", "value": {"lm_head.weight": "transformer.wte.weight"}}'
        ]
    }
    # the dict form passes the class-forms fact on every release; the rest follows the installed one
    assert "transformers-tied-weights-keys-list" not in ev["signatures"]
    assert (result["status"] == "fail") == TF5


def test_a_removed_class_gives_one_signature_for_its_import_and_its_calls() -> None:
    module, gone = "transformers.cache_utils", "PinmatrixNoSuchCache"
    surface = {
        "imports": [{"module": module, "name": gone, "scope": "module"}],
        "calls": {f"{module}.{gone}.from_legacy_cache": _form([], 1)},
    }
    findings = check_imports(surface) + check_calls(surface)
    assert [f.ok for f in findings] == [False, False]
    assert len({f.signature for f in findings}) == 1
    assert {f.cause for f in findings} == {f"{module}.{gone} is gone"}
    assert findings[1].id == f"call:{module}.{gone}.from_legacy_cache(1 positional)"


def test_a_keyword_that_only_reached_kwargs_before_a_later_failure_is_not_judged(
    toy_module,
) -> None:
    """The body failed before anything read `x` (it went into **kwargs): the call does not say
    whether a later line would reject it, so the fact is not judged, and not failed."""
    (form, x) = check_calls({"calls": {f"{toy_module}.takes_any": _form(["x"])}})
    assert form.ok and form.judged and form.outcome == "fails-later"
    assert x.ok and not x.judged and "needs a GPU" in x.detail["not_judged"]
