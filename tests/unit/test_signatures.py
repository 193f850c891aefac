"""The signature catalogue and classifier (docs/CONTRACTS.md §4)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from probes import signatures
from probes.signatures import (
    CatalogueError,
    classify,
    describe,
    fingerprint,
    load_catalogue,
    normalise,
    raising_frame,
)

# Real-world messages (as reported in the linked issues / transformers source) -> expected id.
KNOWN = [
    # transformers' own import-time dependency check (utils/versions.py, 4.57.6's wording)
    (
        "ImportError",
        "tokenizers>=0.22.0,<=0.23.0 is required for a normal functioning of this module, but "
        "found tokenizers==0.23.2.",
        "transformers-dependency-version-check",
    ),
    # EXAONE 3.5 remote code on transformers 5.x: the messages seen when loading the
    # revision-faithful
    # fixtures, and the surface check's own words for the same facts (probes/checks/surface.py).
    (
        "AttributeError",
        "'list' object has no attribute 'keys'",
        "transformers-tied-weights-keys-list",
    ),
    (
        "AttributeError",
        "type object 'DynamicCache' has no attribute 'from_legacy_cache'",
        "transformers-dynamiccache-from-legacy-cache-removed",
    ),
    (
        "TypeError",
        "create_causal_mask() got an unexpected keyword argument 'input_embeds'",
        "transformers-create-causal-mask-input-embeds-renamed",
    ),
    (
        "TypeError",
        "create_causal_mask() got an unexpected keyword argument 'cache_position' (surface: "
        "transformers.masking_utils.create_causal_mask(config, inputs_embeds, attention_mask, *, "
        "past_key_values))",
        "transformers-create-causal-mask-cache-position-removed",
    ),
    (
        "BufferNotInitialised",
        "non-persistent buffer 'inv_freq' built in __init__ holds [0.0, 0.0, 0.0, 0.0] after "
        "from_pretrained, not the value __init__ gave it [8.0, 7.1, 7.01, 7.001]: _init_weights "
        "does not restore it",
        "transformers-non-persistent-buffer-not-initialised",
    ),
    (
        "ValueError",
        "'aimv2' is already used by a Transformers config, pick another name.",
        "unsloth-aimv2-config-clash",
    ),
    (
        "RuntimeError",
        "xFormers can't load C++/CUDA extensions. xFormers was built for:\n    PyTorch 2.1.2+cu121 "
        "with CUDA 1201 (you have 2.1.2+cpu)",
        "xformers-extensions-not-loaded",
    ),
    (
        "NotImplementedError",
        "No operator found for `memory_efficient_attention_forward` with inputs:",
        "xformers-no-operator",
    ),
    (
        "NotImplementedError",
        "No operator found for `memory_efficient_attention_forward` with inputs:\n"
        "`cutlassF-pt` is not supported because:\n    xFormers wasn't build with CUDA support",
        "xformers-cuda-ops-not-built-for-this-torch",
    ),
    (
        "ImportError",
        "/opt/lib/python3.12/site-packages/flash_attn_2_cuda.cpython-312-x86_64-linux-gnu.so: "
        "undefined symbol: "
        "_ZN3c105ErrorC2ENS_14SourceLocationENSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE",
        "flash-attn-abi-mismatch",
    ),
    # each message as its source writes it: unsloth 2026.10.9 unsloth/models/_utils.py
    # (printed at import, recorded by probes/environment.py), flash-attn-4 4.0.0b36
    # flash_attn/cute/interface.py `import cutlass.cute as cute`, transformers 5.17.0
    # modeling_utils.py _flash_attn_can_dispatch, liger-kernel 0.8.5 transformers/monkey_patch.py
    (
        "Notice",
        "printed: Unsloth: Your Flash Attention 2 installation seems to be broken. Using Xformers "
        "instead. No performance changes will be seen.",
        "unsloth-fa2-broken-only-fa4-installed",
    ),
    ("ModuleNotFoundError", "No module named 'cutlass.cute'", "flash-attn-4-cutlass-dsl-missing"),
    (
        "ValueError",
        "ExaoneForCausalLM does not support Flash Attention 4 yet. Please request to add support "
        "where the model is hosted",
        "transformers-remote-code-no-flash-attn-flag",
    ),
    (
        "ImportError",
        "liger-kernel requires transformers >= 5.0.0, got 4.57.6. Please install an older version "
        "of liger-kernel that is compatible with your transformers version.",
        "liger-kernel-needs-transformers-5",
    ),
    (
        "UserWarning",
        "WARNING: Unsloth should be imported before transformers, peft to ensure all optimizations "
        "are applied.",
        "unsloth-import-order",
    ),
    (
        "ValueError",
        'Specified `attn_implementation="xformers"` is not supported. The only possible arguments '
        'are '
        '`attn_implementation="eager"`',
        "transformers-attn-implementation-unsupported",
    ),
    (
        "ValueError",
        "ExaoneForCausalLM does not support an attention implementation through "
        "torch.nn.functional.scaled_dot_product_attention yet.",
        "transformers-attn-implementation-unsupported",
    ),
    (
        "ImportError",
        "FlashAttention2 has been toggled on, but it cannot be used due to the following error: "
        "the package flash_attn seems to be not installed.",
        "transformers-flash-attn-unavailable",
    ),
    (
        "ValueError",
        "The checkpoint you are trying to load has model type `exaone4` but Transformers does not "
        "recognize this architecture.",
        "transformers-unknown-architecture",
    ),
    (
        "ValueError",
        "The repository /tmp/exaone contains custom code which must be executed to correctly load "
        "the "
        "model. You can inspect the repository content at /tmp/exaone .",
        "transformers-trust-remote-code-required",
    ),
    (
        "RuntimeError",
        "\n        CUDA Setup failed despite GPU being available. Please run the following command",
        "bitsandbytes-cuda-setup",
    ),
    (
        "ImportError",
        "cannot import name 'triton_key' from 'triton.compiler.compiler' "
        "(/usr/lib/python3/site-packages/triton/compiler/compiler.py)",
        "triton-compiler-api-mismatch",
    ),
    (
        "NotImplementedError",
        "Unsloth cannot find any torch accelerator? You need a GPU.",
        "unsloth-no-accelerator",
    ),
    (
        "OutOfMemoryError",
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB",
        "cuda-out-of-memory",
    ),
    (
        "RuntimeError",
        "Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU",
        "no-gpu-driver",
    ),
    ("CheckTimeout", "check exceeded its timeout of 600 s", "check-timeout"),
    (
        "ConnectionError",
        "HTTPSConnectionPool(host='huggingface.co', port=443): Max retries exceeded with url: /api",
        "network-unreachable",
    ),
    # Trainer-level breaks: the messages transformers 5.0.0 and trl 0.24.0 raise here,
    # and unsloth's.
    (
        "TypeError",
        "Trainer.__init__() got an unexpected keyword argument 'tokenizer'",
        "transformers-trainer-tokenizer-removed",
    ),
    (
        "TypeError",
        "SFTTrainer.__init__() got an unexpected keyword argument 'tokenizer'",
        "trl-sfttrainer-tokenizer-removed",
    ),
    (
        "TypeError",
        "SFTTrainer.__init__() got an unexpected keyword argument 'dataset_text_field'",
        "trl-sfttrainer-args-moved-to-sftconfig",
    ),
    (
        "TypeError",
        "SFTConfig.__init__() got an unexpected keyword argument 'max_seq_length'",
        "trl-sftconfig-max-seq-length-removed",
    ),
    (
        "ImportError",
        "cannot import name 'DataCollatorForCompletionOnlyLM' from 'trl' "
        "(/venv/lib/python3.12/site-packages/trl/__init__.py)",
        "trl-completion-only-collator-removed",
    ),
    (
        "RuntimeError",
        "Unsloth: Please file a bug report! Error patching SFTTrainer",
        "unsloth-trl-outside-cap",
    ),
    (
        "RuntimeError",
        "Unsloth: Please file a bug report - `formatting_func` does not exist!",
        "unsloth-trl-outside-cap",
    ),
    # the head alone is too generic; the line of the traceback that raised it names trl's fused LM
    # head
    (
        "AttributeError",
        "'NoneType' object has no attribute 'apply'\n  File "
        "\"/venv/site-packages/trl/trainer/utils.py\", "
        "line 1638, in _fused_forward\n    per_token = _ChunkedLogProbFunction.apply(",
        "trl-sft-fused-lm-head-needs-triton",
    ),
    (
        "RuntimeError",
        "0 active drivers ([]). There should only be one.\n  File "
        "\"/venv/site-packages/trl/trainer/utils.py\", "
        "line 1638, in _fused_forward\n    per_token = _ChunkedLogProbFunction.apply(",
        "trl-sft-fused-lm-head-needs-triton",
    ),
    # train.trl-sft's own words (probes/checks/train.py) for trl 0.24.0 on transformers 5.5.0
    (
        "Failed",
        "completion-only loss (completion_only_loss) masked [2, 2] prompt tokens per example "
        "where the chat "
        "template's prompts have [35, 38]: the loss is taken on prompt tokens",
        "trl-completion-mask-is-not-the-prompt-on-transformers5",
    ),
    # train.trl-sft.unsloth (remote code) after a Llama-layout load through unsloth, H100, unsloth
    # 2026.10.9 + transformers 4.57.6
    (
        "TypeError",
        "ExaoneForCausalLM.forward() got an unexpected keyword argument 'causal_mask'",
        "unsloth-peft-forward-causal-mask-remote-code",
    ),
    # throughput's memory estimate refusing a configuration before allocating
    (
        "Infra",
        "estimated peak 143.9 GiB at 4x2048 (eager) exceeds the card's 139.8 GiB: not run, nothing "
        "allocated (GiB: weights 4.5, lora_state 0.3, logits 10.9, activations 38.2, "
        "eager_scores 90.0; probes/checks/memory_estimate.py)",
        "throughput-estimate-exceeds-card",
    ),
]
INFRA = {
    "unsloth-no-accelerator",
    "cuda-out-of-memory",
    "no-gpu-driver",
    "check-timeout",
    "network-unreachable",
    "transformers-dependency-version-check",
    "throughput-estimate-exceeds-card",
}


def test_catalogue_entries_are_complete() -> None:
    entries = load_catalogue()
    assert len(entries) >= 12
    for entry in entries:
        assert set(signatures.ENTRY_KEYS) <= set(entry), entry["id"]
        assert entry["link"].startswith("https://"), entry["id"]
        assert entry["cause"] and entry["fix"] and entry["affected"], entry["id"]
        re.compile(entry["pattern"])


@pytest.mark.parametrize("exc_type,message,expected", KNOWN, ids=[k[2] + "-" + k[0] for k in KNOWN])
def test_known_messages_classify(exc_type, message, expected) -> None:
    found = classify(exc_type, message)
    assert (found.id, found.known) == (expected, True)
    assert found.infra is (expected in INFRA)


def test_every_seed_entry_is_exercised() -> None:
    assert {entry["id"] for entry in load_catalogue()} <= {k[2] for k in KNOWN}


def test_head_wins_over_traceback() -> None:
    # The traceback mentions an xformers warning printed earlier; the exception itself is an OOM.
    found = classify(
        "OutOfMemoryError", "CUDA out of memory.", "WARNING xFormers can't load C++/CUDA extensions"
    )
    assert found.id == "cuda-out-of-memory"
    # With an unknown head, the traceback decides (a chained cause).
    found = classify(
        "RuntimeError",
        "Failed to import transformers.models.bloom",
        "ImportError: /x/flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEi",
    )
    assert found.id == "flash-attn-abi-mismatch"


def test_fingerprint_groups_the_same_failure_across_cells() -> None:
    a = classify(
        "KeyError",
        "'model.layers.3.q' missing at 0x7f3a9c in /venvs/a/lib/x.py line 12 after 4 steps",
        'Traceback:\n  File "/venvs/a/lib/x.py", line 12, in load\n',
    )
    b = classify(
        "KeyError",
        "'model.layers.17.q' missing at 0x55aa01 in /opt/b/site/y.py line 990 after 16 steps",
        'Traceback:\n  File "/opt/b/site/x.py", line 990, in load\n',
    )
    assert a == b and not a.known and not a.infra
    assert re.fullmatch(r"fp-[0-9a-f]{12}", a.id)


def test_fingerprint_separates_different_failures() -> None:
    assert fingerprint("KeyError", "missing weight") != fingerprint("ValueError", "missing weight")
    assert fingerprint("KeyError", "missing weight") != fingerprint(
        "KeyError", "weight has wrong shape"
    )


def test_normalise_replaces_what_varies_between_runs_and_keeps_names() -> None:
    text = normalise(
        "'foo' at 0xDEADbeef in /a/b/c.py:12 and C:\\x\\y.dll, \"bar\" `baz` 3.5e "
        "float16 flash_attn_2"
    )
    assert text == (
        "'foo' at <addr> in <path>:<n> and <path>, \"bar\" `baz` <n>e float16 flash_attn_2"
    )


def test_two_different_missing_modules_get_different_fingerprints() -> None:
    """On CPU, kernel.xformers fails with flash_attn's module missing; a remote-code file fails
    with a transformers module gone. Two causes: the module's name tells them apart."""
    xformers = classify("ModuleNotFoundError", "No module named 'flash_attn.flash_attn_interface'")
    gone = classify(
        "ModuleNotFoundError", "No module named 'transformers.modeling_attn_mask_utils'"
    )
    assert not xformers.known and not gone.known
    assert xformers.id != gone.id


def test_the_raising_frame_tells_causes_apart_its_line_and_folder_do_not() -> None:
    def tb(path: str, line: int, function: str) -> str:
        return f'Traceback (most recent call last):\n  File "{path}", line {line}, in {function}\n'

    here = classify("ValueError", "bad", tb("/venv/a/lib/transformers/x.py", 10, "load"))
    again = classify("ValueError", "bad", tb("/other/b/site/transformers/x.py", 99, "load"))
    elsewhere = classify("ValueError", "bad", tb("/venv/a/lib/transformers/x.py", 10, "save"))
    assert here.id == again.id != elsewhere.id
    assert raising_frame(tb("/venv/a/lib/transformers/x.py", 10, "load")) == "x.py:load"


def test_describe() -> None:
    entry = describe("unsloth-aimv2-config-clash")
    assert entry is not None and "3015" in entry["link"]
    assert describe("fp-000000000000") is None


def test_bad_catalogue_names_file_and_entry(tmp_path: Path) -> None:
    bad = tmp_path / "signatures.json"
    bad.write_text(
        json.dumps(
            [
                {
                    "id": "x",
                    "pattern": "(",
                    "cause": "",
                    "affected": "",
                    "fix": "",
                    "link": "",
                    "infra": False,
                    "means": "stack",
                }
            ]
        )
    )
    with pytest.raises(CatalogueError, match=r"signatures\.json: entry 0 \('x'\): bad pattern"):
        load_catalogue(bad)
    bad.write_text('[\n{"id": 1,,}\n]')
    with pytest.raises(CatalogueError, match=r"signatures\.json:2: not valid JSON"):
        load_catalogue(bad)
    bad.write_text(json.dumps([{"id": "x"}]))
    with pytest.raises(CatalogueError, match="missing pattern"):
        load_catalogue(bad)


def test_classification_unpacks_as_the_contract_pair() -> None:
    sig, known = classify(
        "ValueError", "'aimv2' is already used by a Transformers config, pick another name."
    )
    assert (sig, known) == ("unsloth-aimv2-config-clash", True)


def test_xformers_wheel_for_another_torch_is_named_not_lumped_with_no_operator() -> None:
    # The message xformers 0.0.35 (built for torch 2.10.0+cu128) gave on the lent H100, torch
    # 2.11.0+cu130.
    message = (
        "No operator found for `memory_efficient_attention_forward` with inputs:\n"
        "     query       : shape=(1, 128, 4, 64) (torch.bfloat16)\n"
        "`fa2F@2.5.7-pt` is not supported because:\n    xFormers wasn't build with CUDA support\n"
    )
    assert (
        signatures.classify("NotImplementedError", message).id
        == "xformers-cuda-ops-not-built-for-this-torch"
    )
    assert (
        signatures.classify(
            "NotImplementedError",
            "No operator found for `memory_efficient_attention_forward` "
            "with inputs: unsupported head dim 1024",
        ).id
        == "xformers-no-operator"
    )


def test_a_missing_name_has_one_fingerprint_wherever_it_is_used() -> None:
    """The remote code's file fails to import a module that is gone; the surface check, executing
    the same import, raises it in its own frame. The message names the module: one signature."""

    def tb(path: str, function: str) -> str:
        return f'Traceback (most recent call last):\n  File "{path}", line 3, in {function}\n'

    for exc_type, message in (
        ("ModuleNotFoundError", "No module named 'transformers.modeling_attn_mask_utils'"),
        ("AttributeError", "type object 'DynamicCacheX' has no attribute 'from_legacy'"),
        ("TypeError", "create_mask() got an unexpected keyword argument 'input_embeds'"),
    ):
        load = classify(exc_type, message, tb("/m/modules/x/modeling_x.py", "<module>"))
        surface = classify(exc_type, message, tb("<string>", "<module>"))
        assert load.id == surface.id, exc_type
    # a message that does not name its place keeps the frame
    a = classify("AttributeError", "'NoneType' object has no attribute 'shape'", tb("/a/x.py", "f"))
    b = classify("AttributeError", "'NoneType' object has no attribute 'shape'", tb("/a/x.py", "g"))
    assert a.id != b.id
