"""Check each transformers fact a remote-code file depends on against the installed transformers.

The facts come from `probes/remote_code_surface.py` (ast only). Nothing of the remote code runs here;
what runs is transformers itself:

- imports:        the module imports and has the name (`from M import N` would succeed);
- calls:          `inspect.signature(callable).bind_partial(...)` with the call's positional count and
                  keyword names (a renamed or dropped keyword fails as it would at the call);
- subscripts:     a registry indexed with [] has the key the model's config asks for;
- class forms:    a one-layer toy `PreTrainedModel` with the facts' class attributes (`_tied_weights_keys`
                  and the rest), tied embeddings when the config ties them, and the facts' non-persistent
                  buffers and `_init_weights` coverage, is built (post_init), saved and loaded back; the
                  buffer must come back with the value `__init__` gave it.

Each fact that fails becomes one finding with its own signature: a catalogue entry (cause, first
transformers release where it breaks, fix, link) or a stable fingerprint. This module is generic; the
model-specific parts (which config keys a registry is indexed with) are passed in.
"""
from __future__ import annotations

import importlib
import inspect
import tempfile
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

from probes.signatures import classify

__all__ = ["Finding", "check_surface", "check_imports", "check_calls", "check_subscripts", "check_class_forms",
           "resolve_dotted"]

_MODEL_BASES = ("transformers.modeling_utils.PreTrainedModel", "transformers.PreTrainedModel")


@dataclass
class Finding:
    """One fact, checked."""
    fact: str
    kind: str                  # import | call | subscript | class-form | buffer
    ok: bool
    error_type: str = ""
    message: str = ""
    signature: str | None = None
    known: bool = False
    detail: dict[str, Any] = field(default_factory=dict)

    def failed(self, exc: BaseException | None = None, *, error_type: str = "", message: str = "") -> "Finding":
        self.ok = False
        self.error_type = error_type or (type(exc).__name__ if exc else "")
        self.message = (message or str(exc))[:2000]
        tail = "".join(traceback.format_exception(exc)[-3:]) if exc else ""
        classification = classify(self.error_type, self.message, tail)
        self.signature, self.known = classification.id, classification.known
        return self

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not out["detail"]:
            out.pop("detail")
        return out


def resolve_dotted(dotted: str) -> Any:
    """The object `a.b.c.d` names: the longest importable module prefix, then attributes. Raises the
    ImportError or AttributeError Python would raise for the same `from`-import or attribute access."""
    parts = dotted.split(".")
    module = None
    index = len(parts)
    while index > 0:
        try:
            module = importlib.import_module(".".join(parts[:index]))
            break
        except ModuleNotFoundError as exc:
            if exc.name and not ".".join(parts[:index]).startswith(exc.name):
                raise  # a dependency of the module is missing: that is the finding
            index -= 1
    if module is None:
        raise ModuleNotFoundError(f"No module named {parts[0]!r}", name=parts[0])
    obj: Any = module
    for attr in parts[index:]:
        obj = getattr(obj, attr)
    return obj


def check_imports(surface: Mapping[str, Any]) -> list[Finding]:
    findings = []
    for imp in surface.get("imports", []):
        module, name = imp["module"], imp["name"]
        finding = Finding(f"import {module}:{name}" if name else f"import {module}", "import", True,
                          detail={"scope": imp.get("scope")})
        try:
            mod = importlib.import_module(module)
            if name and not hasattr(mod, name):
                # The words Python itself uses for a failed `from M import N`, so one catalogue entry
                # matches both this check and the load that fails the same way.
                finding.failed(error_type="ImportError",
                               message=f"cannot import name '{name}' from '{module}'")
        except ImportError as exc:
            finding.failed(exc)
        findings.append(finding)
    return findings


def _signatures(obj: Any) -> list[inspect.Signature]:
    """The callable's documented signature, then, for a decorated one, the wrapper's own: what a call
    really reaches. transformers 5 wraps `PreTrainedConfig.__init__` so that it takes **kwargs although
    the wrapped function does not; binding against the wrapped one alone would report a break that the
    hub code never meets."""
    out = [inspect.signature(obj)]
    if hasattr(obj, "__wrapped__"):
        out.append(inspect.signature(obj, follow_wrapped=False))
    return out


def _binds(signatures: list[inspect.Signature], args: list[Any], kwargs: dict[str, Any]) -> TypeError | None:
    """None when some signature accepts the arguments, else the first signature's TypeError."""
    first: TypeError | None = None
    for signature in signatures:
        try:
            signature.bind_partial(*args, **kwargs)
            return None
        except TypeError as exc:
            first = first or exc
    return first


def check_calls(surface: Mapping[str, Any]) -> list[Finding]:
    """One finding per callable, and one more for each keyword it no longer takes (each keyword is a fact
    of its own: a release may drop one and rename another, and each has its own first bad release)."""
    findings = []
    for dotted, call in surface.get("calls", {}).items():
        keywords = list(call.get("keywords", []))
        finding = Finding(f"call {dotted}", "call", True,
                          detail={"keywords": keywords, "positional": call.get("positional", 0)})
        findings.append(finding)
        try:
            target = resolve_dotted(dotted)
        except (ImportError, AttributeError) as exc:
            finding.failed(exc, message=f"{dotted}: {exc}")
            continue
        try:
            signatures = _signatures(target)
        except (TypeError, ValueError):
            finding.detail["signature"] = "not introspectable (builtin); existence checked only"
            continue
        needs_self = dotted.endswith(".__init__")  # `X.__init__` binds a placeholder self first
        name = dotted.rsplit(".", 2)[-2] if needs_self else dotted.rsplit(".", 1)[-1]
        shown = f"(surface: {dotted}{signatures[0]})"
        args = [None] * (int(call.get("positional", 0)) + (1 if needs_self else 0))
        error = _binds(signatures, args, {})
        if error is not None:
            finding.failed(error_type="TypeError", message=f"{name}() {error} {shown}")
            continue
        for keyword in keywords:
            error = _binds(signatures, args, {keyword: None})
            if error is not None:
                # Python's own words for the call, so the catalogue entry also matches the real load.
                findings.append(Finding(f"call {dotted}({keyword}=)", "call", True).failed(
                    error_type="TypeError", message=f"{name}() got an unexpected keyword argument '{keyword}' {shown}"))
    return findings


def check_subscripts(surface: Mapping[str, Any], keys: Mapping[str, Iterable[str]]) -> list[Finding]:
    """`keys` maps a registry's last name (ACT2FN, ROPE_INIT_FUNCTIONS) to the keys this model's config
    looks up in it; a registry with no known keys is checked for being indexable at all."""
    findings = []
    for dotted in surface.get("subscripts", []):
        short = dotted.rsplit(".", 1)[-1]
        wanted = list(keys.get(short, []))
        finding = Finding(f"subscript {dotted}" + (f"[{', '.join(wanted)}]" if wanted else ""), "subscript",
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

    base_config = getattr(transformers, "PretrainedConfig", None) or getattr(transformers, "PreTrainedConfig")

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
    forms = Finding("class-forms " + ", ".join(f"{k}={v!r}" for k, v in sorted(attributes.items())),
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
        findings.append(Finding("buffers: toy save/load", "buffer", True).failed(exc))
        return findings
    for buf in buffers:
        name = buf["name"]
        fact = Finding(f"buffer {buf['class']}.{name} (non-persistent, built in __init__, "
                       f"{'restored' if name in restores else 'not restored'} by _init_weights)", "buffer", True)
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
