"""Execute the EXAONE 3.5 surface facts, and the revision-faithful fixture, on many transformers
releases: `python tools/surface_releases.py --out DIR 4.57.6 5.0.0 ...`.

One venv holds torch (the CPU wheel from --find-links) and numpy; each release is installed beside
it with `uv pip install --target` (uv's cache links the files: seconds per release once cached).
In each, tests/integration/surface_vs_fixture.py runs the surface check of every known revision and
the fixture (as given, and with only its tied-keys list patched). Writes DIR/<release>.json and
prints, per release, each fact that fails or was not judged, and whether the fixture agrees.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "integration" / "surface_vs_fixture.py"


def base_venv(work: Path, find_links: str, torch: str) -> Path:
    """One venv holding torch (the CPU wheel from find_links) and numpy, shared by every release."""
    python = work / "base" / "bin" / "python"
    if not python.exists():
        subprocess.run(
            [
                "uv",
                "venv",
                "-q",
                "-p",
                f"{sys.version_info[0]}.{sys.version_info[1]}",
                str(work / "base"),
            ],
            check=True,
            timeout=300,
        )
        subprocess.run(
            [
                "uv",
                "pip",
                "install",
                "-q",
                "--python",
                str(python),
                "--find-links",
                find_links,
                torch,
                "numpy",
            ],
            check=True,
            timeout=1200,
        )
    return python


def run_release(python: Path, work: Path, version: str) -> dict:
    """The surface facts and the fixture executed on one transformers release, installed beside the
    base venv under `work` (kept: a second call reuses it)."""
    target = work / f"transformers-{version}"
    if not target.exists():
        subprocess.run(
            [
                "uv",
                "pip",
                "install",
                "-q",
                "--python",
                str(python),
                "--target",
                str(target),
                f"transformers=={version}",
            ],
            check=True,
            timeout=1200,
        )
    with tempfile.TemporaryDirectory(prefix=f"surface-{version}-") as tmp:
        proc = subprocess.run(
            [str(python), str(SCRIPT), tmp],
            capture_output=True,
            text=True,
            timeout=1800,
            cwd=ROOT,
            env={
                **os.environ,
                "PYTHONPATH": f"{target}{os.pathsep}{ROOT}",
                "HF_MODULES_CACHE": str(Path(tmp) / "modules"),
                "HF_HUB_OFFLINE": "1",
            },
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"transformers {version}: no result\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def summarise(out: dict) -> list[str]:
    lines = [f"transformers {out['transformers']}"]
    for revision, found in out["revisions"].items():
        failed = [f for f in found["facts"] if not f["ok"]]
        unjudged = [f for f in found["facts"] if not f["judged"]]
        signatures = {f["signature"] for f in failed}
        calls = {f["dotted"] for f in failed if f["dotted"]}
        agree = all(
            not ((set(r["entered"]) - {r.get("raised_in")}) & calls)
            and (r["outcome"] == "runs" or r["signature"] in signatures)
            for r in found["runs"]
        )
        seen = ", ".join(
            r["outcome"] if r["outcome"] == "runs" else r["signature"] for r in found["runs"]
        )
        lines.append(
            f"  {revision}: {len(found['facts'])} facts, {len(failed)} fail, "
            f"{len(unjudged)} not judged; fixture {'agrees' if agree else 'DISAGREES'} ({seen})"
        )
        for f in failed:
            lines.append(f"    fails {f['id']}: {f['outcome']} [{f['signature']}] {f['cause']}")
        for f in unjudged:
            lines.append(f"    not judged {f['id']}: {f['detail'].get('not_judged', '')[:160]}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("releases", nargs="+", help="transformers releases, e.g. 4.57.6 5.0.0")
    parser.add_argument("--out", type=Path, required=True, help="folder for <release>.json")
    parser.add_argument(
        "--work", type=Path, default=Path(tempfile.gettempdir()) / "pinmatrix-surface-releases"
    )
    parser.add_argument(
        "--find-links", default=os.environ.get("PINMATRIX_FIND_LINKS", "/opt/wheels")
    )
    parser.add_argument("--torch", default="torch==2.13.0+cpu")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    python = base_venv(args.work, args.find_links, args.torch)
    for index, version in enumerate(args.releases, 1):
        print(f"[{index}/{len(args.releases)}] transformers {version} ...", flush=True)
        out = run_release(python, args.work, version)
        (args.out / f"{version}.json").write_text(json.dumps(out, indent=1))
        print("\n".join(summarise(out)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
