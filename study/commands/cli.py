"""``sigmatune`` command line: the argument parsers, and the dispatch to the command modules.

Each subcommand's parser is here; its code is ``sigmatune.study.commands.<module>.main(args)``,
imported when that command runs (:data:`COMMANDS`), so one command never loads what another
needs."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from sigmatune.study.errors import run_command
from sigmatune.study.names import SCHEDULE_METHODS, preset_names
from sigmatune.study.urls import DEFAULT_STORAGE_URL

# subcommand -> the module under sigmatune.study.commands whose main(args) runs it
COMMANDS = {
    "run": "run",
    "tune-sampling": "tune_sampling",
    "schedule": "schedule",
    "status": "status",
    "confirm": "confirm",
    "export": "export",
    "dashboard": "dashboard",
    "report": "report",
    "storage-proxy": "storage_proxy",
}

DESCRIPTION = """\
sigmatune: how should a diffusion model spend its effort across noise levels?

A bilevel Optuna study: the outer study tunes the training weighting (parameterisation,
loss weighting w(sigma), noise-level density p(sigma)); every outer trial trains a model and
inner studies tune its sampling step locations, scored by FID. Every reported FID is
re-scored on held-out seeds, beside the scorer's floor (real vs real). Results live in an
Optuna storage (SQLite by default) and can be viewed with optuna-dashboard.
"""

RUN_EPILOG = """\
examples:
  sigmatune run --preset toy                 # a two-minute look on a 2-D Gaussian mixture
  sigmatune run --preset digits              # 8x8 digits, small U-Net, classifier FID
  sigmatune run my.toml --outer-trials 20    # your own config; resumes if the study exists
  sigmatune run my.toml --devices cuda:0,cuda:1   # one worker per GPU, one study
Several processes started with the same command and storage share the work.
"""

TUNE_EPILOG = """\
examples:
  sigmatune tune-sampling --preset toy --nfe 5 \\
      --denoiser sigmatune.models.data:gmm2d_mixture
      # the exact denoiser of the toy data set (a Gaussian mixture)
  sigmatune tune-sampling --preset digits --checkpoint model.pt --nfe 5 9
      # a model file: `sigmatune run` leaves one per outer trial under
      # sigmatune-artifacts/runs/ beside sigmatune.db (`sigmatune status` names the study)
  sigmatune tune-sampling --preset cifar10 --denoiser diffusers:./ddpm-cifar10 \\
      --reference-stats cifar10-train.npz --nfe 10
      # a local diffusers model folder (save_pretrained), FID against pytorch-fid
      # statistics; sigma range: the model's own unless --set sigma_min=/sigma_max=
Afterwards `sigmatune status`, `export`, `report` and `dashboard` read the results as the
study PREFIX (default NAME-sampling).
"""

SCHEDULE_EPILOG = """\
examples:
  sigmatune schedule --method gits --nfe 9 --checkpoint model.pt --preset digits
      # GITS for a model file of `sigmatune run`, over the digits preset's sigma range
  sigmatune schedule --method ld3 --nfe 7 --denoiser sigmatune.models.data:gmm2d_mixture
      # LD3 (started from GITS) for the exact denoiser of the toy data set
  sigmatune schedule --method karras --nfe 5 --set sigma_min=0.02 --set sigma_max=20
      # no model needed for karras and loglinear
  sigmatune schedule --method gits --nfe 10 --denoiser diffusers:./ddpm-cifar10
      # a local diffusers model folder: its shape and sigma range; the .diffusers.json
      # lists the timesteps / sigmas each of its own schedulers takes
It writes METHOD-SAMPLER-nfeK.json, .csv, .pt (k-diffusion: torch.load(path,
weights_only=True)["sigmas"]) and .diffusers.json into the output folder and prints the
paths. `tune-sampling` searches on FID instead (and scores GITS and LD3 beside its result).
"""

STORAGE_HELP = f"Optuna storage URL (default: {DEFAULT_STORAGE_URL})"
PRESET_HELP = f"a built-in config: {', '.join(preset_names())}"


# --------------------------------------------------------------------------------------------
# Config from arguments


# --------------------------------------------------------------------------------------------
# Commands


# --------------------------------------------------------------------------------------------
# Parsers, one per command


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="a TOML config file (or use --preset)")
    p.add_argument("--preset", help=PRESET_HELP)
    p.add_argument("--storage", help=STORAGE_HELP)
    p.add_argument("--study-name", help="the outer study's name (default: the config's name)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--inner-trials", type=int, help="trials per inner study")
    p.add_argument("--nfe", type=int, nargs="+", help="NFE budgets (the first is primary)")
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bars or periodic progress lines"
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override any config key, dotted, value in TOML (repeatable), "
        "e.g. --set inner.tune_sigma_range=true --set train.train_nimg=512_000",
    )


def _add_study_args(p: argparse.ArgumentParser, *, positional_storage: bool) -> None:
    """The arguments of the commands that read a study: storage and study name."""
    if positional_storage:
        p.add_argument("storage", nargs="?", default=DEFAULT_STORAGE_URL, help=STORAGE_HELP)
        p.add_argument("--storage", dest="storage_option", help="the same, as an option")
    else:
        p.add_argument("study", nargs="?", help="the study's name (default: the only one)")
        p.add_argument("--storage", default=DEFAULT_STORAGE_URL, help=STORAGE_HELP)
    p.add_argument("--study-name", help="which study, when the storage holds several")


def _add_diffusers_args(p: argparse.ArgumentParser) -> None:
    """The options of a ``--denoiser diffusers:PATH`` model."""
    p.add_argument(
        "--class-labels",
        type=int,
        nargs="+",
        metavar="N",
        help="diffusers:PATH, class-conditional model: the class of each sample (sample j "
        "gets the (j mod len)-th)",
    )
    p.add_argument(
        "--guidance-scale",
        type=float,
        metavar="W",
        help="diffusers:PATH, class-conditional: classifier-free guidance uncond + W (cond - "
        "uncond), with --null-label (a DiT's is its extra class)",
    )
    p.add_argument(
        "--null-label", type=int, metavar="K", help="the unconditional class for guidance"
    )
    p.add_argument(
        "--timestep-mode",
        choices=["interpolate", "nearest"],
        help="diffusers:PATH: the network's timestep for a sigma, interpolated in log sigma "
        "over its table (default, as EulerDiscreteScheduler) or the nearest entry",
    )


def _parser_run(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="create or resume the bilevel study and run it",
        description="Create or resume the bilevel study (outer: training weighting; inner: "
        "step locations per NFE budget) and run it to the configured number of trials. Prints "
        "one block per finished outer trial with its held-out figures.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(p)
    p.add_argument("--outer-trials", type=int, help="total outer trials of the study")
    p.add_argument(
        "--heartbeat-interval",
        type=int,
        default=None,
        help="seconds between trial heartbeats (default 10)",
    )
    p.add_argument(
        "--grace-period",
        type=int,
        default=None,
        help="seconds without heartbeat before a trial of a dead process is "
        "failed and retried (default 30)",
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="run N worker processes on this machine, all on the same storage: one per GPU "
        "(cuda:0 ... with device auto or cuda; round robin when N exceeds the GPUs), else all "
        "on the config's device. The command waits for them, forwards Ctrl-C and SIGTERM, "
        "prefixes each output line with [wK] and fails if any worker fails. SQLite "
        "serialises writers: fine for a few workers on one machine; use PostgreSQL for many",
    )
    p.add_argument(
        "--devices",
        metavar="LIST",
        help="one worker per device, comma-separated, e.g. cuda:0,cuda:1 (as --workers)",
    )


def _parser_tune(sub: Any) -> None:
    p = sub.add_parser(
        "tune-sampling",
        help="inner studies alone, for a model file or your own denoiser",
        description="Tune the sampling step locations of one model: a sigmatune model file "
        "(--checkpoint), a k-diffusion-style denoiser D(x, sigma) returned by "
        "module:function (--denoiser), or a local diffusers model or pipeline folder "
        "(--denoiser diffusers:PATH; its own shape and sigma range, a latent pipeline's "
        "samples decoded by its VAE). The data set of the config (--dataset NAME or "
        "folder:PATH), or FID statistics (--reference-stats), gives the FID reference. "
        "Prints held-out figures against karras rho=7 (full range and the tuned range) and "
        "the gap closed to a many-step reference.",
        epilog=TUNE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(p)
    p.add_argument(
        "--dataset",
        help="data set for the FID reference (overrides the config): a name or folder:PATH "
        "(a folder of images)",
    )
    p.add_argument(
        "--reference-stats",
        metavar="PATH",
        help="the FID reference as precomputed statistics: an .npz of mu and sigma (as "
        "pytorch-fid and clean-fid write, Inception 2048-D); no floor is known then",
    )
    p.add_argument("--sampler", nargs="+", help="samplers to search over (euler, heun, dpmpp_2m)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a model file written by `sigmatune run`")
    src.add_argument(
        "--denoiser",
        help="module:function returning D(x, sigma), or diffusers:PATH (a local diffusers "
        "model or pipeline folder)",
    )
    _add_diffusers_args(p)
    p.add_argument(
        "--reference-steps",
        type=int,
        default=256,
        help="steps of the karras reference that the gap closed is measured against "
        "(default 256; 0 skips it)",
    )
    p.add_argument(
        "--study-prefix",
        help="the study's name; inner studies are PREFIX/nfe-K (default: NAME-sampling)",
    )


def _parser_schedule(sub: Any) -> None:
    p = sub.add_parser(
        "schedule",
        help="one step schedule for a model in seconds, without a study",
        description="Compute one step schedule for a model and write it in every export "
        "format: karras (Karras et al. 2022, rho 7 unless --rho), loglinear (uniform in "
        "logSNR), gits (Chen et al. 2024: a teacher trajectory, one-step costs, dynamic "
        "programming) or ld3 (Tong et al. 2025: the sampler's output matched to the "
        "teacher's by gradient descent on the step locations, started from GITS). The sigma "
        "range and seed come from the config (default: sigma 0.002 to 80), the sample shape "
        "from the model file (else --shape, else the config's data set). Prints the sigmas "
        "and what they cost in denoiser evaluations and seconds. No FID, no storage.",
        epilog=SCHEDULE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", help="a TOML config file (or --preset; optional)")
    p.add_argument("--preset", help=PRESET_HELP)
    p.add_argument(
        "--method", required=True, choices=SCHEDULE_METHODS, help="the schedule's method"
    )
    p.add_argument(
        "--nfe",
        dest="schedule_nfe",
        metavar="K",
        type=int,
        required=True,
        help="the NFE budget (one)",
    )
    p.add_argument(
        "--sampler",
        dest="schedule_sampler",
        metavar="NAME",
        default="heun",
        help="euler, heun or dpmpp_2m (default heun)",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="a model file written by `sigmatune run`")
    src.add_argument(
        "--denoiser",
        help="module:function returning D(x, sigma), or diffusers:PATH (a local diffusers "
        "model or pipeline folder: its shape and sigma range)",
    )
    _add_diffusers_args(p)
    p.add_argument("--shape", type=int, nargs="+", help="sample shape for --denoiser, e.g. 3 32 32")
    p.add_argument("--rho", type=float, default=7.0, help="karras rho (default 7)")
    p.add_argument("--num-noises", type=int, help="gits/ld3: noises (default 16 / 32)")
    p.add_argument("--teacher-steps", type=int, help="gits/ld3: the teacher's steps (default 32)")
    p.add_argument("--iterations", type=int, help="ld3: gradient steps (default 30)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set sigma_min=0.02 (repeatable)",
    )
    p.add_argument(
        "-o", "--output", default=".", help="folder to write the files to (default: here)"
    )


def _parser_status(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="the trials of a study and their held-out figures",
        description="Print the trials of a study (a `run` or a `tune-sampling`) with their "
        "training weighting and, per NFE budget, the held-out FID of the tuned schedule "
        "beside karras rho=7 (full range and the tuned range), loglinear and the floor.",
    )
    _add_study_args(p, positional_storage=True)
    p.add_argument(
        "--format",
        choices=["text", "json"],
        default="text",
        help="text (a table) or json (a list of trials with number, state, name, label, "
        "params, held_out, tuned_origin, reason and confirmed)",
    )


def _parser_confirm(sub: Any) -> None:
    p = sub.add_parser(
        "confirm",
        help="train a study's leading configurations again with unused seeds, rank by all",
        description="An outer trial's held-out spread is over sampling seeds; one model per "
        "configuration cannot tell two configurations apart by less than the spread over "
        "training seeds. This trains the leading trials' configurations again with seeds the "
        "study never used, scores each new model with the trial's tuned schedule at the "
        "primary NFE on every held-out seed set, and ranks the trials by the mean over their "
        "models (spread: over the models). Results are stored in the study as they are "
        "measured: run the same command again to resume, or with more --seeds to add some.",
        epilog="examples:\n  sigmatune confirm                      # the top 3, the best "
        "literature and the best proposed trial, 2 seeds\n  sigmatune confirm --trials 0 7 "
        "--seeds 4   # trials 0 and 7, four more models each",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_study_args(p, positional_storage=True)
    p.add_argument(
        "--top",
        type=int,
        default=3,
        help="confirm the N best complete trials by held-out FID at the primary NFE, plus "
        "the best literature configuration and the best proposed trial (default 3)",
    )
    p.add_argument("--trials", type=int, nargs="+", metavar="N", help="these trials instead")
    p.add_argument(
        "--seeds",
        type=int,
        default=2,
        help="models trained again per trial, with seeds config seed + 1, + 2, ... (default 2)",
    )
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the study's config)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--format",
        choices=["text", "json"],
        default="text",
        help="text (a table and the verdict) or json (trials with their models, verdict)",
    )


def _parser_export(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="the best training weighting and step schedules, for other tools",
        description="Export a trial (default: the best) of a study: json (everything, with "
        "p, w and W tabulated over lambda and the held-out figures per NFE), csv (one row per "
        "step), k-diffusion (one tensor file per NFE and a snippet for "
        "K.sampling.sample_heun) or diffusers (sigmas for "
        "EulerDiscreteScheduler.set_timesteps(sigmas=...) for every NFE, and for a study of a "
        "diffusers model the timesteps or sigmas each of its own schedulers takes, with the "
        "sigma error). Every sigma list is under the key "
        "'sigmas', descending, ending in 0. Files are written atomically and their paths "
        "printed.",
    )
    _add_study_args(p, positional_storage=False)
    p.add_argument("--trial", type=int, help="trial number (default: the best)")
    p.add_argument(
        "--nfe",
        type=int,
        help="one NFE budget (default: every budget; diffusers: every budget under "
        "'schedules', the primary one at the top level)",
    )
    p.add_argument(
        "--format",
        default="json",
        choices=["json", "csv", "k-diffusion", "diffusers"],
        help="output format (default: json)",
    )
    p.add_argument(
        "-o",
        "--output",
        help="output file (default: stdout); k-diffusion: a folder, or a file with --nfe "
        "(default: the current folder)",
    )


def _parser_dashboard(sub: Any) -> None:
    p = sub.add_parser(
        "dashboard",
        help="optuna-dashboard on the storage and its artifacts",
        description="Start optuna-dashboard on a storage and its artifact store, with the "
        "figures and notes sigmatune puts into the studies. Binds to 127.0.0.1 unless --host "
        "says otherwise.",
    )
    p.add_argument("storage", nargs="?", default=DEFAULT_STORAGE_URL, help=STORAGE_HELP)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 or :: listen on "
        "every IPv4 or IPv6 address, without authentication)",
    )
    p.add_argument("--port", type=int, default=8080, help="port, 1-65535 (default 8080)")
    p.add_argument(
        "--artifact-dir", help="artifact folder (default: <db stem>-artifacts beside a SQLite file)"
    )
    p.add_argument(
        "--artifact-store",
        help="the runs' artifact_store, when they used a bucket (s3://BUCKET/PREFIX or "
        "file:///PATH): model files and exports are read from there",
    )


def _parser_report(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="one self-contained HTML report of a study",
        description="Write one HTML file (plotly inlined, no network needed) with the "
        "figures, the best configuration, the table of trials and the exported schedules, "
        "every FID on held-out seeds. It replaces an earlier report, never another file.",
    )
    _add_study_args(p, positional_storage=False)
    p.add_argument(
        "-o", "--output", default="report.html", help="output file (default: report.html)"
    )


def _parser_storage_proxy(sub: Any) -> None:
    p = sub.add_parser(
        "storage-proxy",
        help="Optuna's gRPC storage proxy in front of the study database",
        description="Serve a database storage (PostgreSQL, MySQL or SQLite) to many workers "
        "through Optuna's gRPC storage proxy (run_grpc_proxy_server); start the workers with "
        "--storage grpc://HOST:PORT. The proxy holds the database connections (at most "
        "--threads), so thousands of workers do not exhaust the server's max_connections; "
        "trials of a killed worker are failed by heartbeats the workers record (their clocks "
        "must agree within the grace period).",
    )
    p.add_argument(
        "--storage",
        required=True,
        help="the database URL it serves, e.g. postgresql+psycopg://USER:PASSWORD@HOST/DB",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0: every interface)",
    )
    p.add_argument("--port", type=int, default=13000, help="port (default 13000, Optuna's)")
    p.add_argument(
        "--threads",
        type=int,
        default=8,
        help="server threads, and so the most database connections (default 8)",
    )


PARSERS: tuple[Callable[[Any], None], ...] = (
    _parser_run,
    _parser_tune,
    _parser_schedule,
    _parser_status,
    _parser_confirm,
    _parser_export,
    _parser_dashboard,
    _parser_report,
    _parser_storage_proxy,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sigmatune",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in PARSERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    command = importlib.import_module(f"sigmatune.study.commands.{COMMANDS[args.command]}")
    return run_command(
        lambda: command.main(args), "interrupted; run the same command again to resume"
    )


if __name__ == "__main__":
    sys.exit(main())
