"""`python -m pinmatrix bundle` / `matrix --bundle` (pinmatrix/bundle.py) without the network:
the host's package list, the layer plan and its site rules, the carry folders and their
reassembly. The end-to-end run (real resolve, real downloads, real cells) is
tests/integration/test_bundle.py."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from pinmatrix import bundle
from pinmatrix.cell import Cell
from pinmatrix.cli.main import parse
from pinmatrix.environ.site_rules import parse_extra_site, sites_for
from pinmatrix.errors import UsageError
from pinmatrix.probes_source import probes_digest


def cell(**pins: str) -> Cell:
    base = {"python": "3.12", "torch": "2.11.0", "peft": "0.21.2", "unsloth": "none"}
    return Cell(pins={**base, **pins}, checks=("imports",))


def test_host_packages_reads_pip_freeze_and_names_a_bad_line(tmp_path: Path) -> None:
    good = tmp_path / "host.txt"
    good.write_text(
        "# pip list --format freeze\nTorch==2.11.0+cu130\ntransformers==5.17.0\n"
        "-e git+https://x/y#egg=z\nfoo @ file:///tmp/foo\n\n"
    )
    assert bundle.parse_host_packages(good) == {"torch": "2.11.0+cu130", "transformers": "5.17.0"}
    bad = tmp_path / "bad.txt"
    bad.write_text("torch==2.11.0\ntransformers 5.17.0\n")
    with pytest.raises(UsageError, match=r"bad\.txt:2:1: expected NAME==VERSION"):
        bundle.parse_host_packages(bad)


def test_the_host_torch_counts_for_the_locked_one() -> None:
    host = {"torch": "2.11.0+cu130", "peft": "0.21.0"}
    assert bundle.host_has(host, "torch", "2.11.0")
    assert not bundle.host_has(host, "peft", "0.21.2") and not bundle.host_has(
        host, "trl", "1.15.0"
    )


def test_layers_hold_only_what_the_host_lacks_each_on_its_own_cells_path() -> None:
    """Three cells on a host with torch and transformers 5.17.0: the 5.17.0 cell needs nothing of
    transformers, the 4.57.6 cells share one layer; unsloth's packages go to its cell alone."""
    a, b, c = (
        cell(transformers="4.57.6"),
        cell(transformers="4.57.6", unsloth="2026.10.9"),
        cell(transformers="5.17.0"),
    )
    locks = {
        a.id: {
            "torch": "2.11.0",
            "transformers": "4.57.6",
            "tokenizers": "0.22.2",
            "peft": "0.21.2",
        },
        b.id: {
            "torch": "2.11.0",
            "transformers": "4.57.6",
            "tokenizers": "0.22.2",
            "peft": "0.21.2",
            "unsloth": "2026.10.9",
        },
        c.id: {
            "torch": "2.11.0",
            "transformers": "5.17.0",
            "tokenizers": "0.23.2",
            "peft": "0.21.2",
        },
    }
    host = {
        "torch": "2.11.0+cu130",
        "transformers": "5.17.0",
        "tokenizers": "0.23.2",
        "peft": "0.21.0",
    }
    layers = bundle.plan_layers([a, b, c], locks, host)
    packed = {pkg for layer in layers for pkg in layer.packages}
    assert ("torch", "2.11.0") not in packed and ("transformers", "5.17.0") not in packed
    rules = [parse_extra_site(layer.rule(Path(f"/s/{layer.name}"))) for layer in layers]
    for one in (a, b, c):
        on_path = {Path(p).name for p in sites_for(one, rules)}
        got = {pkg for layer in layers if layer.name in on_path for pkg in layer.packages}
        lacks = {(n, v) for n, v in locks[one.id].items() if not bundle.host_has(host, n, v)}
        assert got == lacks, (one.id, got, lacks)  # every missing package, and no other version


def test_cells_no_axis_value_tells_apart_get_one_layer_each() -> None:
    a, b = cell(transformers="4.57.6", trl="1.15.0"), cell(transformers="5.5.0", trl="0.24.0")
    c, d = cell(transformers="4.57.6", trl="0.24.0"), cell(transformers="5.5.0", trl="1.15.0")
    locks = {x.id: {"x": "1"} for x in (a, b)} | {x.id: {"x": "2"} for x in (c, d)}
    assert bundle.conditions_for([a, b], [c, d]) is None
    layers = bundle.plan_layers([a, b, c, d], locks, {})
    assert len(layers) == 4 and all(len(layer.cells) == 1 for layer in layers)


def _manifest_with_layers(out: Path, tmp_path: Path, part_bytes: int) -> dict:
    entries = []
    for name, size in (("00-big", 3000), ("01-small", 200), ("02-mid", 900)):
        folder = tmp_path / "src" / name
        folder.mkdir(parents=True)
        (folder / f"{name}.py").write_bytes(bytes(range(256)) * (size // 256 + 1))
        (out / "sites").mkdir(parents=True, exist_ok=True)
        target = out / "sites" / f"{name}.txz"
        bundle.write_txz(folder, target)
        entries.append(
            {
                "name": name,
                "file": target.name,
                "sha256": bundle.sha256(target),
                "bytes": target.stat().st_size,
                "when": [],
            }
        )
    pieces = bundle.split_into_carries(
        [out / "sites" / e["file"] for e in entries], out, part_bytes
    )
    for entry in entries:
        entry["pieces"] = pieces[entry["file"]]
    return {"schema": bundle.SCHEMA, "layers": entries}


def test_carry_folders_fit_the_limit_and_the_layers_come_back_whole(tmp_path: Path) -> None:
    out = tmp_path / "out"
    manifest = _manifest_with_layers(out, tmp_path, part_bytes=400)
    for folder in (out / "carry").iterdir():
        assert sum(p.stat().st_size for p in folder.iterdir()) <= 400
    root = bundle.unpack_sites(out, manifest, echo=lambda line: None)
    for name in ("00-big", "01-small", "02-mid"):
        assert (root / name / f"{name}.py").read_bytes() == (
            tmp_path / "src" / name / f"{name}.py"
        ).read_bytes()


def test_pieces_in_the_stash_are_found_and_a_missing_one_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, stash = tmp_path / "out", tmp_path / "stash"
    manifest = _manifest_with_layers(out, tmp_path, part_bytes=400)
    monkeypatch.setenv("PINMATRIX_BUNDLE_STASH", str(stash))
    carries = sorted((out / "carry").iterdir())
    (stash / "carry").mkdir(parents=True)
    carries[0].rename(stash / "carry" / carries[0].name)  # came in an earlier upload
    bundle.unpack_sites(out, manifest, echo=lambda line: None)
    missing = tmp_path / "out2"
    manifest2 = _manifest_with_layers(missing, tmp_path / "again", part_bytes=400)
    victim = sorted((missing / "carry").iterdir())[-1]
    for piece in victim.iterdir():
        piece.unlink()
    with pytest.raises(bundle.BundleError, match="neither in"):
        bundle.unpack_sites(missing, manifest2, echo=lambda line: None)


def test_matrix_bundle_refuses_other_probes_and_sets_the_offline_options(tmp_path: Path) -> None:
    (tmp_path / "wheels").mkdir()
    manifest = {
        "schema": bundle.SCHEMA,
        "form": "wheels",
        "cells": ["c1"],
        "probes_digest": "0" * 64,
    }
    (tmp_path / bundle.MANIFEST).write_text(json.dumps(manifest))
    args = argparse.Namespace(bundle=tmp_path, selectors=[], find_links=None)
    with pytest.raises(UsageError, match="made for probes 000000000000"):
        bundle.apply_bundle(args)
    manifest["probes_digest"] = probes_digest()
    (tmp_path / bundle.MANIFEST).write_text(json.dumps(manifest))
    bundle.apply_bundle(args)
    assert args.offline is True and args.selectors == ["c1"]
    assert args.find_links == [str((tmp_path / "wheels").resolve())]


def test_bundle_needs_its_output_folder() -> None:
    with pytest.raises(UsageError, match="output folder is required"):
        parse(["bundle"])
    args = parse(["bundle", "/tmp/x", "transformers=5.17.0", "--host-packages", "h.txt"])
    assert args.bundle_out == Path("/tmp/x") and args.selectors == ["transformers=5.17.0"]
