"""DVC stage `translate@<variant>`: val photos and label maps through the variant's G and F."""

from __future__ import annotations

import argparse
import time

from pipeline.core.config import load_section
from pipeline.core.entry import run_main
from pipeline.cyclegan.translate import TranslateConfig, translate_val


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--checkpoint", required=True, help="the variant's training checkpoint.pt")
    parser.add_argument("--split", required=True, help="split folder (val/ and manifest.csv)")
    parser.add_argument("--out", required=True, help="translations folder to (re)create")
    args = parser.parse_args(argv)

    def work() -> int:
        cfg = load_section(args.params, "translate", TranslateConfig)
        start = time.perf_counter()
        counts = translate_val(args.checkpoint, args.split, args.out, cfg)
        written = ", ".join(f"{direction}={n}" for direction, n in counts.items())
        print(f"translate: {written} -> {args.out}; {time.perf_counter() - start:.1f} s")
        return 0

    return run_main(work)


if __name__ == "__main__":
    raise SystemExit(main())
