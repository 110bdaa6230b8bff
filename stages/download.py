"""DVC stage `download`: ``python -m stages.download --params params.yaml --out data/raw``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipeline.core.config import load_section
from pipeline.core.entry import run_main
from pipeline.data.download import DataConfig, download


def main(argv: list[str] | None = None) -> int:
    """Download/extract the dataset into --out and print a one-line summary."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (section data)")
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. data/raw")
    args = parser.parse_args(argv)

    def work() -> int:
        started = time.perf_counter()
        cfg = load_section(args.params, "data", DataConfig)
        provenance = download(cfg, args.out)
        counts = " ".join(f"{split}={n}" for split, n in provenance["counts"].items())
        print(
            f"download: {provenance['source']} ({provenance['source_kind']}, {provenance['bytes']} bytes, "
            f"sha256 {provenance['sha256'] or '-'}) -> {args.out}: {counts} "
            f"in {time.perf_counter() - started:.1f} s"
        )
        return 0

    return run_main(work)


if __name__ == "__main__":
    raise SystemExit(main())
