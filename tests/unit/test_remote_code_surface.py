"""The ast-only extractor of a remote-code file's transformers surface, and its CLI.

Stdlib only: no transformers needed, the files are never run (a test below proves it with a file
that
would raise on import)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from pinmatrix.commands.remote_code_surface import main as surface_main
from probes.remote_code_surface import compare, extract, extract_file

ROOT = Path(__file__).resolve().parents[2]
REVISIONS = ROOT / "probes" / "fixtures" / "exaone35" / "revisions"

SOURCE = textwrap.dedent('''
    import torch
    from torch import nn
    from transformers.cache_utils import Cache, DynamicCache
    from transformers.masking_utils import create_causal_mask
    from transformers.modeling_utils import PreTrainedModel
    from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS
    from transformers.configuration_utils import PretrainedConfig
    from .configuration_toy import ToyConfig
    raise RuntimeError("this file must never run")
    try:
        from transformers.utils import is_flash_attn_2_available
    except ImportError:
        pass

    class ToyConfig2(PretrainedConfig):
        model_type = "toy"
        attribute_map = {"num_hidden_layers": "num_layers"}
        def __init__(self, num_layers=2, hidden_size=8, **kwargs):
            self.num_layers = num_layers
            self.hidden_size = hidden_size
            self.head_dim = hidden_size // 2
            super().__init__(bos_token_id=1, **kwargs)

    class Norm(nn.Module):
        def __init__(self, size):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(size))

    ALL_LAYERNORM_LAYERS.append(Norm)

    class Rotary(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.register_buffer("inv_freq", torch.ones(4), persistent=False)

    class ToyPreTrained(PreTrainedModel):
        supports_gradient_checkpointing = True
        _no_split_modules = ["Block"]
        _supports_sdpa = True
        config_class = ToyConfig
        def _init_weights(self, module):
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.data.normal_()

    class ToyModel(ToyPreTrained):
        def __init__(self, config):
            super().__init__(config)
            self.wte = nn.Embedding(10, 8)
            self.rotary = Rotary(config)
            self.norm = Norm(8)
        def forward(self, x, cache=None):
            if cache is not None and not isinstance(cache, Cache):
                cache = DynamicCache.from_legacy_cache(cache)
            mask = create_causal_mask(config=self.config, input_embeds=x, cache_position=None)
            mask = create_causal_mask(config=self.config, attention_mask=None)
            return mask

    class ToyForCausalLM(ToyPreTrained):
        _tied_weights_keys = ["lm_head.weight"]
        def __init__(self, config):
            super().__init__(config)
            self.model = ToyModel(config)
            self.lm_head = nn.Linear(8, 10, bias=False)
''')


def test_extract_reads_every_fact_kind_without_running_the_file() -> None:
    s = extract(SOURCE, filename="modeling_toy.py")
    imports = {(i["module"], i["name"]): i["scope"] for i in s["imports"]}
    assert imports[("transformers.cache_utils", "DynamicCache")] == "module"
    assert imports[("transformers.utils", "is_flash_attn_2_available")] == "conditional"
    assert not any(
        "configuration_toy" in m for m, _ in imports
    )  # a sibling file is not transformers
    # keywords merged over call sites; positional counts kept
    assert s["calls"]["transformers.masking_utils.create_causal_mask"]["keywords"] == [
        "attention_mask",
        "cache_position",
        "config",
        "input_embeds",
    ]
    assert s["calls"]["transformers.cache_utils.DynamicCache.from_legacy_cache"]["positional"] == 1
    assert "transformers.pytorch_utils.ALL_LAYERNORM_LAYERS.append" in s["calls"]
    # super().__init__ in a class whose first base is transformers' is that base's __init__
    assert s["calls"]["transformers.configuration_utils.PretrainedConfig.__init__"] == {
        "keywords": ["bos_token_id"],
        "positional": 0,
        "star_args": False,
        "star_kwargs": True,
    }
    assert s["classes"]["ToyForCausalLM"]["attributes"]["_tied_weights_keys"] == {
        "form": "list",
        "value": ["lm_head.weight"],
    }
    assert s["classes"]["ToyPreTrained"]["attributes"]["config_class"]["form"] == "expr"
    assert s["buffers"] == [
        {"class": "Rotary", "method": "__init__", "name": "inv_freq", "persistent": False}
    ]
    assert s["init_weights"] == {
        "ToyPreTrained": {"isinstance": ["torch.nn.Embedding", "torch.nn.Linear"], "buffers": []}
    }
    assert s["config"]["ToyConfig2"]["fields"] == ["head_dim", "hidden_size", "num_layers"]
    assert s["config"]["ToyConfig2"]["attribute_map"] == {"num_hidden_layers": "num_layers"}
    assert s["modules"]["ToyModel"] == {
        "norm": "Norm",
        "rotary": "Rotary",
        "wte": "torch.nn.Embedding",
    }


def test_init_weights_that_restores_a_buffer_says_so() -> None:
    restoring = SOURCE.replace(
        "module.weight.data.normal_()",
        "module.weight.data.normal_()\n            if hasattr(module, 'inv_freq'): pass",
    )
    assert extract(restoring)["init_weights"]["ToyPreTrained"]["buffers"] == ["inv_freq"]


def test_relative_imports_resolve_inside_a_named_package() -> None:
    src = "from ...cache_utils import DynamicCache\nfrom .configuration_x import XConfig\n"
    s = extract(src, package="transformers.models.x")
    assert s["imports"] == [
        {"module": "transformers.cache_utils", "name": "DynamicCache", "scope": "module"}
    ]
    assert (
        extract(src)["imports"] == []
    )  # unresolvable without the package: not claimed as transformers


def test_compare_names_each_differing_fact() -> None:
    a = extract(SOURCE)
    assert compare(a, a) == []
    b = extract(
        SOURCE.replace(
            '_tied_weights_keys = ["lm_head.weight"]',
            '_tied_weights_keys = {"lm_head.weight": "model.wte.weight"}',
        ).replace("input_embeds=x", "inputs_embeds=x")
    )
    diff = compare(a, b)
    assert any(line.startswith("~ class ToyForCausalLM._tied_weights_keys") for line in diff)
    assert any(
        line.startswith("~ call transformers.masking_utils.create_causal_mask") for line in diff
    )
    assert len(diff) == 2


def test_the_original_facts_file_is_what_the_extractor_reads_from_lgs_port() -> None:
    """The facts file was extracted (not typed); its provenance is recorded, and it stays in the
    extractor's current output format."""
    facts = json.loads((REVISIONS / "original.json").read_text())
    assert facts["default_source"] == "lg-transformers-fork"
    for entry in facts["files"].values():
        assert set(entry["surface"]) == set(extract("x = 1\n"))
    current = json.loads((REVISIONS / "current.json").read_text())
    assert set(current["fact_sources"].values()) <= {s["id"] for s in current["sources"]}
    assert current["hub_refs"] == ["main"] and current["hub_commit"] is None


def test_cli_writes_json_and_rejects_bad_input_with_file_line_col(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    good = tmp_path / "modeling_toy.py"
    good.write_text(SOURCE)
    out = tmp_path / "surface.json"
    assert surface_main([str(good), "-o", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["files"]["modeling_toy.py"]["surface"] == extract_file(good)["surface"]
    bad = tmp_path / "modeling_bad.py"
    bad.write_text("import torch\n\ndef f(:\n    pass\n")
    assert surface_main([str(bad), "-o", str(tmp_path / "never.json")]) == 2
    assert f"{bad}:3:" in capsys.readouterr().err
    assert not (tmp_path / "never.json").exists()  # nothing half-written
    assert surface_main([str(tmp_path / "missing.py")]) == 2
    assert surface_main(["NoOrg/NoRepo@0123456789abcdef0123456789abcdef01234567"]) == 2


def test_cli_compares_with_a_facts_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fixture = ROOT / "probes" / "fixtures" / "exaone35" / "current"
    assert (
        surface_main(
            [
                str(fixture),
                "--facts",
                str(REVISIONS / "original.json"),
                "-o",
                str(tmp_path / "s.json"),
            ]
        )
        == 0
    )
    doc = json.loads((tmp_path / "s.json").read_text())
    # current differs from original in the mask: create_causal_mask instead of
    # AttentionMaskConverter
    diff = "\n".join(doc["differences_from_facts"]["modeling_exaone.py"])
    assert "create_causal_mask" in diff and "AttentionMaskConverter" in diff
