"""Every `python -m pinmatrix` command, one module each, gathered in one registry (COMMANDS).

A command module exposes HELP, its typed config (a frozen dataclass of the concerns it reads,
pinmatrix/run/options.py) and `run(config) -> int`; the standalone ones (`remote-code-surface`,
`cdi-spec`, `base-image`, `which`) declare their few options on their own config's fields and parse
their argv with `main` (commands/base.py own_parser). pinmatrix/cli/main.py only looks a
name up here, builds the config and calls `run`.
"""
from __future__ import annotations

from pinmatrix.commands import (
                                base_image,
                                bisect,
                                bundle,
                                cdi_spec,
                                doctor,
                                listing,
                                matrix,
                                merge,
                                nightly,
                                remote_code_surface,
                                report,
                                resolve,
                                run_cell,
                                which,
)
from pinmatrix.commands.base import Command, from_bundle, out_first

COMMANDS: dict[str, Command] = {
    command.name: command
    for command in (
        Command("matrix", matrix.HELP, matrix.run, matrix.MatrixConfig, prepare=from_bundle),
        Command("resolve", resolve.HELP, resolve.run, resolve.ResolveConfig),
        Command("report", report.HELP, report.run, report.ReportConfig),
        Command("list", listing.HELP, listing.run, listing.ListConfig),
        Command("nightly", nightly.HELP, nightly.run, nightly.NightlyConfig),
        Command("merge", merge.HELP, merge.run, merge.MergeConfig, usage=merge.USAGE),
        Command("doctor", doctor.HELP, doctor.run, doctor.DoctorConfig),
        Command("run-cell", run_cell.HELP, run_cell.run, run_cell.RunCellConfig),
        Command("bisect", bisect.HELP, bisect.run, bisect.BisectConfig),
        Command("bundle", bundle.HELP, bundle.run, bundle.BundleConfig, prepare=out_first),
        # standalone: their own small parsers (no matrix, selectors or run options)
        Command("remote-code-surface", remote_code_surface.HELP, remote_code_surface.run,
                remote_code_surface.SurfaceConfig, main=remote_code_surface.main),
        Command("cdi-spec", cdi_spec.HELP, cdi_spec.run, cdi_spec.CdiSpecConfig,
                main=cdi_spec.main),
        Command("base-image", base_image.HELP, base_image.run, base_image.BaseImageConfig,
                main=base_image.main),
        Command("which", which.HELP, which.run, which.WhichConfig, main=which.main),
    )
}
