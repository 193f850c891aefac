"""Check each transformers fact a remote-code file depends on against the installed transformers, by
executing it.

The facts come from `probes/remote_code_surface.py` (ast only). Nothing of the remote code runs here;
what runs is transformers itself, called the way the file calls it:

- imports:        the file's own statement, `from M import N`, is executed;
- calls:          the real callable is called (a class constructed, `X.__init__` reached through a
                  subclass as `super().__init__` does) with the recorded positional count and keywords
                  and tiny real arguments on CPU (probes/checks/call_args.py). The outcome decides:
                  it runs; it rejects a keyword (a TypeError in Python's words naming it: the keyword
                  fact fails, and the call is tried again without it to judge the rest); or it fails
                  later for another reason, which does not judge a keyword unless the callable's own
                  frame was entered with the keyword bound to a named parameter. Binding against
                  `inspect.signature` was a stand-in that both wrappers (`*args, **kwargs` that forward
                  to a function that rejects) and shims (a wrapper mapping an old keyword) fooled;
- subscripts:     a registry indexed with [] has the key the model's config asks for;
- class forms:    a one-layer toy `PreTrainedModel` with the facts' class attributes (`_tied_weights_keys`
                  and the rest), tied embeddings when the config ties them, and the facts' non-persistent
                  buffers and `_init_weights` coverage, is built (post_init), saved and loaded back; the
                  buffer must come back with the value `__init__` gave it.

Every fact has a readable id (`import:transformers.cache_utils.DynamicCache`,
`call:transformers.cache_utils.DynamicCache.from_legacy_cache(1 positional)`,
`call:transformers.masking_utils.create_causal_mask(input_embeds=)`). Each fact that fails carries its
signature, from its root cause: facts that fail because one module or one name is gone carry the
exception Python raises for that, so they share one signature and one `cause`. This module is generic;
the model-specific parts (which config keys a registry is indexed with) are passed in.
"""
from __future__ import annotations

import dis
import importlib
import inspect
import re
import tempfile
import traceback
from dataclasses import asdict, dataclass, field
from types import CodeType, TracebackType
from typing import Any, Iterable, Mapping

from probes.signatures import classify, normalise

__all__ = ["Finding", "check_surface", "check_imports", "check_calls", "check_subscripts", "check_class_forms",
           "resolve_dotted", "execute_call", "root_cause", "import_id", "call_id"]

_MODEL_BASES = ("transformers.modeling_utils.PreTrainedModel", "transformers.PreTrainedModel")
# Python's own words when a call's arguments do not bind (3.10+: the function's qualified name first)
_KEYWORD_REJECTED = re.compile(
    r"(?:got an unexpected keyword argument|got multiple values for (?:keyword )?argument|"
    r"got some positional-only arguments passed as keyword arguments:) '(\w+)'")
_MISSING_REQUIRED = re.compile(r"missing \d+ required (?:positional|keyword-only) arguments?: (.*)$")
_POSITIONAL_REJECTED = re.compile(r"takes (?:from \d+ to )?\d+ positional arguments? but \d+ (?:was|were) given")
_CALL_OPS = frozenset({"CALL", "CALL_FUNCTION", "CALL_FUNCTION_EX", "CALL_FUNCTION_KW", "CALL_KW", "CALL_METHOD",
                       "PRECALL"})


@dataclass
class Finding:
    """One fact, checked by executing it.

    outcome: runs | rejects | fails-later | missing (the callable or name is gone) | fails (an import,
    subscript, class form or buffer that does not hold). `judged` is False where the execution could not
    decide the fact (a call that failed later, before the keyword was seen by a named parameter)."""
    id: str
    kind: str                  # import | call | subscript | class-form | buffer
    ok: bool
    outcome: str = "runs"
    judged: bool = True
    error_type: str = ""
    message: str = ""
    cause: str = ""            # the root cause, readable: "module transformers.x is gone"
    signature: str | None = None
    known: bool = False
    detail: dict[str, Any] = field(default_factory=dict)

    def failed(self, exc: BaseException | None = None, *, error_type: str = "", message: str = "",
               outcome: str = "fails") -> "Finding":
        self.ok, self.outcome, self.judged = False, outcome, True
        self.error_type = error_type or (type(exc).__name__ if exc else "")
        self.message = (message or str(exc))[:2000]
        self.cause = root_cause(exc, self.error_type, self.message)
        tail = "".join(traceback.format_exception(exc)[-3:]) if exc else ""
        classification = classify(self.error_type, self.message, tail)
        self.signature, self.known = classification.id, classification.known
        return self

    def not_judged(self, why: str) -> "Finding":
        self.ok, self.judged, self.outcome = True, False, "fails-later"
        self.detail["not_judged"] = why
        return self

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not out["detail"]:
            out.pop("detail")
        return out


def root_cause(exc: BaseException | None, error_type: str, message: str) -> str:
    """The cause a failure has in common with every other fact it breaks, in words: a module gone, a
    name gone from a module or a class, a keyword a callable no longer takes."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return f"module {exc.name} is gone"
    found = re.search(r"cannot import name '([\w.]+)' from '([\w.]+)'", message)
    if found:
        return f"{found.group(2)}.{found.group(1)} is gone"
    owner = getattr(exc, "obj", None)
    if isinstance(exc, AttributeError) and getattr(exc, "name", None) and inspect.isclass(owner) \
            or inspect.ismodule(owner):
        return f"{owner.__name__}.{exc.name} is gone"
    found = _KEYWORD_REJECTED.search(message)
    if found:
        return f"{message.split('(')[0].strip()}() does not take {found.group(1)}="
    return f"{error_type}: {normalise(message.splitlines()[0])[:200] if message else ''}".strip(": ")


def import_id(module: str, name: str) -> str:
    return f"import:{module}.{name}" if name else f"import:{module}"


def call_id(dotted: str, call: Mapping[str, Any], keyword: str | None = None) -> str:
    """`call:X(1 positional)`, `call:X(*args, **kwargs)`, `call:X()` for the form; `call:X(k=)` for one
    of its keywords."""
    if keyword is not None:
        return f"call:{dotted}({keyword}=)"
    parts = []
    if call.get("positional"):
        parts.append(f"{call['positional']} positional")
    if call.get("star_args"):
        parts.append("*args")
    if call.get("star_kwargs"):
        parts.append("**kwargs")
    return f"call:{dotted}({', '.join(parts)})"


def _import_from(module: str, name: str) -> Any:
    """Python's own `from module import name` (a submodule is imported as the statement would)."""
    scope: dict[str, Any] = {}
    exec(f"from {module} import {name} as found", scope)  # noqa: S102 - dotted names from the ast, not user text
    return scope["found"]


def resolve_dotted(dotted: str) -> Any:
    """The object `a.b.c.d` names, reached the way the remote code reaches it: the longest importable
    module prefix, `from module import first_attribute`, then attributes. Raises the exception Python
    raises for the same import or attribute access, so a fact whose module or name is gone fails with
    the same words (and signature) as the import fact of that name."""
    parts = dotted.split(".")
    module = None
    index = len(parts)
    gone: dict[str, ModuleNotFoundError] = {}
    while index > 0:
        prefix = ".".join(parts[:index])
        try:
            module = importlib.import_module(prefix)
            break
        except ModuleNotFoundError as exc:
            if exc.name and not prefix.startswith(exc.name):
                raise  # a dependency of the module is missing: that is the finding
            if exc.name == prefix and "is not a package" not in str(exc):
                gone[prefix] = exc  # a module (under a package) that is not there
            index -= 1
    if module is None:
        raise ModuleNotFoundError(f"No module named {parts[0]!r}", name=parts[0])
    if index == len(parts):
        return module
    try:
        obj: Any = _import_from(".".join(parts[:index]), parts[index])
    except ImportError:
        below = gone.get(".".join(parts[: index + 1]))
        if below is None:
            raise
        if index + 2 <= len(parts):  # neither a name nor a module there: the file's own statement,
            _import_from(".".join(parts[: index + 1]), parts[index + 1])  # `from M.x import Y`, raises
        raise below from None
    for attr in parts[index + 1:]:
        obj = getattr(obj, attr)
    return obj


def check_imports(surface: Mapping[str, Any]) -> list[Finding]:
    """Each import executed as the file states it."""
    findings = []
    for imp in surface.get("imports", []):
        module, name = imp["module"], imp["name"]
        finding = Finding(import_id(module, name), "import", True, detail={"scope": imp.get("scope")})
        try:
            if name:
                _import_from(module, name)
            else:
                importlib.import_module(module)
        except ImportError as exc:
            finding.failed(exc, message=_clean_import_message(exc), outcome="missing")
        findings.append(finding)
    return findings


def _clean_import_message(exc: BaseException) -> str:
    """Python's words without the module file's path (it varies between venvs; the signature drops it)."""
    return re.sub(r" \((?:unknown location|[^()]*\.py)\)$", "", str(exc))


# -- calls -----------------------------------------------------------------------------------------

@dataclass
class CallRun:
    """One executed call: `outcome` runs | rejects | fails-later, the exception, the keyword a rejection
    names (None for a positional-count rejection), and the keywords that reached a named parameter of
    the callable's own frame (so bound, even though the call failed later)."""
    outcome: str
    exc: BaseException | None = None
    keyword: str | None = None
    bound: frozenset[str] = frozenset()
    raised_at: str = ""
    entered: bool = False      # the callable's own code ran: its arguments bound


def _target_codes(target: Any) -> set[CodeType]:
    """The code objects a call of `target` runs first: its function (and each wrapper's, down the
    `__wrapped__` chain), or for a class its __init__ and __new__."""
    functions: list[Any] = []
    if inspect.isclass(target):
        functions += [target.__init__, target.__new__]
    else:
        functions.append(target)
    codes: set[CodeType] = set()
    for function in functions:
        seen = 0
        while function is not None and seen < 10:
            code = getattr(getattr(function, "__func__", function), "__code__", None)
            if code is not None:
                codes.add(code)
            function = getattr(function, "__wrapped__", None)
            seen += 1
    return codes


def _frames(tb: TracebackType | None) -> list[TracebackType]:
    out = []
    while tb is not None:
        out.append(tb)
        tb = tb.tb_next
    return out


def _at_call(tb: TracebackType) -> bool:
    """True when the innermost frame was executing a call instruction: Python raised while binding
    arguments, before the callee ran, rather than code raising on its own."""
    for instruction in dis.get_instructions(tb.tb_frame.f_code):
        if instruction.offset == tb.tb_lasti:
            return instruction.opname in _CALL_OPS
    return False


def execute_call(target: Any, args: list[Any], kwargs: dict[str, Any], *,
                 receiver: Any = None) -> tuple[CallRun, Any]:
    """Call `target(*args, **kwargs)` (or `target(receiver, *args, **kwargs)` for an unbound
    `X.__init__`) and classify what happened. Returns (run, result)."""
    codes = _target_codes(target)
    try:
        result = target(receiver, *args, **kwargs) if receiver is not None else target(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the outcome is classified, never swallowed unseen
        message = str(exc)
        frames = _frames(exc.__traceback__)
        raised_at = "call boundary" if frames and _at_call(frames[-1]) else "inside the callee"
        bound: set[str] = set()
        entered = False
        for tb in frames:
            code = tb.tb_frame.f_code
            if code in codes:
                entered = True
                bound |= set(code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]) & set(kwargs)
        if isinstance(exc, TypeError):
            named = _KEYWORD_REJECTED.search(message)
            if named and named.group(1) in kwargs:
                return CallRun("rejects", exc, named.group(1), frozenset(bound), raised_at), None
            missing = _MISSING_REQUIRED.search(message)
            if (missing or _POSITIONAL_REJECTED.search(message)) and raised_at == "call boundary":
                return CallRun("rejects", exc, None, frozenset(bound), raised_at), None
        return CallRun("fails-later", exc, None, frozenset(bound), raised_at, entered), None
    return CallRun("runs", None, None, frozenset(kwargs), entered=True), result


def _receiver(owner: Any) -> Any:
    """An instance for `owner.__init__(instance, ...)`, as `super().__init__` in a subclass of `owner`
    has: a subclass's bare instance (its own __init__ not run)."""
    body: dict[str, Any] = {"__module__": __name__}
    if any(getattr(b, "__name__", "") in ("PreTrainedModel",) for b in owner.__mro__):
        from probes.checks.call_args import tiny_config

        body["config_class"] = type(tiny_config())
        body["_supports_sdpa"] = True  # the tiny config asks for sdpa
    if hasattr(owner, "model_type"):
        body["model_type"] = "pinmatrix-surface-probe"
    subclass = type(f"PinmatrixSurfaceProbe{owner.__name__}", (owner,), body)
    return subclass.__new__(subclass)


def _call_once(dotted: str, target: Any, call: Mapping[str, Any], keywords: list[str],
               supplied: list[str]) -> CallRun:
    from probes.checks.call_args import call_args

    built = call_args(dotted, int(call.get("positional", 0)), keywords + supplied, bool(call.get("star_args")))
    receiver = None
    if dotted.endswith(".__init__"):
        receiver = _receiver(resolve_dotted(dotted.rsplit(".", 1)[0]))
    try:
        run, result = execute_call(target, built.args, built.kwargs, receiver=receiver)
        if run.outcome == "runs" and built.then is not None:
            try:
                built.then(result)
            except Exception as exc:  # noqa: BLE001 - using the result failed: the call itself bound
                run = CallRun("fails-later", exc, None, run.bound, "using the call's result")
        return run
    finally:
        if built.cleanup is not None:
            built.cleanup()


def _missing_parameter(run: CallRun) -> str | None:
    """The required parameter a rejected call lacked, when we have a value of what it means."""
    from probes.checks.call_args import knows_keyword

    found = _MISSING_REQUIRED.search(str(run.exc)) if run.outcome == "rejects" else None
    if not found:
        return None
    names = re.findall(r"'(\w+)'", found.group(1))
    return next((n for n in names if knows_keyword(n)), None)


def check_calls(surface: Mapping[str, Any]) -> list[Finding]:
    """One finding for each call form, and one for each of its keywords (each keyword is a fact of its
    own: a release may drop one and rename another, each with its own first bad release).

    The call is made with every recorded keyword; a keyword it rejects fails, and the call is made again
    without it, until it runs or fails for another reason."""
    findings = []
    for dotted, call in surface.get("calls", {}).items():
        keywords = list(call.get("keywords", []))
        form = Finding(call_id(dotted, call), "call", True,
                       detail={"keywords": keywords, "positional": call.get("positional", 0)})
        findings.append(form)
        per_keyword = {k: Finding(call_id(dotted, call, k), "call", True) for k in keywords}
        try:
            target = resolve_dotted(dotted)
        except (ImportError, AttributeError) as exc:
            form.failed(exc, message=_clean_import_message(exc), outcome="missing")
            for finding in per_keyword.values():
                finding.failed(exc, message=_clean_import_message(exc), outcome="missing")
            findings += per_keyword.values()
            continue
        remaining, supplied = list(keywords), []
        while True:
            run = _call_once(dotted, target, call, remaining, supplied)
            if run.outcome == "rejects" and run.keyword in remaining:
                per_keyword[run.keyword].failed(run.exc, outcome="rejects")
                per_keyword[run.keyword].detail["raised_at"] = run.raised_at
                remaining.remove(run.keyword)
                continue
            wanted = _missing_parameter(run) if len(remaining) < len(keywords) else None
            if wanted and wanted not in supplied:
                # a keyword was rejected because it was renamed: the new name takes a value (not a fact
                # of the file), so that the other keywords are still judged by a call that binds
                supplied.append(wanted)
                form.detail.setdefault("supplied_to_judge_the_rest", []).append(wanted)
                continue
            break
        if run.outcome == "rejects":  # the positional form itself does not bind
            form.failed(run.exc, outcome="rejects")
        elif run.outcome == "fails-later":
            later = f"{type(run.exc).__name__}: {str(run.exc)[:200]}"
            why = f"the call failed later ({later}), before the callable's own frame held it"
            bound = f"the callable's own frame bound it; the call then failed for another reason ({later})"
            form.detail["raised_at"] = run.raised_at
            if run.entered:  # its own code ran: the positional form bound
                form.outcome, form.detail["bound_then"] = "fails-later", bound
            else:
                form.not_judged(why)
            for keyword in remaining:
                if keyword in run.bound:  # the callable's own frame held it in a named parameter
                    per_keyword[keyword].outcome = "fails-later"
                    per_keyword[keyword].detail["bound_then"] = bound
                else:
                    per_keyword[keyword].not_judged(why)
        findings += per_keyword.values()
    return findings


def check_subscripts(surface: Mapping[str, Any], keys: Mapping[str, Iterable[str]]) -> list[Finding]:
    """`keys` maps a registry's last name (ACT2FN, ROPE_INIT_FUNCTIONS) to the keys this model's config
    looks up in it; a registry with no known keys is checked for being indexable at all."""
    findings = []
    for dotted in surface.get("subscripts", []):
        short = dotted.rsplit(".", 1)[-1]
        wanted = list(keys.get(short, []))
        finding = Finding(f"subscript:{dotted}" + (f"[{', '.join(wanted)}]" if wanted else ""), "subscript",
                          True)
        try:
            registry = resolve_dotted(dotted)
            if not hasattr(registry, "__getitem__"):
                raise TypeError(f"'{type(registry).__name__}' object is not subscriptable")
            for key in wanted:
                registry[key]
        except KeyError as exc:
            finding.failed(exc, message=f"{short}[{exc}]: {short} has no entry {exc}")
        except (ImportError, AttributeError, TypeError) as exc:
            finding.failed(exc)
        findings.append(finding)
    return findings


def _model_classes(surface: Mapping[str, Any]) -> list[str]:
    """Classes of the file that derive (through local classes) from transformers' PreTrainedModel."""
    classes = surface.get("classes", {})

    def is_model(name: str, seen: frozenset[str] = frozenset()) -> bool:
        if name in seen or name not in classes:
            return False
        return any(b in _MODEL_BASES or is_model(b, seen | {name}) for b in classes[name]["bases"])

    return [name for name in classes if is_model(name)]


def class_forms(surface: Mapping[str, Any]) -> dict[str, Any]:
    """The literal class attributes transformers reads off the model classes, merged base-first as
    Python's attribute lookup would see them on the most derived class."""
    classes = surface.get("classes", {})
    merged: dict[str, Any] = {}
    for name in _model_classes(surface):
        for attr, form in classes[name]["attributes"].items():
            if form["form"] == "expr" or attr in ("config_class",):
                continue  # a reference to another class of the file: nothing transformers-shaped to check
            merged[attr] = form["value"]
    return merged


def _buffer_value(name: str) -> Any:
    import torch

    return 1.0 / (10000 ** (torch.arange(0, 8, 2, dtype=torch.float32) / 8)) + len(name)


def _toy_class(attributes: Mapping[str, Any], prefix: str, buffers: list[dict[str, Any]],
               restores: set[str]) -> tuple[Any, Any]:
    """(model class, config class) of a one-layer toy causal LM: an embedding under `<prefix>.wte`, the
    non-persistent buffers built in __init__, an lm_head, `_init_weights` covering Linear and Embedding
    (and the buffers in `restores`), plus the given class attributes."""
    import transformers
    from torch import nn
    from transformers import PreTrainedModel

    base_config = getattr(transformers, "PretrainedConfig", None) or transformers.PreTrainedConfig

    class ToyConfig(base_config):  # type: ignore[misc, valid-type]
        model_type = "pinmatrix-surface-toy"

    class ToyBuffers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for buf in buffers:
                self.register_buffer(buf["name"], _buffer_value(buf["name"]), persistent=False)

    class ToyBackbone(nn.Module):
        def __init__(self, config: Any) -> None:
            super().__init__()
            self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
            self.rotary = ToyBuffers()

    def _init_weights(self: Any, module: Any) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, 0.02)
        if isinstance(module, ToyBuffers):
            for name in restores:
                getattr(module, name).copy_(_buffer_value(name))

    def __init__(self: Any, config: Any) -> None:
        PreTrainedModel.__init__(self, config)
        setattr(self, prefix, ToyBackbone(config))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    body = {**attributes, "config_class": ToyConfig, "base_model_prefix": prefix, "__init__": __init__,
            "_init_weights": _init_weights,
            "get_input_embeddings": lambda self: getattr(self, prefix).wte,
            "get_output_embeddings": lambda self: self.lm_head,
            "forward": lambda self, input_ids=None, **kw: self.lm_head(getattr(self, prefix).wte(input_ids))}
    return type("SurfaceToyForCausalLM", (PreTrainedModel,), body), ToyConfig


def _round_trip(toy_class: Any, model: Any) -> Any:
    with tempfile.TemporaryDirectory(prefix="pinmatrix-surface-") as folder:
        model.save_pretrained(folder)
        return toy_class.from_pretrained(folder)


def check_class_forms(surface: Mapping[str, Any], *, tie_word_embeddings: bool) -> list[Finding]:
    """Two toys, so that each fact is judged on its own: one with the facts' class attributes and the
    config's embedding tying (built, saved, loaded back, still tied), one with only the facts'
    non-persistent buffers and `_init_weights` coverage (each buffer must come back from
    from_pretrained with the value __init__ gave it). The failures are transformers' own."""
    import torch

    attributes = class_forms(surface)
    prefix = attributes.get("base_model_prefix", "model")
    buffers = [b for b in surface.get("buffers", []) if b.get("method") == "__init__" and b.get("persistent") is False]
    init_weights = next(iter(surface.get("init_weights", {}).values()), None)
    restores = set(init_weights["buffers"]) if init_weights else set()
    findings: list[Finding] = []

    toy_class, toy_config = _toy_class(attributes, prefix, [], set())
    forms = Finding("class-forms:" + ", ".join(f"{k}={v!r}" for k, v in sorted(attributes.items())),
                    "class-form", True, detail={"tie_word_embeddings": tie_word_embeddings})
    findings.append(forms)
    try:
        loaded = _round_trip(toy_class, toy_class(toy_config(vocab_size=16, hidden_size=8,
                                                             tie_word_embeddings=tie_word_embeddings)))
        if tie_word_embeddings and loaded.lm_head.weight.data_ptr() != getattr(loaded, prefix).wte.weight.data_ptr():
            forms.failed(error_type="TiedWeightsNotTied",
                         message="lm_head.weight is not tied to the input embedding after from_pretrained "
                                 f"with _tied_weights_keys={attributes.get('_tied_weights_keys')!r}")
    except Exception as exc:  # noqa: BLE001 - transformers' own failure is the finding
        forms.failed(exc)

    if not buffers:
        return findings
    toy_class, toy_config = _toy_class({}, prefix, buffers, restores)
    try:
        loaded = _round_trip(toy_class, toy_class(toy_config(vocab_size=16, hidden_size=8, tie_word_embeddings=False)))
    except Exception as exc:  # noqa: BLE001
        findings.append(Finding("buffers:toy save/load", "buffer", True).failed(exc))
        return findings
    for buf in buffers:
        name = buf["name"]
        fact = Finding(f"buffer:{buf['class']}.{name}", "buffer", True, detail={
            "form": "non-persistent, built in __init__, "
                    f"{'restored' if name in restores else 'not restored'} by _init_weights"})
        got, want = getattr(getattr(loaded, prefix).rotary, name), _buffer_value(name)
        on_meta = got.device.type == "meta"
        if on_meta or not torch.equal(got.float().cpu(), want):
            seen = "meta" if on_meta else got.flatten()[:4].tolist()
            fact.failed(error_type="BufferNotInitialised",
                        message=f"non-persistent buffer {name!r} built in __init__ holds {seen} after "
                                f"from_pretrained, not the value __init__ gave it {want[:4].tolist()}: "
                                "_init_weights does not restore it")
        findings.append(fact)
    return findings


def check_surface(surface: Mapping[str, Any], *, subscript_keys: Mapping[str, Iterable[str]] | None = None,
                  tie_word_embeddings: bool = True, class_forms_check: bool = True) -> list[Finding]:
    """Every fact of one file's surface, checked against the installed transformers."""
    findings = check_imports(surface) + check_calls(surface) + check_subscripts(surface, subscript_keys or {})
    if class_forms_check and _model_classes(surface):
        findings += check_class_forms(surface, tie_word_embeddings=tie_word_embeddings)
    return findings
