"""`continuum demo`, added to the CLI through the `continuum.commands` entry point (the CLI does not import
the example app; the app plugs its command in)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    demo = sub.add_parser("demo", help="run the whole flywheel on the support-desk scenario (embedded default)")
    demo.add_argument("--scenario", help="scenario file (YAML); default: the packaged support desk")
    demo.add_argument("--json", help="write the learning curve and cycles here")
    demo.add_argument("--scale", type=float, default=1.0, help="traffic volume factor (default 1.0)")
    demo.add_argument("--strict", action="store_true", help="exit 1 when a learning target is missed")
    demo.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    from continuum_pipeline.cli import show_lake
    from continuum_pipeline.scenario.demo import DemoSize, run_demo
    from continuum_pipeline.settings import get_settings

    size = DemoSize()
    if args.scale != 1.0:
        size = DemoSize(*(max(20, int(v * args.scale)) for v in (size.teacher_per_day, size.student_per_day,
                                                                  size.after_change_per_day)))
    report = run_demo(args.scenario, Path(args.json) if args.json else None, size)
    show_lake(get_settings())
    return 0 if all(report.targets.values()) or not args.strict else 1
