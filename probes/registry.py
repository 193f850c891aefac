"""The check registry: every check group, every check name, its group, its order and its role.

Stdlib only (the probes boundary); the host imports this module as it imports probes/signatures.py,
and reads group, order, role and route from it (docs/CONTRACTS.md §3). Nothing else lists checks.

Roles:
- `core`: the stack cannot be used for the job without it. `imports`, and the checks of the two
  EXAONE 3.5 routes (`route` set: the stack is broken only when every route fails).
- `optional`: an extra that may be broken without harming the job (a kernel, an attention backend,
  a trainer, unsloth, a speed measurement).
- `claim`: tests a statement from a guide or a vendor, not the stack (`claim` names it; the report
  lists it under "Claims tested", and it never changes a cell's status).

`route` and `backend` say which way of LoRA-training which model a check exercises; `TRAINING` names
the checks that prove a (route, backend) trains, which is what a pin by purpose requires
(pinmatrix/report/pins.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

CORE = "core"
OPTIONAL = "optional"
CLAIM = "claim"
ROLES = (CORE, OPTIONAL, CLAIM)

REMOTE_CODE = "remote-code"
LLAMAFIED = "llamafied"
EXAONE4 = "exaone4"
ROUTES = (REMOTE_CODE, LLAMAFIED, EXAONE4)
HF_PEFT = "hf-peft"
UNSLOTH = "unsloth"
BACKENDS = (HF_PEFT, UNSLOTH)


@dataclass(frozen=True)
class Group:
    name: str
    module: str          # probes/checks/<module>.py
    plain: bool          # runs in the interpreter that never imports unsloth (probes/processes.py)


# Run order, whatever order a matrix lists them in: loading a model through unsloth patches the
# model's classes for the rest of the process (on the H100 it compiled the remote-code ExaoneBlock,
# and a later HF+PEFT run took 33 s instead of 2.5 s), so every plain-transformers group comes before
# the unsloth group, and throughput (whose unsloth stack comes last) after it. In a cell that pins
# unsloth the plain groups run in their own interpreter anyway; the order is then the result's order.
GROUPS: tuple[Group, ...] = (
    Group("imports", "imports", plain=False),
    Group("kernels", "kernels", plain=True),
    Group("exaone3.5", "exaone35", plain=True),
    Group("exaone4", "exaone4", plain=True),
    Group("attention", "attention", plain=True),
    Group("lora-train", "lora_train", plain=True),
    Group("generate", "generate", plain=True),
    Group("train", "train", plain=True),
    Group("adapter", "adapter", plain=True),
    Group("unsloth", "unsloth", plain=False),
    Group("throughput", "throughput", plain=False),
)
GROUP_NAMES: tuple[str, ...] = tuple(g.name for g in GROUPS)


# A check name ending in one of these stands for a family: `.REV` one per known hub revision,
# `.SHAPE` one per extra throughput configuration (`throughput.sdpa.1x8192`, settings.throughput.configs).
FAMILY_SUFFIXES = (".REV", ".SHAPE")


@dataclass(frozen=True)
class Check:
    name: str            # ends in ".REV" for a per-revision family (exaone3.5.surface.original)
    group: str
    role: str
    route: str | None = None
    backend: str | None = None
    claim: str | None = None   # the claim id (CLAIMS) a `claim` check tests
    measures: bool = False     # a speed measurement (throughput.*): its infra never demotes a cell
    needs_gpu: bool = False    # cannot run without an accelerator: skips ("needs a GPU") on CPU
    judges: tuple[str, ...] = ()   # the FACETS it judges (an installed package, speed)

    @property
    def family(self) -> bool:
        return self.name.endswith(FAMILY_SUFFIXES)


def _c(name: str, group: str, role: str = OPTIONAL, route: str | None = None,
       backend: str | None = None, **kw: object) -> Check:
    return Check(name, group, role, route, backend, **kw)  # type: ignore[arg-type]


# Report column order. The unsloth routes of train and adapter are emitted by the unsloth group.
CHECKS: tuple[Check, ...] = (
    _c("imports", "imports", CORE),
    _c("kernel.xformers", "kernels"),
    _c("kernel.flash-attn", "kernels"),
    _c("kernel.bitsandbytes", "kernels"),
    _c("exaone3.5.surface", "exaone3.5", route=REMOTE_CODE),
    _c("exaone3.5.remote-code", "exaone3.5", CORE, REMOTE_CODE, HF_PEFT),
    _c("exaone3.5.surface.REV", "exaone3.5", route=REMOTE_CODE),
    _c("exaone3.5.remote-code.REV", "exaone3.5", route=REMOTE_CODE, backend=HF_PEFT),
    _c("exaone3.5.llamafied", "exaone3.5", CORE, LLAMAFIED, HF_PEFT),
    _c("exaone4.native", "exaone4", route=EXAONE4, backend=HF_PEFT),
    _c("unsloth.load.exaone3.5", "unsloth", route=REMOTE_CODE, backend=UNSLOTH),
    _c("unsloth.load.exaone4", "unsloth", route=EXAONE4, backend=UNSLOTH),
    _c("unsloth.llamafied", "unsloth", route=LLAMAFIED, backend=UNSLOTH),
    _c("lora-train.unsloth", "unsloth", route=REMOTE_CODE, backend=UNSLOTH),
    _c("attention.eager", "attention", route=REMOTE_CODE),
    _c("attention.sdpa", "attention", route=REMOTE_CODE),
    _c("attention.flash_attention_2", "attention", route=REMOTE_CODE),
    _c("attention.xformers", "attention", CLAIM, REMOTE_CODE, claim="xformers-attn"),
    _c("attention.xformers-kernel", "attention", route=REMOTE_CODE),
    # FlashAttention 4 (flash-attn-4, CuTe DSL, Hopper+): on the llamafied model and native EXAONE 4;
    # the remote code's attempt is recorded in the evidence (probes/checks/attention.py says why)
    _c("attention.flash_attention_4", "attention", route=LLAMAFIED),
    _c("attention.flash_attention_4-exaone4", "attention", route=EXAONE4),
    _c("lora-train.hf-peft", "lora-train", CORE, REMOTE_CODE, HF_PEFT),
    _c("lora-train.hf-peft-llamafied", "lora-train", CORE, LLAMAFIED, HF_PEFT),
    _c("generate", "generate", route=REMOTE_CODE),
    _c("train.hf-trainer", "train", route=REMOTE_CODE, backend=HF_PEFT),
    _c("train.hf-trainer-llamafied", "train", route=LLAMAFIED, backend=HF_PEFT),
    _c("train.trl-sft", "train", route=REMOTE_CODE, backend=HF_PEFT),
    _c("train.trl-sft-llamafied", "train", route=LLAMAFIED, backend=HF_PEFT),
    _c("train.trl-sft.exaone4", "train", route=EXAONE4, backend=HF_PEFT),
    _c("train.qlora", "train", route=REMOTE_CODE, backend=HF_PEFT),
    _c("train.qlora-llamafied", "train", route=LLAMAFIED, backend=HF_PEFT),
    _c("train.trl-sft.unsloth", "unsloth", route=REMOTE_CODE, backend=UNSLOTH),
    _c("train.trl-sft.unsloth-llamafied", "unsloth", route=LLAMAFIED, backend=UNSLOTH),
    _c("train.qlora.unsloth", "unsloth", route=LLAMAFIED, backend=UNSLOTH),
    _c("adapter.roundtrip", "adapter", route=REMOTE_CODE, backend=HF_PEFT),
    _c("adapter.roundtrip-llamafied", "adapter", route=LLAMAFIED, backend=HF_PEFT),
    _c("adapter.unsloth-merged", "unsloth", route=LLAMAFIED, backend=UNSLOTH),
    _c("throughput.sdpa", "throughput", route=REMOTE_CODE, backend=HF_PEFT, measures=True),
    _c("throughput.sdpa-llamafied", "throughput", route=LLAMAFIED, backend=HF_PEFT, measures=True),
    _c("throughput.eager", "throughput", route=REMOTE_CODE, backend=HF_PEFT, measures=True),
    _c("throughput.flash_attention_2", "throughput", route=REMOTE_CODE, backend=HF_PEFT,
       measures=True),
    _c("throughput.trainer", "throughput", route=REMOTE_CODE, backend=HF_PEFT, measures=True),
    _c("throughput.qlora", "throughput", route=REMOTE_CODE, backend=HF_PEFT, measures=True),
    # the same QLoRA without prepare_model_for_kbit_training (its weights that are not 4-bit stay bf16)
    _c("throughput.qlora-no-prepare", "throughput", route=LLAMAFIED, backend=HF_PEFT, measures=True),
    # unsloth's Llama fast path (the only fast route for EXAONE 3.5): the llamafied layout
    _c("throughput.unsloth", "throughput", route=LLAMAFIED, backend=UNSLOTH, measures=True),
    _c("throughput.unsloth-qlora", "throughput", route=LLAMAFIED, backend=UNSLOTH, measures=True),
    # the memory-limited setting, FlashAttention 4, Liger Kernel (all on the llamafied model)
    _c("throughput.sdpa-gc", "throughput", route=LLAMAFIED, backend=HF_PEFT, measures=True),
    _c("throughput.flash_attention_4", "throughput", route=LLAMAFIED, backend=HF_PEFT, measures=True),
    _c("throughput.liger", "throughput", route=LLAMAFIED, backend=HF_PEFT, measures=True),
    _c("throughput.liger-fa4", "throughput", route=LLAMAFIED, backend=HF_PEFT, measures=True),
    # native EXAONE 4 at its own shape, with its own sdpa baseline
    _c("throughput.sdpa-exaone4", "throughput", route=EXAONE4, backend=HF_PEFT, measures=True),
    _c("throughput.flash_attention_4-exaone4", "throughput", route=EXAONE4, backend=HF_PEFT,
       measures=True),
    # every speed check above again at each extra configuration of settings.throughput.configs
    *(_c(f"{name}.SHAPE", "throughput", route=route, backend=HF_PEFT if not name.endswith("unsloth")
         else UNSLOTH, measures=True)
      for name, route in (("throughput.sdpa", REMOTE_CODE), ("throughput.sdpa-llamafied", LLAMAFIED),
                          ("throughput.flash_attention_2", REMOTE_CODE),
                          ("throughput.sdpa-gc", LLAMAFIED),
                          ("throughput.flash_attention_4", LLAMAFIED), ("throughput.liger", LLAMAFIED),
                          ("throughput.liger-fa4", LLAMAFIED), ("throughput.unsloth", LLAMAFIED),
                          ("throughput.sdpa-exaone4", EXAONE4),
                          ("throughput.flash_attention_4-exaone4", EXAONE4))),
)

# "Judged on" (docs/CONTRACTS.md §3). What a check exercises besides its route: the installed value
# of a package axis, or the speed of a stack. A facet -> the package axis whose installed value it
# judges (None: speed, which no axis installs). A cell where that value is installed but none of
# the facet's checks ran (each skipped, e.g. "needs a GPU", or absent) never counts it as working:
# summary.json `not_judged` says so (pinmatrix/status.py `not_judged`), and every format with it.
SPEED = "speed"
FACETS: dict[str, str | None] = {
    "unsloth": "unsloth",
    "xformers": "xformers",
    "flash-attn": "flash-attn",
    "flash-attn-4": "flash-attn-4",
    "liger-kernel": "liger-kernel",
    "bitsandbytes 4-bit": "bitsandbytes",
    "trl": "trl",   # SFTTrainer: trl 1.15's fused loss needs a GPU that triton can drive
    SPEED: None,
}
_QLORA = ("train.qlora", "train.qlora-llamafied", "train.qlora.unsloth", "throughput.qlora",
          "throughput.qlora-no-prepare", "throughput.unsloth-qlora")


def _judged_facets(check: Check) -> tuple[str, ...]:
    """The facets a check judges, from its name: one rule per facet, so a new check of the same
    kind (a new throughput stack, a new unsloth route) is counted without a second list."""
    name = check.name
    found = []
    if check.group == UNSLOTH or check.backend == UNSLOTH:
        found.append("unsloth")
    if name in ("kernel.xformers", "attention.xformers-kernel"):
        found.append("xformers")
    if name in ("kernel.flash-attn", "attention.flash_attention_2") or name.startswith(
            "throughput.flash_attention_2"):
        found.append("flash-attn")
    if "flash_attention_4" in name or name.startswith("throughput.liger-fa4"):
        found.append("flash-attn-4")
    if name.startswith("throughput.liger"):
        found.append("liger-kernel")
    if name in _QLORA:
        found.append("bitsandbytes 4-bit")
    if name.startswith("train.trl-sft"):
        found.append("trl")
    if check.measures:
        found.append(SPEED)
    return tuple(found)


# Checks that cannot run without an accelerator (each calls ctx.require_gpu(), or its package
# refuses a host without one: unsloth). kernel.xformers and kernel.bitsandbytes try the CPU first.
def _needs_gpu(check: Check) -> bool:
    return (check.measures or check.group == UNSLOTH or check.backend == UNSLOTH
            or check.name in _QLORA
            or check.name in ("kernel.flash-attn", "attention.flash_attention_2",
                              "attention.xformers-kernel", "attention.flash_attention_4",
                              "attention.flash_attention_4-exaone4"))


CHECKS = tuple(replace(c, needs_gpu=_needs_gpu(c), judges=_judged_facets(c)) for c in CHECKS)
_BY_NAME = {c.name: c for c in CHECKS if not c.family}
_FAMILIES = [(c.name[: c.name.rindex(".") + 1], c) for c in CHECKS if c.family]
_ORDER = {c.name: i for i, c in enumerate(CHECKS)}
SHAPE_RE = re.compile(r"^[1-9][0-9]*x[1-9][0-9]*$")

# What proves a (route, backend) LoRA-trains: every `loads` check passed, and at least one of
# `trains` passed (a lora-train / train.* bar on the trainer's logged losses; for unsloth's Llama
# path, whose only other trainer check comes with the train group, also `throughput.unsloth`:
# LoRA steps through unsloth, timed). No check trains EXAONE 4 through unsloth (unsloth.load.exaone4
# loads it only), so that pair is absent.
TRAINING: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]] = {
    (REMOTE_CODE, HF_PEFT): (("exaone3.5.remote-code",), ("lora-train.hf-peft",)),
    (LLAMAFIED, HF_PEFT): (("exaone3.5.llamafied",), ("lora-train.hf-peft-llamafied",)),
    (EXAONE4, HF_PEFT): (("exaone4.native",), ("train.trl-sft.exaone4",)),
    (REMOTE_CODE, UNSLOTH): (("unsloth.load.exaone3.5",),
                             ("lora-train.unsloth", "train.trl-sft.unsloth")),
    (LLAMAFIED, UNSLOTH): (("unsloth.llamafied",),
                           ("train.trl-sft.unsloth-llamafied", "throughput.unsloth")),
}
# The EXAONE 3.5 routes of the cell status: the core checks that carry a route.
EXAONE35_ROUTES: dict[str, tuple[str, ...]] = {
    route: tuple(c.name for c in CHECKS if c.role == CORE and c.route == route)
    for route in (REMOTE_CODE, LLAMAFIED)
}

# Statements from a guide or a vendor that the matrix tests. `checks`: the checks that test it
# directly; `speed`: the throughput stack whose speedup over `throughput.sdpa` the claim states.
CLAIMS: dict[str, dict[str, object]] = {
    "unsloth-speed": {
        "claim": "Unsloth: 2-5x faster LoRA training (\"속도 2-5배 향상\")",
        "source": "team guide (/work/shared/seed/), scenario 1 \"Unsloth 호환\"",
        "checks": ("unsloth.llamafied", "lora-train.unsloth"),
        "speed": "unsloth", "range": (2.0, 5.0),
    },
    "xformers-attn": {
        "claim": "xFormers: 1.2-2x faster through "
                 "from_pretrained(..., attn_implementation=\"xformers\")",
        "source": "team guide (/work/shared/seed/), strategy 1 \"xFormers 사용 (권장)\"",
        "checks": ("attention.xformers", "attention.xformers-kernel"),
        "speed": None, "range": (1.2, 2.0),
    },
    "fa2-speed": {
        "claim": "Flash Attention 2: 1.5-2.5x faster through "
                 "attn_implementation=\"flash_attention_2\"",
        "source": "team guide (/work/shared/seed/), strategy 2 \"Flash Attention 수동 설정\"",
        "checks": ("attention.flash_attention_2",),
        "speed": "flash_attention_2", "range": (1.5, 2.5),
    },
}


def lookup(name: str) -> Check | None:
    """The registry entry of a check name (a per-revision name matches its `.REV` family, a
    configuration's `throughput.X.1x8192` its `.SHAPE` family)."""
    found = _BY_NAME.get(name)
    if found is not None:
        return found
    for prefix, family in _FAMILIES:
        rest = name[len(prefix):]
        if name.startswith(prefix) and rest and "." not in rest:
            if family.name.endswith(".SHAPE") and not SHAPE_RE.match(rest):
                continue
            return family
    return None


def shape_suffix(batch: int, seq: int) -> str:
    """The name suffix of an extra throughput configuration: `1x8192`."""
    return f"{batch}x{seq}"


def speed_baselines(name: str) -> tuple[str, ...]:
    """The HF+PEFT sdpa checks a speed check's speedup is taken against, in order of preference: the
    same model family at the same configuration. EXAONE 3.5 (remote code or llamafied, same weights,
    same math): `throughput.sdpa`, else `throughput.sdpa-llamafied`; native EXAONE 4:
    `throughput.sdpa-exaone4`. An extra configuration's check (`throughput.liger.1x8192`) is compared
    with the baseline of that configuration (`throughput.sdpa.1x8192`)."""
    entry = lookup(name)
    if entry is None or not entry.measures:
        return ()
    suffix = ""
    if entry.name.endswith(".SHAPE"):
        suffix = "." + name.rsplit(".", 1)[1]
    if entry.route == EXAONE4:
        return (f"throughput.sdpa-exaone4{suffix}",)
    return (f"throughput.sdpa{suffix}", f"throughput.sdpa-llamafied{suffix}")


def judges(name: str) -> tuple[str, ...]:
    """The facets a check name judges (FACETS); () for a name the registry does not know."""
    entry = lookup(name)
    return entry.judges if entry else ()


def needs_gpu(name: str) -> bool:
    entry = lookup(name)
    return bool(entry and entry.needs_gpu)


def group_of(name: str) -> str | None:
    """The group that emits `name`; a group-level failure record is named after its group."""
    if name in GROUP_NAMES:
        return name
    entry = lookup(name)
    return entry.group if entry else None


def role_of(name: str) -> str:
    """core / optional / claim; a name the registry does not know is optional."""
    if name in GROUP_NAMES:  # a whole group failed to list its checks
        return CORE if name == "imports" else OPTIONAL
    entry = lookup(name)
    return entry.role if entry else OPTIONAL


def is_measurement(name: str) -> bool:
    entry = lookup(name)
    return bool(entry and entry.measures)


def order_key(name: str) -> tuple[int, str]:
    """Report column order: registry order (a revision family in its family's place), unknown
    names after, sorted."""
    entry = lookup(name)
    return (_ORDER[entry.name], name) if entry else (len(_ORDER), name)


def run_order(groups: list[str]) -> list[str]:
    """`groups` in registry order; unknown names keep their place at the end."""
    return [g for g in GROUP_NAMES if g in groups] + [g for g in groups if g not in GROUP_NAMES]
