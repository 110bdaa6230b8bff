"""The `cyclegan` command: what is not a DVC stage.

cyclegan repro [--jobs N] [--profile NAME]
                                 the whole pipeline here, its runs trained side by side (what `make repro`
                                 runs): the Prefect flow of `cyclegan serve`, run in this process
cyclegan serve                   serve the Prefect deployment cyclegan/ablation from this project
cyclegan ui                      the MLflow UI on this project's store, opened on the runs
cyclegan translate CKPT IN OUT --direction <A>2<B>|<B>2<A>
                                 any folder of images through a trained checkpoint

The scale-out's deployments (cyclegan/ablation and cyclegan/fan-out on a work pool) are in prefect.yaml:
`prefect deploy --all` in the project registers them.
"""

from __future__ import annotations

import argparse
import os
import sys

from pipeline.core.entry import run_main
from pipeline.core.errors import PipelineError

# Without PREFECT_API_URL the flow starts a temporary local server: give a busy machine time to start it
# (Prefect's default is 20 s, and its first start creates its database), and keep it to itself.
EPHEMERAL_SERVER = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
SERVER_HINT = (
    "start one with `prefect server start --host 127.0.0.1` and "
    "`export PREFECT_API_URL=http://127.0.0.1:4200/api` in this terminal"
)


def require_prefect_api(timeout_s: float = 5.0) -> str:
    """The configured Prefect API URL, checked to answer; a one-line `PipelineError` otherwise.

    Without this, `serve` with no PREFECT_API_URL would start a private throw-away server that no
    `prefect deployment run` in another terminal can reach, and an unreachable URL ends in a traceback.
    """
    import httpx
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise PipelineError(f"PREFECT_API_URL is not set: {SERVER_HINT}")
    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=timeout_s).raise_for_status()
    except httpx.HTTPError as exc:
        raise PipelineError(f"the Prefect API at {url} does not answer ({exc}): {SERVER_HINT}") from None
    return url


def _serve(args: argparse.Namespace) -> int:
    from prefect.deployments.runner import EntrypointType

    from pipeline.orchestration.flows import DEPLOYMENT_NAME, cyclegan
    from pipeline.orchestration.workspace import served_project

    project = served_project()  # flow runs act on the project this command is started in
    require_prefect_api()
    print(f"serving cyclegan/{args.name} for the project at {project}", flush=True)

    # A module entrypoint (pipeline.orchestration.flows.cyclegan): the flow runs in this process's working
    # directory, whichever checkout the package was installed from; limit=1 because the flow runs of one
    # workspace share params.yaml and DVC's repo lock.
    cyclegan.serve(
        name=args.name,
        limit=args.limit,
        entrypoint_type=EntrypointType.MODULE_PATH,
        description=f"{DEPLOYMENT_NAME}: the CycleGAN loss ablation (all variants unless `variants` is set)",
    )
    return 0


def _repro(args: argparse.Namespace) -> int:
    """The flow `cyclegan` in this process, on this project: the same code path as a deployment run.

    With ``PREFECT_API_URL`` set, the run shows in that server's UI; without it Prefect starts a
    temporary local server for the run. A profile's keys are applied as the flow's overrides (kept in
    params.yaml, the file as found saved beside it)."""
    from pipeline.core.overrides import normalize_overrides
    from pipeline.core.profiles import load_profile
    from pipeline.orchestration.flows import cyclegan
    from pipeline.orchestration.workspace import served_project

    served_project()  # one line, before Prefect starts, when not in a DVC project
    for name, value in EPHEMERAL_SERVER.items():
        os.environ.setdefault(name, value)
    overrides = [*normalize_overrides(load_profile(args.profile) if args.profile else None), *args.set]
    result = cyclegan(variants=args.variants, overrides=overrides or None, jobs=args.jobs, seeds=args.seeds)
    outcomes = ", ".join(f"{name} {outcome}" for name, outcome in result["variants"].items()) or "none"
    print(f"repro: {outcomes}; report {result['report']}; MLflow parent {result['mlflow_parent_run_id']}")
    return 0


def ui_link(base_url: str, experiment_id: str | None) -> str:
    """The experiment's runs in the model-training view (MLflow 3 opens experiments in its GenAI view)."""
    base = base_url.rstrip("/")
    if experiment_id is None:
        return f"{base}/#/experiments?workflowType=machine_learning"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def _ui(args: argparse.Namespace) -> int:
    import subprocess
    from pathlib import Path

    from pipeline.core.config import read_params
    from pipeline.core.project import dvc_root
    from pipeline.core.urls import redact_url
    from pipeline.tracking import store
    from pipeline.tracking.parent import experiment_of

    project = dvc_root(Path.cwd()) or Path.cwd()
    uri = store.tracking_uri(project)
    params = read_params(project / "params.yaml") if (project / "params.yaml").is_file() else {}
    experiment = args.experiment or experiment_of(params)
    with store.use_store(uri):
        found = store.client().get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found is not None else None
    if uri.startswith(("http://", "https://")):
        print(ui_link(redact_url(uri), experiment_id))  # a server already serves its UI
        return 0
    argv = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    argv += ["--host", args.host, "--port", str(args.port)]
    print(f"MLflow UI on {uri}: {ui_link(f'http://{args.host}:{args.port}', experiment_id)}", flush=True)
    try:
        return subprocess.call(argv)
    except KeyboardInterrupt:
        return 0


def _translate(args: argparse.Namespace) -> int:
    from pipeline.cyclegan.translate import translate_folder

    count = translate_folder(
        args.checkpoint,
        args.input_dir,
        args.output_dir,
        args.direction,
        device=args.device,
        batch_size=args.batch_size,
        size=args.size,
    )
    print(f"translated {count} image(s) {args.direction} into {args.output_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cyclegan",
        description=__doc__.splitlines()[0],
        epilog="The scale-out's work-pool deployments are in prefect.yaml: `prefect deploy --all`.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    repro = commands.add_parser(
        "repro", help="the whole pipeline here, runs trained side by side (the flow, in this process)"
    )
    repro.add_argument("--jobs", type=int, default=None, help="runs trained at once (default: what fits)")
    repro.add_argument("--profile", default=None, help="apply profiles/NAME.yaml first (e.g. paper)")
    repro.add_argument(
        "-S",
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a params override, as dvc exp run -S",
    )
    repro.add_argument("--variants", nargs="+", default=None, help="only these variants (default: all)")
    repro.add_argument("--seeds", nargs="+", type=int, default=None, help="only these seeds (default: all)")
    repro.set_defaults(handler=_repro)

    serve = commands.add_parser("serve", help="serve the Prefect deployment cyclegan/ablation (Ctrl-C stops)")
    serve.add_argument("--name", default="ablation", help="deployment name (default: %(default)s)")
    serve.add_argument(
        "--limit", type=int, default=1, help="flow runs at once from this workspace (default: %(default)s)"
    )
    serve.set_defaults(handler=_serve)

    ui = commands.add_parser("ui", help="the MLflow UI on this project's store, opened on the runs")
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    ui.add_argument("--port", type=int, default=5000, help="port (default: %(default)s)")
    ui.add_argument("--experiment", help="experiment to open (default: params.yaml's train.experiment)")
    ui.set_defaults(handler=_ui)

    translate = commands.add_parser("translate", help="translate a folder of images with a checkpoint")
    translate.add_argument("checkpoint", help="a training checkpoint, e.g. models/cyclegan/checkpoint.pt")
    translate.add_argument("input_dir", help="folder of images (png, jpg)")
    translate.add_argument("output_dir", help="folder for the translated PNGs (created)")
    translate.add_argument(
        "--direction",
        required=True,
        help="a direction of the checkpoint's domains: photo2label (G) or label2photo (F) for Cityscapes, "
        "horse2zebra (G) or zebra2horse (F) for horse2zebra...; or G, F",
    )
    translate.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)"
    )
    translate.add_argument(
        "--batch-size", type=int, default=16, help="images per batch (default: %(default)s)"
    )
    translate.add_argument("--size", type=int, default=None, help="resize inputs to SIZE x SIZE first")
    translate.set_defaults(handler=_translate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cyclegan` console script; returns the exit status (any failure: one line)."""
    args = build_parser().parse_args(argv)
    return run_main(lambda: args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
