"""``python -m sbkernels.pilot MODULE:FACTORY``: the pilot on the user's model and data (see :mod:`sbkernels.pilot`).

``FACTORY()`` returns ``(model, loader, optimizer, evaluate)``: the model with its checkpoint loaded, the
training loader, the optimizer the run would use, and ``evaluate(model) -> held-out loss``.
"""

from __future__ import annotations

import argparse
import importlib

from . import pilot


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sbkernels.pilot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("factory", help="MODULE:FACTORY returning (model, loader, optimizer, evaluate)")
    parser.add_argument("--budget", type=float, default=60.0, help="each arm's training seconds (default 60)")
    parser.add_argument("--segment", type=float, help="seconds per segment (default: a tenth of the budget)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clock", choices=("wall", "rows"), default="wall")
    parser.add_argument("--plot", help="write the held-out loss against time to this PNG")
    args = parser.parse_args(argv)
    module, _, name = args.factory.partition(":")
    if not name:
        parser.error(f"factory must be MODULE:FACTORY, got {args.factory!r}")
    model, loader, optimizer, evaluate = getattr(importlib.import_module(module), name)()
    report = pilot(model, loader, optimizer, evaluate, budget=args.budget, segment=args.segment,
                   repeats=args.repeats, clock=args.clock)  # fmt: skip
    print(report)
    if args.plot:
        report.plot(args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
