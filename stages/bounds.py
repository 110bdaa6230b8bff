"""DVC stage `bounds`: the floor of every score, and the ceiling of the FCN scores (see
`pipeline.scoring.bounds`)."""

from __future__ import annotations

import argparse
import time

from pipeline.core.config import from_mapping, read_params
from pipeline.core.entry import run_main
from pipeline.scoring.bounds import BoundsConfig, run_bounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--split", required=True, help="split folder (train domains, val, manifest.csv)")
    parser.add_argument("--judge", required=True, help="the FCN judge's checkpoint.pt")
    parser.add_argument("--out", required=True, help="scores JSON to write")
    parser.add_argument("--confusion", required=True, help="per-image confusion matrices (.npz) to write")
    args = parser.parse_args(argv)

    def work() -> int:
        section = read_params(args.params).get("evaluate") or {}
        keys = {field: section[field] for field in ("batch_size", "device", "fid") if field in section}
        cfg = from_mapping(BoundsConfig, keys, "evaluate")
        start = time.perf_counter()
        result = run_bounds(args.split, args.judge, args.out, args.confusion, cfg)
        shown = "; ".join(
            f"{key} {value:.3f}"
            for key, value in result.items()
            if isinstance(value, float) and key.startswith(("floor/", "ceiling/"))
        )
        print(f"bounds: {shown} ({result['n_images']} images, {time.perf_counter() - start:.1f} s)")
        return 0

    return run_main(work)


if __name__ == "__main__":
    raise SystemExit(main())
