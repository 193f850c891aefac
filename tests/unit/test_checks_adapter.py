"""adapter.roundtrip on the tiny fixture, on CPU: passes on the unit-test stack, and fails when the
saved
adapter is perturbed, when the merge uses a wrong scale, and when the adapter is a no-op."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from probes.checks import adapter, lora_train, train  # noqa: E402
from probes.context import Context  # noqa: E402
from probes.framework import Failed, run_check  # noqa: E402
from probes.models import llamafied_folder  # noqa: E402


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return {"work": tmp_path_factory.mktemp("work"), "cache": {}}


def make_ctx(shared: dict[str, Any], **settings: Any) -> Context:
    spec = {
        "id": "test-cell",
        "hash": "0" * 64,
        "pins": {"unsloth": "none"},
        "checks": ["adapter"],
        "settings": {"lora_steps": 12, **settings},
    }
    return Context(spec=spec, device="cpu", work_dir=Path(shared["work"]), cache=shared["cache"])


def _remote_code_loads() -> bool:
    import transformers

    return lora_train._version_tuple(transformers.__version__) < (5,)


@pytest.mark.parametrize("name", ["adapter.roundtrip", "adapter.roundtrip-llamafied"])
def test_roundtrip_passes_on_the_cpu_stack(shared: dict[str, Any], name: str) -> None:
    if name == "adapter.roundtrip" and not _remote_code_loads():
        pytest.skip("the revision-faithful remote code does not load on transformers 5")
    ctx = make_ctx(shared)
    result = run_check(name, dict(adapter.checks(ctx))[name], ctx, timeout_s=300)
    assert result["status"] == "pass", result.get("error")
    ev = result["evidence"]
    assert ev["reload_identical"] is True and ev["reload_max_abs_diff"] == 0.0
    assert (
        ev["merge_relative_max_diff"] <= ev["merge_tolerance"] == adapter.MERGE_REL_TOL["float32"]
    )
    assert ev["merged_lora_modules_left"] == 0
    assert ev["adapter_effect_relative"] > ev["merge_tolerance"]
    assert (
        "adapter_model.safetensors" in ev["saved_files"]
        and "adapter_config.json" in ev["saved_files"]
    )


def _trained(shared: dict[str, Any], steps: int = 12, lr: float = 5e-3) -> tuple[Any, Any, Any]:
    ctx = make_ctx(shared)
    model, _, _, _ = train.load_route(ctx, "llamafied")
    ids = lora_train.fixed_batch(512, 2, 32, 0, "cpu")
    lora_train.run_lora_steps(model, ids, steps=steps, lr=lr)

    base_path = str(llamafied_folder(ctx, lora_train.resolve_exaone35(ctx)))

    def load_base() -> Any:
        return lora_train.load_causal_lm(
            base_path, device="cpu", dtype=torch.float32, trust_remote_code=False
        )

    return model, load_base, lora_train.fixed_batch(512, 2, 16, 1, "cpu")


def test_roundtrip_fails_when_the_saved_adapter_is_perturbed(
    shared: dict[str, Any], tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    model, load_base, ids = _trained(shared)

    def perturb(folder: Path) -> None:
        file = folder / "adapter_model.safetensors"
        tensors = load_file(str(file))
        name = next(n for n in sorted(tensors) if "lora_B" in n)
        tensors[name] = tensors[name] + 1e-3
        save_file(tensors, str(file), metadata={"format": "pt"})

    with pytest.raises(Failed) as info:
        adapter.roundtrip_and_judge(model, load_base, tmp_path, ids, after_save=perturb)
    assert "the reloaded adapter gives different logits" in info.value.message
    assert (
        info.value.evidence["reload_identical"] is False
        and info.value.evidence["reload_max_abs_diff"] > 0
    )


def test_roundtrip_fails_when_the_merge_uses_a_wrong_scale(
    shared: dict[str, Any], tmp_path: Path
) -> None:
    model, load_base, ids = _trained(shared)

    def double_scale(reloaded: Any) -> None:
        for module in reloaded.modules():
            scaling = getattr(module, "scaling", None)
            if isinstance(scaling, dict) and "default" in scaling:
                scaling["default"] *= 2

    with pytest.raises(Failed) as info:
        adapter.roundtrip_and_judge(model, load_base, tmp_path, ids, before_merge=double_scale)
    assert "merged logits differ" in info.value.message
    assert info.value.evidence["reload_identical"] is True  # the reload itself was fine


def test_roundtrip_fails_when_the_adapter_is_a_no_op(
    shared: dict[str, Any], tmp_path: Path
) -> None:
    """An untrained adapter (lora_B = 0) is the identity: save and merge would pass vacuously."""
    model, load_base, ids = _trained(shared, steps=2, lr=0.0)
    with pytest.raises(Failed, match="barely changes the logits"):
        adapter.roundtrip_and_judge(model, load_base, tmp_path, ids)
