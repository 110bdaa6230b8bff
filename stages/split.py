"""DVC stage `split`: data/raw/cityscapes -> data/split (see `pipeline.data.split`)."""

from __future__ import annotations

import argparse
import time

from pipeline.core.config import load_section
from pipeline.core.entry import run_main
from pipeline.data.split import SplitConfig, split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--raw", required=True, help="extracted archive folder holding train/ and val/")
    parser.add_argument("--out", required=True, help="split folder to (re)create")
    args = parser.parse_args(argv)

    def work() -> int:
        cfg = load_section(args.params, "split", SplitConfig)
        start = time.perf_counter()
        summary = split(args.raw, args.out, cfg)
        counts = ", ".join(f"{k}={v}" for k, v in summary["counts"].items())
        print(f"split: {counts}; skipped {len(summary['skipped'])}; {time.perf_counter() - start:.1f} s")
        return 0

    return run_main(work)


if __name__ == "__main__":
    raise SystemExit(main())
