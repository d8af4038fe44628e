"""compose.yaml and the Dockerfile against the project itself: every command is a real entry
point with arguments it accepts, every variable is one something reads, volumes and ports fit
together, and the image installs what those commands need (torch before the project)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
from composekit import ROOT, interpolate, load_compose, variables

from distillq.spec import load_spec
from orchestrator.cli import build_parser
from orchestrator.embedded import worker_command

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

PROJECT_IMAGE = "distillq:latest"
FULL_ENV = {"REDIS_PASSWORD": "pw", "FLOWER_BASIC_AUTH": "admin:pw",
            "AWS_SECRET_ACCESS_KEY": "s3cret"}
# read by the images of other projects, not by distillq's code
FOREIGN_ENV = {"redis": {"REDIS_PASSWORD"}, "minio": {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}}
# read by the AWS SDK inside pyarrow's S3 file system (and the aws-cli image), in every service
AWS_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
FLOWER_READS = re.compile(r"^FLOWER_[A-Z_]+$")  # Flower reads every FLOWER_<option> itself


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _ours(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items()
            if svc.get("image") == PROJECT_IMAGE}


def _cmd(svc: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    return [interpolate(str(p), env or FULL_ENV) for p in svc["command"]]


def _option(cmd: list[str], *names: str) -> str | None:
    for i, part in enumerate(cmd):
        for name in names:
            if part == name and i + 1 < len(cmd):
                return cmd[i + 1]
            if part.startswith(name + "="):
                return part.split("=", 1)[1]
    return None


def _source_text() -> str:
    files = [*ROOT.glob("orchestrator/**/*.py"), *ROOT.glob("workers/**/*.py"),
             *ROOT.glob("storage/**/*.py"), *ROOT.glob("deploy/*.py")]
    return "\n".join(p.read_text() for p in files)


def test_every_service_has_a_command_and_the_project_services_share_one_image(
        compose: dict[str, Any]) -> None:
    ours = _ours(compose)
    assert {"flower", "orchestrator", "worker-generate", "worker-attribute", "worker-train",
            "sim-teacher"} <= set(ours)
    for name, svc in compose["services"].items():
        assert svc.get("command"), f"{name} has no command"
        assert "entrypoint" not in svc, f"{name}: the image has no entrypoint to override"
    for name, svc in ours.items():
        assert svc["build"]["context"] == ".", name
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_commands_are_real_entry_points(compose: dict[str, Any],
                                        pyproject: dict[str, Any]) -> None:
    scripts = pyproject["project"]["scripts"]
    for name, svc in _ours(compose).items():
        cmd = _cmd(svc)
        if cmd[0] == "python":
            assert cmd[1] == "-m", name
            spec = importlib.util.find_spec(cmd[2])
            assert spec is not None and spec.origin, f"{name}: no module {cmd[2]}"
            assert 'if __name__ == "__main__"' in Path(spec.origin).read_text(), name
        elif cmd[0] == "celery":
            assert cmd[1:3] == ["-A", "workers.app"], name
            module = importlib.import_module("workers.app")
            assert hasattr(module, "app")
            assert cmd[3] in ("worker", "flower"), name
        else:
            assert cmd[0] in scripts, f"{name}: {cmd[0]} is not a console script"
            target = scripts[cmd[0]]
            mod, _, func = target.partition(":")
            assert callable(getattr(importlib.import_module(mod), func))


def test_orchestrator_arguments_parse_and_metrics_port_is_exposed(
        compose: dict[str, Any]) -> None:
    svc = compose["services"]["orchestrator"]
    cmd = _cmd(svc)
    args = build_parser().parse_args(cmd[1:])
    assert args.command == "serve"
    assert args.metrics_port and str(args.metrics_port) in [str(p) for p in svc["expose"]]
    scaling = (ROOT / "docs" / "scaling.md").read_text()
    assert f"orchestrator:{args.metrics_port}" in scaling  # the documented scrape target


def test_simulated_teacher_arguments_parse_and_the_compose_spec_points_at_it(
        compose: dict[str, Any]) -> None:
    from workers.teachers import sim

    svc = compose["services"]["sim-teacher"]
    cmd = _cmd(svc)
    args = sim._args(cmd[3:])
    assert args.host == "0.0.0.0" and args.pool.startswith("/data/")
    assert svc["profiles"] == ["sim"]
    spec = load_spec(str(ROOT / "examples" / "compose-demo.yaml"))
    assert spec.teacher.base_url == f"http://sim-teacher:{args.port}/v1"
    assert str(spec.storage).startswith("/data/")  # the volume every service mounts


def test_workers_serve_existing_queues_and_every_queue_is_served(
        compose: dict[str, Any]) -> None:
    from distillq.queues import QUEUES, ROUTES
    from workers.app import BrokerSettings, celery_config

    configured = {q.name for q in celery_config(BrokerSettings("redis://x"))["task_queues"]}
    served: set[str] = set()
    for name, svc in _ours(compose).items():
        cmd = _cmd(svc)
        if cmd[:4] != ["celery", "-A", "workers.app", "worker"]:
            continue
        queues = set((_option(cmd, "-Q", "--queues") or "").split(","))
        assert queues <= configured, f"{name}: {queues - configured} not in the app's queues"
        served |= queues
        assert _option(cmd, "-P", "--pool") in (None, "prefork", "threads", "solo"), name
        assert int(_option(cmd, "-c", "--concurrency") or "1") >= 1
        node = _option(cmd, "-n", "--hostname") or ""
        assert "%h" in node, f"{name}: scaled workers need distinct node names"
        assert "-E" in cmd and "--without-gossip" in cmd and "--without-mingle" in cmd
        # the embedded cluster runs the same worker command (queue, pool, flags)
        queue = next(iter(queues))
        local = worker_command(queue, _option(cmd, "-P") or "prefork", 1)
        for flag in ("-E", "--without-gossip", "--without-mingle"):
            assert flag in local
    assert served == set(QUEUES) == configured
    assert {r["queue"] for r in ROUTES.values()} <= served
    train = compose["services"]["worker-train"]
    assert _option(_cmd(train), "-c") == "1"  # one training process per GPU
    gpus = train["deploy"]["resources"]["reservations"]["devices"]
    assert gpus[0]["count"] == 1 and "gpu" in gpus[0]["capabilities"]


def test_flower_uses_the_project_config_with_auth_and_its_port(compose: dict[str, Any]) -> None:
    svc = compose["services"]["flower"]
    cmd = _cmd(svc)
    conf = _option(cmd, "--conf")
    assert conf and (ROOT / conf).is_file()
    text = (ROOT / conf).read_text()
    assert "format_task" in text and "install_api_filter" in text
    assert "FLOWER_BASIC_AUTH" in svc["environment"]
    assert ":?" in str(svc["environment"]["FLOWER_BASIC_AUTH"])  # refuses to start without
    port = _option(cmd, "--port")
    assert [str(p) for p in svc["ports"]] == [f"{port}:{port}"]


def test_environment_variables_are_ones_something_reads(compose: dict[str, Any]) -> None:
    code = _source_text()
    docs = "\n".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    for name, svc in compose["services"].items():
        for var in svc.get("environment") or {}:
            if var in FOREIGN_ENV.get(name, set()) or var in AWS_ENV:
                continue
            if FLOWER_READS.match(var) and name == "flower":
                continue
            reads = f'"{var}"' in code
            spec_key = f"api_key_env: {var}" in docs  # a key named by a spec's teacher
            assert reads or spec_key, f"{name}: nothing reads {var}"
    # every ${VAR} the file uses is documented in its header or docs/scaling.md
    header = (ROOT / "compose.yaml").read_text().split("\nx-distillq")[0]
    scaling = (ROOT / "docs" / "scaling.md").read_text()
    for var in variables(compose):
        assert var in header or var in scaling, f"${{{var}}} is not documented"
    for svc in compose["services"].values():  # and interpolation succeeds with them set
        _cmd(svc)


def test_volumes_and_ports_are_sane(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used: set[str] = set()
    host_ports: list[str] = []
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            source, target = vol.split(":")[:2]
            assert target.startswith("/"), (name, vol)
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
        for port in svc.get("ports", []):
            host, _, container = str(port).rpartition(":")
            assert 0 < int(container) < 65536 and 0 < int(host) < 65536
            host_ports.append(host)
        for port in svc.get("expose", []):
            assert 0 < int(port) < 65536
    assert used == declared
    assert len(host_ports) == len(set(host_ports))
    env = compose["x-distillq"]["environment"]
    mount = compose["x-distillq"]["volumes"][0].split(":")[1]
    assert interpolate(env["DISTILLQ_STORAGE"], {}).startswith(mount + "/")
    assert env["DISTILLQ_WORKDIR"].startswith(mount + "/")
    assert "@redis:6379/" in env["REDIS_URL"] and "${REDIS_PASSWORD" in env["REDIS_URL"]
    redis_cmd = _cmd(compose["services"]["redis"])
    assert _option(redis_cmd, "--requirepass") == FULL_ENV["REDIS_PASSWORD"]
    assert "$$REDIS_PASSWORD" in " ".join(compose["services"]["redis"]["healthcheck"]["test"])


def test_dockerfile_installs_torch_first_and_copies_what_the_commands_use(
        compose: dict[str, Any], pyproject: dict[str, Any]) -> None:
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    args = {ln.split()[1].split("=")[0] for ln in lines if ln.startswith("ARG ")}
    build_args = set(compose["x-distillq"]["build"].get("args", {}))
    assert build_args <= args, f"compose passes build args the Dockerfile lacks: {build_args}"
    runs = [ln for ln in lines if ln.startswith("RUN ")]
    torch_at = next(i for i, ln in enumerate(runs) if "$TORCH_SPEC" in ln)
    project_at = next(i for i, ln in enumerate(runs) if re.search(r"pip install \"?\.", ln))
    assert torch_at < project_at, "torch must be installed before the project"
    arg_default = next(ln for ln in lines if ln.startswith("ARG TORCH_SPEC"))
    assert "download.pytorch.org/whl/cpu" in arg_default  # no multi-GB CUDA build by default
    copied = {ln.split()[1] for ln in lines if ln.startswith("COPY ")}
    for pkg in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert pkg.rstrip("*") in copied, f"{pkg} is not copied into the image"
    assert {"deploy", "examples"} <= copied  # flower --conf, compose-demo.yaml
    setup = (ROOT / "scripts" / "setup").read_text()
    no_deps = re.search(r"--no-deps ([\w\- ]+)", setup)
    assert no_deps and f"--no-deps {no_deps.group(1).strip()}" in " ".join(runs)
    assert lines[-1].startswith("USER ") and "root" not in lines[-1]
    assert next(ln for ln in lines if ln.startswith("WORKDIR")) == "WORKDIR /app"


def test_compose_header_commands_parse() -> None:
    """The ``docker compose exec`` lines in the header run real orchestrator commands."""
    header = (ROOT / "compose.yaml").read_text().split("\nx-distillq")[0]
    for line in header.splitlines():
        m = re.search(r"exec (?:-T )?orchestrator orchestrator (.+?)\)?$", line)
        if m:
            argv = m.group(1).split()
            assert isinstance(build_parser().parse_args(argv), argparse.Namespace)
            assert (ROOT / argv[-1]).exists()
