"""Where each cell ran and what it really used (pinmatrix/run/gpu_watch.py), the per-GPU
timeline
and the concurrent-vs-alone comparison (pinmatrix/report/gpus.py), per-cell extra sites
(pinmatrix/environ/site_rules.py). No GPU: nvidia-smi is faked."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from pinmatrix.cell import Lock
from pinmatrix.environ.site_rules import ExtraSite, parse_extra_site, sites_for
from pinmatrix.outcome import Outcome, load_outcome
from pinmatrix.report.gpus import compare, render_compare, render_timeline, timeline
from pinmatrix.report.gpus import main as gpus_main
from pinmatrix.report.markdown import render_markdown
from pinmatrix.report.summary import merge
from pinmatrix.run.gpu_watch import (
    Assignment,
    GpuWatch,
    attribute,
    cell_of_pid,
    describe_trespass,
    parse_apps,
    parse_gpus,
    reattribute,
    watch_run,
)
from pinmatrix.runners.venv import VenvRunner

GPUS = "0, GPU-aaa, 97, 60000, 1980, 650.1, 5, 16\n1, GPU-bbb, 0, 600, 345, 70.0, 5, 16\n"


def _smi(gpus: str, apps: str):
    def run(cmd, **kw):
        out = gpus if cmd[1].startswith("--query-gpu") else apps
        return subprocess.CompletedProcess(cmd, 0, out, "")

    return run


def test_parse_nvidia_smi() -> None:
    gpus = parse_gpus(GPUS + "garbage\n")
    assert (
        [g["index"] for g in gpus] == ["0", "1"]
        and gpus[0]["sm_mhz"] == 1980.0
        and gpus[1]["util"] == 0.0
    )
    assert parse_apps("123, GPU-aaa, 5000\nno\n") == [
        {"pid": 123, "uuid": "GPU-aaa", "mem_mib": 5000.0}
    ]
    assert parse_gpus("0, GPU-a, [N/A], 1, 2, [N/A], 5, 16")[0]["util"] is None


def test_a_cell_seen_on_a_gpu_it_was_not_given_is_a_trespass() -> None:
    cells = {11: "cell-a", 12: "cell-a", 21: "cell-b"}
    watch = GpuWatch(
        run=_smi(
            GPUS, "11, GPU-aaa, 50000\n12, GPU-bbb, 2048\n21, GPU-bbb, 40000\n99, GPU-bbb, 10\n"
        ),
        cell_of=cells.get,
        cmdline_of=lambda pid: f"python {pid}",
    )
    watch.sample()
    assert watch.samples[0]["procs"][1] == {
        "pid": 12,
        "gpu": "1",
        "mem_mib": 2048.0,
        "cell": "cell-a",
    }
    t = watch.samples[0]["t"]
    found = attribute(
        watch.samples,
        [Assignment("cell-a", "0", None, None), Assignment("cell-b", "1", None, None)],
        watch.commands(),
    )
    assert found["cells"]["cell-a"]["trespass"] == ["1"]
    assert found["cells"]["cell-b"]["trespass"] == []
    assert found["foreign"] == [{"pid": 99, "gpu": "1", "peak_mib": 10.0, "cmd": "python 99"}]
    line = describe_trespass("cell-a", found["cells"]["cell-a"])
    assert "assigned GPU 0" in line and "GPU 1 (2048 MiB)" in line
    assert describe_trespass("cell-b", found["cells"]["cell-b"]) is None
    assert t


def test_memory_on_a_gpu_no_cell_holds_is_flagged_with_the_running_cells_as_suspects() -> None:
    # processes invisible (a container's pid namespace): only memory tells
    samples = [
        {
            "t": f"2026-11-29T10:00:0{i}+00:00",
            "gpus": [{"index": "0", "mem_mib": 40000.0}, {"index": "1", "mem_mib": m}],
            "procs": [],
        }
        for i, m in enumerate([500.0, 500.0, 9000.0, 9500.0])
    ]
    t0 = datetime.fromisoformat("2026-11-29T10:00:00+00:00").timestamp()
    a = Assignment("cell-a", "0", t0, t0 + 10)  # 10:00:00 .. 10:00:10 on GPU 0 only
    found = attribute(samples, [a])
    assert found["unheld_use"] == [
        {
            "gpu": "1",
            "first": samples[2]["t"],
            "last": samples[3]["t"],
            "peak_mib": 9500.0,
            "suspects": ["cell-a"],
        }
    ]
    assert not any(u["gpu"] == "0" for u in found["unheld_use"])


def test_cell_of_pid_reads_the_environment(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "environ").write_bytes(b"A=1\0PINMATRIX_CELL_ID=py3.12-x\0B=2\0")
    assert cell_of_pid(42, tmp_path) == "py3.12-x"
    assert cell_of_pid(43, tmp_path) is None


def _outcome(run, cell, gpu, start, end, run_s=10.0) -> None:
    Outcome(
        cell=cell,
        hash=None,
        pins={},
        runner="venv",
        stage="done",
        gpu=gpu,
        started=start,
        finished=end,
        timings={"run_s": run_s},
    ).write(run)


def test_watch_run_writes_what_it_saw_into_the_outcomes(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _outcome(
        tmp_path, "cell-a", "0", "2026-11-29T10:00:00.000+00:00", "2099-01-01T00:00:00.000+00:00"
    )
    w = watch_run(tmp_path, ["0", "1"])
    w.enabled = True
    w.watch = GpuWatch(run=_smi(GPUS, "11, GPU-bbb, 3000\n"), cell_of=lambda pid: "cell-a")
    w.watch.sample()
    report = w.finish()
    o = load_outcome(tmp_path / "outcomes" / "cell-a.json")
    assert o.gpus_seen == {"1": 3000} and "also seen on GPU 1" in o.trespass
    saved = json.loads((tmp_path / "gpu_watch.json").read_text())
    assert (
        saved["attribution"]["cells"]["cell-a"]["trespass"] == ["1"] and len(saved["samples"]) == 1
    )
    assert report["gpus"] == ["0", "1"]


def test_no_gpus_no_watch(tmp_path: Path) -> None:
    with watch_run(tmp_path, [None]) as w:
        assert not w.enabled
    with watch_run(tmp_path, [""]) as w:
        assert not w.enabled
    assert not (tmp_path / "gpu_watch.json").exists()


def test_timeline_lanes_and_summary_section(tmp_path: Path) -> None:
    _outcome(tmp_path, "a", "0", "2026-11-29T10:00:00.000+00:00", "2026-11-29T10:01:40.000+00:00")
    _outcome(tmp_path, "b", "1", "2026-11-29T10:00:01.000+00:00", "2026-11-29T10:00:51.000+00:00")
    _outcome(tmp_path, "c", "1", "2026-11-29T10:00:52.000+00:00", "2026-11-29T10:01:30.000+00:00")
    Outcome(cell="d", hash=None, pins={}, runner="venv", status="unresolvable", reason="no").write(
        tmp_path
    )
    outcomes = [load_outcome(p) for p in sorted((tmp_path / "outcomes").glob("*.json"))]
    line = timeline(outcomes)
    assert line["wall_s"] == 100.0 and line["busy_s"] == 188.0
    assert [e["cell"] for e in line["gpus"]["1"]] == ["b", "c"] and line["gpus"]["1"][1][
        "start_s"
    ] == 52.0
    text = "\n".join(render_timeline(line))
    assert "## GPU timeline" in text and "GPU 0 |A" in text and "GPU 1 |" in text
    summary = merge(tmp_path)
    assert summary["gpu_timeline"]["wall_s"] == 100.0
    assert "## GPU timeline" in render_markdown(summary)
    assert timeline([o for o in outcomes if o.cell == "d"]) is None


def _speed_run(root, name, cells):
    run = root / name
    for cell, gpu, start, end, _tps, run_s in cells:
        _outcome(run, cell, gpu, start, end, run_s)
    (run / "summary.json").write_text(
        json.dumps(
            {"speed": [{"cell": c[0], "stack": "sdpa", "tokens_per_s": c[4]} for c in cells]}
        )
    )
    return run


def test_compare_concurrent_with_alone(tmp_path: Path) -> None:
    alone = _speed_run(
        tmp_path,
        "alone",
        [
            ("a", "0", "2026-11-29T09:00:00+00:00", "2026-11-29T09:01:00+00:00", 20000.0, 60.0),
            ("b", "0", "2026-11-29T09:01:00+00:00", "2026-11-29T09:02:00+00:00", 10000.0, 60.0),
        ],
    )
    both = _speed_run(
        tmp_path,
        "both",
        [
            ("a", "0", "2026-11-29T10:00:00+00:00", "2026-11-29T10:01:00+00:00", 19800.0, 60.0),
            ("b", "1", "2026-11-29T10:00:00+00:00", "2026-11-29T10:01:05+00:00", 9000.0, 65.0),
        ],
    )
    (both / "gpu_watch.json").write_text(
        json.dumps(
            {
                "samples": [
                    {
                        "t": "2026-11-29T10:00:30+00:00",
                        "load1": 12.0,
                        "gpus": [
                            {
                                "index": "1",
                                "sm_mhz": 1500.0,
                                "power_w": 500.0,
                                "util": 99.0,
                                "mem_mib": 1.0,
                            }
                        ],
                    }
                ]
            }
        )
    )
    data = compare(both, [alone])
    rows = {r["cell"]: r for r in data["rows"]}
    assert rows["a"]["within_5pct"] is True and rows["a"]["delta"] == -0.01
    assert rows["b"]["within_5pct"] is False and rows["b"]["conditions"]["sm_mhz_median"] == 1500.0
    assert data["wall_s"] == 65.0 and data["sequential_s"] == 120.0
    text = render_compare(data)
    assert "65.0 s for 2 cells" in text and "120.0 s" in text and "**no**" in text


def test_extra_site_rules(tmp_path: Path) -> None:
    assert parse_extra_site("/s/common") == ExtraSite(Path("/s/common"))
    rule = parse_extra_site("unsloth!=none,transformers=4.57.6:/s/d")
    assert rule.when == (
        ("unsloth", "!=", "none"),
        ("transformers", "=", "4.57.6"),
    ) and rule.path == Path("/s/d")
    assert str(rule) == "unsloth!=none,transformers=4.57.6:/s/d"
    sites = [Path("/s/all"), parse_extra_site("transformers=4.57.6:/s/tf"), rule]
    assert sites_for({"transformers": "4.57.6", "unsloth": "none"}, sites) == (
        Path("/s/all"),
        Path("/s/tf"),
    )
    assert sites_for({"transformers": "4.57.6", "unsloth": "2026.10.9"}, sites) == (
        Path("/s/all"),
        Path("/s/tf"),
        Path("/s/d"),
    )
    assert sites_for({"transformers": "5.5.0", "unsloth": "2026.10.9"}, sites) == (Path("/s/all"),)
    assert parse_extra_site("C:/odd") == ExtraSite(
        Path("C:/odd")
    )  # no AXIS=VALUE before ':': a plain folder


def test_venv_runner_gives_each_cell_only_its_sites(tmp_path: Path) -> None:
    class C:
        def __init__(self, tf) -> None:
            self.pins = {"transformers": tf}

    runner = VenvRunner(
        venv_root=tmp_path,
        no_install=True,
        extra_sites=[tmp_path / "all", parse_extra_site(f"transformers=4.57.6:{tmp_path}/tf")],
    )
    lock = Lock(cell_id="x", python="3.12", torch_lock="", full_lock="")
    assert runner.venv_key(lock, C("4.57.6")) != runner.venv_key(lock, C("5.17.0"))
    assert sites_for(C("5.17.0"), runner.extra_sites) == ((tmp_path / "all").resolve(),)


def test_compare_reads_step_times_and_says_why(tmp_path: Path) -> None:
    alone = _speed_run(
        tmp_path,
        "alone",
        [("a", "0", "2026-11-29T09:00:00+00:00", "2026-11-29T09:01:00+00:00", 18668.0, 60.0)],
    )
    both = _speed_run(
        tmp_path,
        "both",
        [("a", "1", "2026-11-29T10:00:00+00:00", "2026-11-29T10:01:00+00:00", 17000.0, 60.0)],
    )
    for run, times in ((alone, [0.438, 0.439, 0.440]), (both, [0.438, 0.439, 0.551])):
        (run / "cells").mkdir()
        (run / "cells" / "a.json").write_text(
            json.dumps(
                {"checks": [{"name": "throughput.sdpa", "evidence": {"step_times_s": times}}]}
            )
        )
    row = compare(both, [alone])["rows"][0]
    assert (
        row["within_5pct"] is False
        and row["steps"]["max"] == 0.551
        and row["median_step_delta"] == 0.0
    )
    assert row["why"] == "no clock, power or host-load difference was recorded that explains it"
    assert "0.4390 (0.4380..0.5510)" in render_compare(compare(both, [alone]))


def test_a_process_whose_environment_reads_empty_is_tied_to_its_cell_by_its_command_line(
    tmp_path: Path,
) -> None:
    cell = "py3.12-torch2.11.0-tf5.5.0-unsloth2026.10.9-peft0.21.2"
    _outcome(tmp_path, cell, "1", "2026-11-29T10:00:00.000+00:00", "2026-11-29T10:05:00.000+00:00")
    sample = {
        "t": "2026-11-29T10:01:00.000+00:00",
        "load1": 1.0,
        "gpus": [],
        "procs": [{"pid": 9106, "gpu": "1", "mem_mib": 842.0, "cell": None}],
    }
    (tmp_path / "gpu_watch.json").write_text(
        json.dumps(
            {
                "samples": [sample],
                "attribution": {
                    "foreign": [
                        {
                            "pid": 9106,
                            "gpu": "1",
                            "peak_mib": 842.0,
                            "cmd": f"/tmp/venvs/{cell}-044b5c04daf5/bin/python -m probes",
                        }
                    ]
                },
            }
        )
    )

    report = reattribute(tmp_path)
    assert report["attribution"]["foreign"] == [] and report["attribution_before"]["foreign"]
    assert load_outcome(tmp_path / "outcomes" / f"{cell}.json").gpus_seen == {"1": 842}


def test_timeline_of_cells_sharing_one_gpu(tmp_path: Path) -> None:
    # matrix --cells-per-gpu 2: a and b at once on GPU 0, then c after a
    _outcome(tmp_path, "a", "0", "2026-11-29T10:00:00.000+00:00", "2026-11-29T10:01:00.000+00:00")
    _outcome(tmp_path, "b", "0", "2026-11-29T10:00:00.000+00:00", "2026-11-29T10:02:00.000+00:00")
    _outcome(tmp_path, "c", "0", "2026-11-29T10:01:00.000+00:00", "2026-11-29T10:02:00.000+00:00")
    outcomes = [load_outcome(p) for p in sorted((tmp_path / "outcomes").glob("*.json"))]
    line = timeline(outcomes)
    # 3 cells in 120 s on one GPU: 90 cells per GPU-hour, at most 2 at once
    assert line["most_at_once"] == 2 and line["cells_per_gpu_hour"] == 90.0
    chart = [row for row in render_timeline(line) if "|" in row and "=" in row]
    # two chart rows for GPU 0, so a and b do not overwrite each other; c follows a on the first
    assert len(chart) == 2 and chart[0].startswith("GPU 0 |") and "C=c" in chart[0]
    assert "B=b" in chart[1] and chart[1].startswith("      |")
    assert "**90.0 cells per GPU-hour**" in "\n".join(render_timeline(line))


def test_compare_lists_damaged_files_and_leaves_them_out(tmp_path: Path) -> None:
    """The run folders compared are untrusted: a FIFO among the outcomes, an outcome of the wrong
    shape, a speed row with NaN and a result that is a list are each named under `damaged`, the
    rest is compared, and nothing hangs or raises."""
    alone = _speed_run(tmp_path, "alone", [
        ("a", "0", "2026-11-29T09:00:00+00:00", "2026-11-29T09:01:00+00:00", 20000.0, 60.0)])
    both = _speed_run(tmp_path, "both", [
        ("a", "0", "2026-11-29T10:00:00+00:00", "2026-11-29T10:01:00+00:00", 19000.0, 61.0)])
    os.mkfifo(both / "outcomes" / "fifo.json")
    (both / "outcomes" / "list.json").write_text("[1, 2]")
    summary = json.loads((both / "summary.json").read_text())
    summary["speed"] += [{"cell": "b", "stack": "sdpa", "tokens_per_s": "NaN"}, "row"]
    (both / "summary.json").write_text(json.dumps(summary))
    (both / "cells").mkdir()
    (both / "cells" / "a.json").write_text("[]")
    data = compare(both, [alone])
    assert [(r["cell"], r["tokens_per_s"]) for r in data["rows"]] == [("a", 19000.0)]
    assert any("fifo.json: not a regular file" in d for d in data["damaged"])
    assert any("list.json: not an outcome" in d for d in data["damaged"])
    assert sum("not a speed row" in d for d in data["damaged"]) == 2
    assert "## Damaged" in render_compare(data)


def test_compare_without_a_summary_is_bad_input_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "alone").mkdir()
    code = gpus_main(["compare", str(tmp_path / "run"), "--alone", str(tmp_path / "alone")])
    assert code == 2
    assert f"{tmp_path / 'run' / 'summary.json'}: not a run's summary" in capsys.readouterr().err
