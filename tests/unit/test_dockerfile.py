"""The Dockerfile and the docker runner's pure parts, without an engine.

Layer order (shared layers first), nothing secret in an ARG/ENV/LABEL, secrets only as BuildKit
secret mounts, the content tag sensitive to every input, argument lists that a shell never sees.
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from pinmatrix.containers.container_args import Mount, gpu_args
from pinmatrix.containers.engine import Engine
from pinmatrix.environ import compile_cache
from pinmatrix.runners import docker as dr
from pinmatrix.runners.base import Prepared

DOCKERFILE = Path(__file__).resolve().parents[2] / "docker" / "Dockerfile"


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined; comments dropped (also inside a continuation, as
    Docker does)."""
    out: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("#") or (not pending and not line):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, args = pending.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        pending = ""
    assert not pending, "dangling line continuation"
    return out


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def _index(instructions: list[Instruction], keyword: str, needle: str) -> int:
    for i, ins in enumerate(instructions):
        if ins.keyword == keyword and needle in ins.args:
            return i
    raise AssertionError(f"no {keyword} with {needle!r}")


def test_no_syntax_directive_that_would_pull_a_frontend() -> None:
    assert not re.search(r"^#\s*syntax\s*=", DOCKERFILE.read_text(), re.M | re.I)


def test_parametrized_by_base_image_and_python(instructions: list[Instruction]) -> None:
    assert instructions[0].keyword == "ARG" and instructions[0].args.startswith("BASE_IMAGE")
    assert instructions[1].keyword == "FROM" and instructions[1].args == "${BASE_IMAGE}"
    assert any(i.keyword == "ARG" and i.args.startswith("PYTHON") for i in instructions)


def test_layers_ordered_shared_first(instructions: list[Instruction]) -> None:
    uv = _index(instructions, "RUN", "/opt/uv/bin/pip install --quiet")
    venv = _index(instructions, "RUN", "uv venv")
    copy_torch = _index(instructions, "COPY", "torch.lock")
    install_torch = _index(instructions, "RUN", "locks/torch.lock")
    copy_full = _index(instructions, "COPY", "requirements.lock")
    install_full = _index(instructions, "RUN", "locks/requirements.lock")
    copy_probes = _index(instructions, "COPY", "probes")
    assert uv < venv < copy_torch < install_torch < copy_full < install_full < copy_probes
    # Nothing cell-specific (requirements.lock, probes) is copied before the torch layer.
    for ins in instructions[:install_torch]:
        if ins.keyword in ("COPY", "ADD"):
            assert ins.args.split()[0] == "torch.lock", ins


def test_installs_use_cache_mounts_and_the_wheelhouse_bind(instructions: list[Instruction]) -> None:
    for needle in ("locks/torch.lock", "locks/requirements.lock"):
        run = instructions[_index(instructions, "RUN", needle)].args
        assert "--mount=type=cache,target=/root/.cache/uv" in run
        assert "--mount=type=bind,source=wheelhouse,target=/wheelhouse" in run
        assert "--find-links /wheelhouse" in run


SECRETISH = re.compile(r"token|secret|password|passwd|cert|ca_bundle|index|credential|auth|key",
                       re.I)


def test_no_secret_in_arg_env_or_label(instructions: list[Instruction]) -> None:
    for ins in instructions:
        if ins.keyword in ("ARG", "ENV", "LABEL"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_.-]*)=", ins.args) or [ins.args.split("=")[0]]
            for name in names:
                assert not SECRETISH.search(name), (
                    f"line {ins.line}: {ins.keyword} {name} looks secret"
                )
    args = [i.args.split("=")[0] for i in instructions if i.keyword == "ARG"]
    assert sorted(args) == ["BASE_IMAGE", "BASE_SITE", "OFFLINE", "PYTHON", "UV_VERSION"]


def test_sources_only_through_secret_mounts(instructions: list[Instruction]) -> None:
    for ins in instructions:
        if ins.keyword == "RUN" and "sources.sh" in ins.args:
            assert "--mount=type=secret,id=ca_bundle" in ins.args
            assert "--mount=type=secret,id=index_url" in ins.args
    # The helper reads /run/secrets at run time of one step; it never writes a value to a file.
    text = DOCKERFILE.read_text()
    assert "/run/secrets" in text
    assert not re.search(r"(cp|cat|tee)\s+[\"']?\$s/[a-z_]+[\"']?\s*>", text)


def test_probes_run_as_non_root(instructions: list[Instruction]) -> None:
    users = [i.args for i in instructions if i.keyword == "USER"]
    assert users and users[-1] == "1000:1000"
    assert "useradd --uid 1000" in DOCKERFILE.read_text()


def test_bytecode_is_built_into_the_image_and_the_compile_cache_folder_belongs_to_the_probe_user(
        instructions: list[Instruction]) -> None:
    # The probe runs with PYTHONDONTWRITEBYTECODE on a read-only root: bytecode must come with the
    # image.
    env = " ".join(i.args for i in instructions if i.keyword == "ENV")
    assert "UV_COMPILE_BYTECODE=1" in env and "PYTHONDONTWRITEBYTECODE=1" in env
    probes = _index(instructions, "COPY", "probes")
    after = " ".join(i.args for i in instructions[probes:] if i.keyword == "RUN")
    assert "compileall" in after
    assert f"install -d -o 1000 -g 1000 -m 0700 {compile_cache.CONTAINER_PATH}" in after


BASE = dict(torch_lock="torch==2.13.0+cpu\n", full_lock="torch==2.13.0+cpu\ntransformers==5.17.0\n",
            dockerfile="FROM x\n", probes_digest="a" * 64, base_image="pinmatrix/base@sha256:1",
            python="3.11")


def test_image_tag_is_stable_and_shaped() -> None:
    tag = dr.image_tag(**BASE)
    assert tag == dr.image_tag(**dict(BASE))
    assert re.fullmatch(r"pinmatrix/cell:[0-9a-f]{16}", tag)


@pytest.mark.parametrize("field", sorted(BASE))
def test_image_tag_sensitive_to_each_input(field: str) -> None:
    changed = dict(BASE)
    changed[field] = BASE[field] + "x"
    assert dr.image_tag(**changed) != dr.image_tag(**BASE)


def test_probes_digest_tracks_content_and_ignores_bytecode(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "a.py").write_text("x = 1\n")
    first = dr.probes_digest(tmp_path / "p")
    (tmp_path / "p" / "__pycache__").mkdir()
    (tmp_path / "p" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"junk")
    assert dr.probes_digest(tmp_path / "p") == first
    (tmp_path / "p" / "a.py").write_text("x = 2\n")
    assert dr.probes_digest(tmp_path / "p") != first


def test_context_hardlinks_wheelhouse_and_resyncs(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "a-1-py3-none-any.whl").write_bytes(b"A" * 100)
    (wheels / "notes.txt").write_text("not a wheel")
    probes = tmp_path / "probes"
    probes.mkdir()
    (probes / "__main__.py").write_text("print(1)\n")
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM scratch\n")
    ctx = tmp_path / "ctx"
    kw = dict(torch_lock="t\n", full_lock="f\n", dockerfile=dockerfile, probes_dir=probes,
              wheelhouses=[wheels])
    counts = dr.assemble_context(ctx, **kw)
    linked = ctx / "wheelhouse" / "a-1-py3-none-any.whl"
    assert counts["linked"] == 1 and counts["copied"] == 0
    # a link, not a copy
    assert os.stat(linked).st_ino == os.stat(wheels / "a-1-py3-none-any.whl").st_ino
    assert not (ctx / "wheelhouse" / "notes.txt").exists()
    assert (ctx / "torch.lock").read_text() == "t\n" and (ctx / "probes" / "__main__.py").exists()
    # Second build in the same slot: the link is kept; a wheel gone from the wheelhouse goes from
    # the context.
    (wheels / "b-1-py3-none-any.whl").write_bytes(b"B")
    assert dr.assemble_context(ctx, **kw) == {"linked": 1, "copied": 0, "kept": 1}
    (wheels / "a-1-py3-none-any.whl").unlink()
    dr.assemble_context(ctx, **kw)
    assert sorted(p.name for p in (ctx / "wheelhouse").iterdir()) == ["b-1-py3-none-any.whl"]



def test_uv_bootstrap_sees_only_uv_wheels(tmp_path: Path, instructions: list[Instruction]) -> None:
    """Step a installs uv from bootstrap/ (uv's wheels alone), never from the whole wheelhouse: a
    wheelhouse change must not rebuild the layers the torch layer sits on; and offline, the
    installers use no index (docker/Dockerfile OFFLINE)."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in ("uv-0.13.9-py3-none-manylinux_2_17_x86_64.whl", "uvicorn-1-py3-none-any.whl",
                 "torch-2-cp311-none-any.whl"):
        (wheels / name).write_bytes(b"w")
    probes = tmp_path / "probes"
    probes.mkdir()
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM scratch\n")
    dr.assemble_context(tmp_path / "ctx", torch_lock="", full_lock="", dockerfile=dockerfile,
                        probes_dir=probes, wheelhouses=[wheels])
    assert [p.name for p in (tmp_path / "ctx" / "bootstrap").iterdir()] == [
        "uv-0.13.9-py3-none-manylinux_2_17_x86_64.whl"]
    assert len(list((tmp_path / "ctx" / "wheelhouse").iterdir())) == 3
    step_a = instructions[_index(instructions, "RUN", "/opt/uv/bin/pip install")].args
    assert "--mount=type=bind,source=bootstrap,target=/bootstrap" in step_a
    assert "source=wheelhouse" not in step_a and "--find-links /bootstrap" in step_a
    assert "export PIP_NO_INDEX=1 UV_OFFLINE=1" in step_a  # sources.sh, sourced by every step
    assert any(i.keyword == "ARG" and i.args == "OFFLINE=0" for i in instructions)

def test_context_slots_are_exclusive(tmp_path: Path) -> None:
    with dr.context_slot(tmp_path) as first, dr.context_slot(tmp_path) as second:
        assert first != second
    with dr.context_slot(tmp_path) as again:
        assert again == first


def test_secret_values_go_to_private_files_never_to_arguments(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    sources = SimpleNamespace(index_url="https://user:s3cr3t-token@example.invalid/simple",
                              extra_index_urls=("https://x:tok2@mirror.invalid/simple",),
                              find_links=(), ca_bundle=str(ca), torch_backend="cu130")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    args = dr.secret_args(sources, secrets)
    joined = " ".join(args)
    assert "s3cr3t-token" not in joined and "tok2" not in joined
    assert f"id=ca_bundle,src={ca.resolve()}" in args
    assert (secrets / "index_url").read_text() == sources.index_url
    assert stat.S_IMODE(os.stat(secrets / "index_url").st_mode) == 0o600
    assert {a.split(",")[0] for a in args if a.startswith("id=")} == {
        "id=ca_bundle", "id=index_url", "id=extra_index_urls", "id=torch_backend"}


def test_missing_ca_bundle_is_an_infra_error(tmp_path: Path) -> None:
    with pytest.raises(dr.InfraError) as err:
        dr.secret_args(SimpleNamespace(ca_bundle=str(tmp_path / "nope.pem")), tmp_path)
    assert err.value.signature == "build-ca-bundle-missing"


@pytest.mark.parametrize("log, signature", [
    ("× No solution found when resolving dependencies", "build-install-unsatisfiable"),
    ("error: Failed to fetch: `https://pypi.org/simple/x/`\n Connection refused", "build-network"),
    ("write /var/lib/docker/x: no space left on device", "build-disk-full"),
    ("something else entirely", "build-failed"),
])
def test_build_failures_get_a_signature(log: str, signature: str) -> None:
    assert dr.classify_build_log(log) == signature


@pytest.mark.parametrize("code, oom, result, signature", [
    (0, False, True, None),
    (137, True, False, "container-oom-killed"),
    (137, False, False, "probe-killed"),
    (139, False, False, "probe-segfault"),
    (139, False, True, "probe-segfault"),   # a crash after writing: the file is not trusted
    (3, False, False, "probe-exit-3"),
    (0, False, False, "probe-no-result"),
    (125, False, False, "container-exit-125"),
])
def test_exit_codes_are_classified(code: int, oom: bool, result: bool,
                                   signature: str | None) -> None:
    reason, sig = dr.classify_exit(dr.Exit(code, oom), has_result=result)
    assert sig == signature
    assert (reason is None) == (signature is None)


FAKE_ENGINE = Engine(client="/usr/bin/docker", server_version="20.10", buildkit="env", nvidia=True,
                     nvidia_how="runtime")


def _runner(tmp_path: Path, **kw: object) -> dr.DockerRunner:
    return dr.DockerRunner(FAKE_ENGINE, None, tmp_path, context_root=tmp_path / "ctx",
                           **kw)  # type: ignore[arg-type]


def test_run_arguments_lock_the_container_down(tmp_path: Path) -> None:
    runner = _runner(tmp_path, memory="8g")
    args = runner._create_args("pinmatrix/cell:abc", "n", tmp_path / "cell.json", tmp_path / "res",
                               None)
    joined = " ".join(args)
    for expected in ("--network none", "--user 1000:1000", "--read-only", "--cap-drop ALL",
                     "--memory 8g", "--memory-swap 8g", "--gpus all"):
        assert expected in joined
    assert f"type=bind,source={tmp_path / 'cell.json'},target=/cell/cell.json,readonly" in args
    assert f"type=bind,source={tmp_path / 'res'},target=/results" in args
    assert args[-9:] == ["python", "-m", "probes", "--cell", "/cell/cell.json", "--out",
                         "/results/result.json", "--work", "/tmp/work"]
    # no volume given: the compilers still get a writable folder, the container's own /tmp (a cold
    # run)
    assert f"PINMATRIX_COMPILE_CACHE={compile_cache.COLD_CONTAINER_PATH}" in args
    with_volume = runner._create_args("img", "n", tmp_path / "cell.json", tmp_path / "res", None,
                                      "pinmatrix-compile-k")
    assert (
        f"type=volume,source=pinmatrix-compile-k,target={compile_cache.CONTAINER_PATH}"
        in with_volume
    )
    assert (
        f"UNSLOTH_COMPILE_LOCATION={compile_cache.CONTAINER_PATH}/unsloth-compiled" in with_volume
    )


def test_host_environment_never_reaches_the_container(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_planted_token_123")
    args = _runner(tmp_path)._create_args("img", "n", tmp_path / "c.json", tmp_path / "r", None)
    assert not any("hf_planted_token_123" in a or a.startswith("HF_TOKEN") for a in args)


@pytest.mark.parametrize("cpu_only, nvidia, gpu, expected", [
    (False, True, None, "all"), (False, True, "1", "device=1"), (False, True, "", None),
    (True, True, None, None), (False, False, None, None),
])
def test_gpus_only_with_detected_nvidia_and_not_cpu(tmp_path: Path, cpu_only: bool, nvidia: bool,
                                                   gpu: str | None, expected: str | None) -> None:
    engine = Engine("/usr/bin/docker", "20.10", "env", nvidia)
    runner = dr.DockerRunner(engine, None, tmp_path, cpu_only=cpu_only, context_root=tmp_path)
    assert runner.gpus_for(gpu) == expected


@pytest.mark.parametrize("bad", ["device=0;rm -rf /", "all,$(id)", "device=", "0"])
def test_gpu_values_are_validated(bad: str) -> None:
    with pytest.raises(ValueError):
        gpu_args(bad)


@pytest.mark.parametrize("pin", ["3.11; touch /tmp/pwned", "$(id)", "3", "", "3.11\n"])
def test_hostile_python_pin_is_refused_before_any_build(pin: str) -> None:
    with pytest.raises(dr.InfraError) as err:
        dr._python_pin(pin)
    assert err.value.signature == "bad-python-pin"


def test_mount_refuses_paths_that_would_split_the_mount_spec(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Mount(tmp_path / "a,readonly=false", "/x").arg()


def test_prepared_reuse_flag_is_part_of_protocol() -> None:
    assert Prepared("docker", "c", "pinmatrix/cell:0", reused=True).reused
