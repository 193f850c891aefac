"""The clean-room EXAONE 3.5 fixture: hub-compatible names/config, loads as remote code, trains,
generates, and the llamafied copy computes the same logits. Tiny sizes, CPU, fp32."""
from __future__ import annotations

import json
import os
import sys
import tempfile

# Keep transformers' copies of remote code out of the user's cache (only effective before
# transformers loads).
if "transformers" not in sys.modules:
    os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="pinmatrix-hfmodules-"))

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from probes.fixtures.checkpoints import (  # noqa: E402
    EXAONE35_2P4B_SHAPE, llama_name, llamafy_exaone35, write_exaone35,
)

# Parity bar for the llamafied copy: identical math in fp32, so only summation-order noise is
# allowed.
LLAMAFY_ATOL = 1e-5

HUB_CONFIG_FIELDS = {
    "model_type", "vocab_size", "hidden_size", "num_layers", "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size", "activation_function", "layer_norm_epsilon", "max_position_embeddings",
    "rope_theta",
    "rope_scaling", "embed_dropout", "attention_dropout", "initializer_range", "use_cache",
    "tie_word_embeddings",
    "bos_token_id", "eos_token_id", "pad_token_id", "auto_map", "architectures",
}


def expected_parameter_names(layers: int) -> set[str]:
    names = {"transformer.wte.weight", "transformer.ln_f.weight", "lm_head.weight"}
    for i in range(layers):
        p = f"transformer.h.{i}."
        names |= {p + "ln_1.weight", p + "ln_2.weight"}
        names |= {f"{p}attn.attention.{m}.weight" for m in ("q_proj", "k_proj", "v_proj",
                                                            "out_proj")}
        names |= {f"{p}mlp.{m}.weight" for m in ("c_fc_0", "c_fc_1", "c_proj")}
    return names


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    return write_exaone35(tmp_path_factory.mktemp("fx") / "exaone35_tiny", seed=0)


@pytest.fixture(scope="module")
def model(fixture_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(fixture_dir),
                                                trust_remote_code=True).float().eval()


def ids(batch: int = 2, seq: int = 12, seed: int = 0):
    return torch.randint(8, 512, (batch, seq), generator=torch.Generator().manual_seed(seed))


def set_attention(m, impl: str) -> None:
    """set_attn_implementation where transformers has it (>= 4.54); older ones read the config
    field."""
    if hasattr(m, "set_attn_implementation"):
        m.set_attn_implementation(impl)
    else:
        m.config._attn_implementation = impl


def test_config_json_has_hub_fields_and_auto_map(fixture_dir):
    config = json.loads((fixture_dir / "config.json").read_text())
    assert HUB_CONFIG_FIELDS <= set(config)
    assert config["model_type"] == "exaone" and config["activation_function"] == "silu"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_exaone.ExaoneForCausalLM"
    assert (fixture_dir / "modeling_exaone.py").is_file() and (
        fixture_dir / "configuration_exaone.py"
    ).is_file()


def test_loads_as_remote_code_with_hub_module_names(model, fixture_dir):
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


def test_tokenizer_loads_and_round_trips(fixture_dir):
    from transformers import AutoTokenizer

    # transformers 5 reads config.json first; EXAONE's needs remote code (true of the hub model as
    # well).
    tok = AutoTokenizer.from_pretrained(str(fixture_dir), trust_remote_code=True)
    encoded = tok("LoRA fine-tuning of EXAONE").input_ids
    assert max(encoded) < 512 and tok.decode(encoded) == "LoRA fine-tuning of EXAONE"
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                     add_generation_prompt=True)
    assert prompt.endswith("[|assistant|]")


@pytest.mark.parametrize("checkpointing", [False, True])
def test_trains_a_step_with_labels(fixture_dir, checkpointing):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(fixture_dir),
                                             trust_remote_code=True).float().train()
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


def test_loss_matches_manual_cross_entropy(model):
    batch = ids(seed=4)
    out = model(input_ids=batch, labels=batch)
    manual = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 512),
                                               batch[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, manual, atol=1e-6)


def test_attention_backends_agree_and_respect_causality(model):
    batch = ids(seed=5)
    outs = {}
    for impl in ("eager", "sdpa"):
        set_attention(model, impl)
        assert model.config._attn_implementation == impl
        with torch.no_grad():
            outs[impl] = model(input_ids=batch).logits
    assert (outs["eager"] - outs["sdpa"]).abs().max() < 1e-5
    changed = batch.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 512
    with torch.no_grad():
        later = model(input_ids=changed).logits
    assert torch.equal(later[:, :-1], outs["sdpa"][:, :-1]), (
        "a later token must not affect earlier logits"
    )
    assert not torch.equal(later[:, -1], outs["sdpa"][:, -1])


def test_greedy_generate_with_kv_cache_matches_recomputation(model):
    prompt = ids(batch=1, seq=6, seed=6)
    cached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True,
                            pad_token_id=0)
    tokens = prompt
    with torch.no_grad():
        for _ in range(8):
            nxt = model(input_ids=tokens, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, nxt], dim=1)
    assert cached.shape[1] == 14
    assert torch.equal(cached, tokens)


def test_2p4b_shape_has_2p4b_parameters():
    from probes.fixtures.exaone35.configuration_exaone import ExaoneConfig
    from probes.fixtures.exaone35.modeling_exaone import ExaoneForCausalLM

    with torch.device("meta"):
        big = ExaoneForCausalLM(ExaoneConfig(**EXAONE35_2P4B_SHAPE))
    n = sum(p.numel() for p in big.parameters())  # tied lm_head counted once
    assert 2.3e9 < n < 2.5e9, n
    assert (big.config.num_layers, big.config.hidden_size,
            big.config.intermediate_size) == (30, 2560, 7168)
    assert (big.config.num_attention_heads, big.config.num_key_value_heads,
            big.config.vocab_size) == (32, 8, 102400)


def test_llamafy_logits_parity(model, fixture_dir, tmp_path):
    from transformers import LlamaForCausalLM

    llama_dir = llamafy_exaone35(fixture_dir, tmp_path / "llama")
    llama = LlamaForCausalLM.from_pretrained(str(llama_dir)).float().eval()
    assert llama.lm_head.weight.data_ptr() == llama.model.embed_tokens.weight.data_ptr()
    batch = ids(seed=7, seq=40)
    set_attention(model, "eager")
    set_attention(llama, "eager")
    with torch.no_grad():
        diff = (model(input_ids=batch).logits - llama(input_ids=batch).logits).abs().max().item()
    assert diff <= LLAMAFY_ATOL, diff


def test_llamafy_parity_test_can_fail_without_rope_scaling(model, fixture_dir, tmp_path):
    """The parity bar is sensitive: a llamafied config that drops rope scaling must exceed it."""
    from transformers import LlamaForCausalLM

    llama_dir = llamafy_exaone35(fixture_dir, tmp_path / "llama")
    config = json.loads((llama_dir / "config.json").read_text())
    config.pop("rope_scaling", None)
    if "rope_parameters" in config:
        config["rope_parameters"] = {"rope_type": "default",
                                     "rope_theta": config["rope_parameters"]["rope_theta"]}
    (llama_dir / "config.json").write_text(json.dumps(config))
    llama = LlamaForCausalLM.from_pretrained(str(llama_dir)).float().eval()
    batch = ids(seed=7, seq=40)
    with torch.no_grad():
        diff = (model(input_ids=batch).logits - llama(input_ids=batch).logits).abs().max().item()
    assert diff > LLAMAFY_ATOL


def test_llama_name_rejects_unknown_parameter():
    assert llama_name("transformer.h.3.mlp.c_fc_0.weight") == "model.layers.3.mlp.gate_proj.weight"
    with pytest.raises(ValueError, match="no Llama counterpart"):
        llama_name("transformer.h.0.attn.attention.rotary.inv_freq")
