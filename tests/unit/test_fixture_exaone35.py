"""The clean-room EXAONE 3.5 fixtures (one per known hub revision): hub-compatible names/config,
load as
remote code, train, generate, and the llamafied copy computes the same logits. Tiny sizes, CPU,
fp32.

They run where the hub's code runs: transformers 4.x. On 5.x the fixtures fail as the hub code
does; that
is tested on real venvs (tests/integration/test_exaone35_verdicts.py)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

# Keep transformers' copies of remote code out of the user's cache (only effective before
# transformers loads).
if "transformers" not in sys.modules:
    os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="pinmatrix-hfmodules-"))

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from probes.fixtures.checkpoints import (  # noqa: E402
    EXAONE35_2P4B_SHAPE,
    EXAONE35_REVISIONS,
    llama_name,
    llamafy_exaone35,
    write_exaone35,
)

REMOTE_CODE_LOADS = transformers.__version__.startswith("4.")
needs_loading_remote_code = pytest.mark.skipif(
    not REMOTE_CODE_LOADS, reason="the hub's remote code fails on transformers 5"
)

# Parity bar for the llamafied copy: identical math in fp32, so only summation-order noise is
# allowed.
LLAMAFY_ATOL = 1e-5

HUB_CONFIG_FIELDS = {
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "activation_function",
    "layer_norm_epsilon",
    "max_position_embeddings",
    "rope_theta",
    "rope_scaling",
    "embed_dropout",
    "attention_dropout",
    "initializer_range",
    "use_cache",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "auto_map",
    "architectures",
}


def expected_parameter_names(layers: int) -> set[str]:
    names = {"transformer.wte.weight", "transformer.ln_f.weight", "lm_head.weight"}
    for i in range(layers):
        p = f"transformer.h.{i}."
        names |= {p + "ln_1.weight", p + "ln_2.weight"}
        names |= {
            f"{p}attn.attention.{m}.weight" for m in ("q_proj", "k_proj", "v_proj", "out_proj")
        }
        names |= {f"{p}mlp.{m}.weight" for m in ("c_fc_0", "c_fc_1", "c_proj")}
    return names


@pytest.fixture(scope="module", params=EXAONE35_REVISIONS)
def fixture_dir(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    return write_exaone35(
        tmp_path_factory.mktemp(f"fx-{request.param}") / "EXAONE-3.5-2.4B-Instruct",
        seed=0,
        revision=request.param,
    )


@pytest.fixture(scope="module")
def model(fixture_dir):
    from transformers import AutoModelForCausalLM

    if not REMOTE_CODE_LOADS:
        pytest.skip("the hub's remote code fails on transformers 5")
    return (
        AutoModelForCausalLM.from_pretrained(str(fixture_dir), trust_remote_code=True)
        .float()
        .eval()
    )


def ids(batch: int = 2, seq: int = 12, seed: int = 0):
    return torch.randint(8, 512, (batch, seq), generator=torch.Generator().manual_seed(seed))


def set_attention(m, impl: str) -> None:
    """set_attn_implementation where transformers has it (>= 4.54); older ones read the config
    field."""
    if hasattr(m, "set_attn_implementation"):
        m.set_attn_implementation(impl)
    else:
        m.config._attn_implementation = impl


def test_config_json_has_hub_fields_and_auto_map(fixture_dir) -> None:
    config = json.loads((fixture_dir / "config.json").read_text())
    assert set(config) >= HUB_CONFIG_FIELDS
    assert config["model_type"] == "exaone" and config["activation_function"] == "silu"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_exaone.ExaoneForCausalLM"
    assert (fixture_dir / "modeling_exaone.py").is_file() and (
        fixture_dir / "configuration_exaone.py"
    ).is_file()


def test_loads_as_remote_code_with_hub_module_names(model, fixture_dir) -> None:
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    assert type(model).__name__ == "ExaoneForCausalLM"
    assert set(dict(model.named_parameters(remove_duplicate=False))) == expected_parameter_names(2)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr(), (
        "lm_head must be tied"
    )
    from safetensors import safe_open

    with safe_open(str(fixture_dir / "model.safetensors"), "pt") as f:
        stored = set(f.keys())
    assert stored == expected_parameter_names(2) - {"lm_head.weight"}


@needs_loading_remote_code
def test_tokenizer_loads_and_round_trips(fixture_dir) -> None:
    from transformers import AutoTokenizer

    # transformers 5 reads config.json first; EXAONE's needs remote code (true of the hub model as
    # well).
    tok = AutoTokenizer.from_pretrained(str(fixture_dir), trust_remote_code=True)
    encoded = tok("LoRA fine-tuning of EXAONE").input_ids
    assert max(encoded) < 512 and tok.decode(encoded) == "LoRA fine-tuning of EXAONE"
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("[|assistant|]")


@needs_loading_remote_code
@pytest.mark.parametrize("checkpointing", [False, True])
def test_trains_a_step_with_labels(fixture_dir, checkpointing) -> None:
    from transformers import AutoModelForCausalLM

    m = (
        AutoModelForCausalLM.from_pretrained(str(fixture_dir), trust_remote_code=True)
        .float()
        .train()
    )
    if checkpointing:
        m.gradient_checkpointing_enable()
        assert m.is_gradient_checkpointing
    batch = ids(seed=3)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(4):
        loss = m(input_ids=batch, labels=batch).loss
        loss.backward()
        grads = {n: p.grad for n, p in m.named_parameters()}
        assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), (
            "every weight gets a gradient"
        )
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses


def test_loss_matches_manual_cross_entropy(model) -> None:
    batch = ids(seed=4)
    out = model(input_ids=batch, labels=batch)
    manual = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].reshape(-1, 512), batch[:, 1:].reshape(-1)
    )
    assert torch.allclose(out.loss, manual, atol=1e-6)


def test_attention_backends_agree_and_respect_causality(model, fixture_dir) -> None:
    """The hub's code picks its attention class when a layer is built, so each backend is its own
    load."""
    from transformers import AutoModelForCausalLM

    batch = ids(seed=5)
    outs = {}
    for impl in ("eager", "sdpa"):
        m = (
            AutoModelForCausalLM.from_pretrained(
                str(fixture_dir), trust_remote_code=True, attn_implementation=impl
            )
            .float()
            .eval()
        )
        assert m.config._attn_implementation == impl
        with torch.no_grad():
            outs[impl] = m(input_ids=batch).logits
    model = m
    assert (outs["eager"] - outs["sdpa"]).abs().max() < 1e-5
    changed = batch.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 512
    with torch.no_grad():
        later = model(input_ids=changed).logits
    assert torch.equal(later[:, :-1], outs["sdpa"][:, :-1]), (
        "a later token must not affect earlier logits"
    )
    assert not torch.equal(later[:, -1], outs["sdpa"][:, -1])


def test_greedy_generate_with_kv_cache_matches_recomputation(model) -> None:
    prompt = ids(batch=1, seq=6, seed=6)
    cached = model.generate(
        prompt, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0
    )
    tokens = prompt
    with torch.no_grad():
        for _ in range(8):
            nxt = model(input_ids=tokens, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, nxt], dim=1)
    assert cached.shape[1] == 14
    assert torch.equal(cached, tokens)


def test_2p4b_shape_has_2p4b_parameters() -> None:
    import math

    from probes.fixtures.checkpoints import exaone35_tensor_shapes

    shapes = exaone35_tensor_shapes(EXAONE35_2P4B_SHAPE)
    n = sum(math.prod(shape) for shape, _ in shapes.values())  # tied lm_head stored once
    assert 2.3e9 < n < 2.5e9, n
    assert "lm_head.weight" not in shapes and shapes["transformer.h.29.mlp.c_fc_0.weight"][0] == (
        7168,
        2560,
    )
    assert shapes["transformer.h.0.attn.attention.k_proj.weight"][0] == (
        8 * 80,
        2560,
    )  # 8 KV heads of 2560/32


@needs_loading_remote_code
def test_state_dict_names_are_what_the_remote_code_loads(model, fixture_dir) -> None:
    """The generator writes weights without running the remote code: its names must be the
    model's."""
    from probes.fixtures.checkpoints import exaone35_config_dict, exaone35_tensor_shapes

    shapes = exaone35_tensor_shapes(exaone35_config_dict("tiny"))
    params = {k: tuple(v.shape) for k, v in model.state_dict().items() if "inv_freq" not in k}
    assert {k: v for k, v in params.items() if k != "lm_head.weight"} == {
        k: s for k, (s, _) in shapes.items()
    }


def test_llamafy_logits_parity(model, fixture_dir, tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    llama_dir = llamafy_exaone35(fixture_dir, tmp_path / "llama")
    llama = LlamaForCausalLM.from_pretrained(str(llama_dir)).float().eval()
    assert llama.lm_head.weight.data_ptr() == llama.model.embed_tokens.weight.data_ptr()
    batch = ids(seed=7, seq=40)
    set_attention(llama, "eager")
    with torch.no_grad():
        diff = (model(input_ids=batch).logits - llama(input_ids=batch).logits).abs().max().item()
    assert diff <= LLAMAFY_ATOL, diff


def test_llamafy_parity_test_can_fail_without_rope_scaling(model, fixture_dir,
                                                           tmp_path: Path) -> None:
    """The parity bar is sensitive: a llamafied config that drops rope scaling must exceed it."""
    from transformers import LlamaForCausalLM

    llama_dir = llamafy_exaone35(fixture_dir, tmp_path / "llama")
    config = json.loads((llama_dir / "config.json").read_text())
    config.pop("rope_scaling", None)
    if "rope_parameters" in config:
        config["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": config["rope_parameters"]["rope_theta"],
        }
    (llama_dir / "config.json").write_text(json.dumps(config))
    llama = LlamaForCausalLM.from_pretrained(str(llama_dir)).float().eval()
    batch = ids(seed=7, seq=40)
    with torch.no_grad():
        diff = (model(input_ids=batch).logits - llama(input_ids=batch).logits).abs().max().item()
    assert diff > LLAMAFY_ATOL


def test_llama_name_rejects_unknown_parameter() -> None:
    assert llama_name("transformer.h.3.mlp.c_fc_0.weight") == "model.layers.3.mlp.gate_proj.weight"
    with pytest.raises(ValueError, match="no Llama counterpart"):
        llama_name("transformer.h.0.attn.attention.rotary.inv_freq")
