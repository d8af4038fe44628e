"""compose.yaml as data: its services' commands with variables filled in, run as local processes.

``tests/test_compose.py`` checks the commands against the project's entry points;
``tests/test_scaleout.py`` starts them as separate processes on this machine, so the commands
the deployment runs are the ones tested.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_]\w*)")


def load_compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def variables(value: Any) -> set[str]:
    """Every ``${NAME...}`` / ``$NAME`` a compose value refers to (``$$`` is a literal $)."""
    if isinstance(value, str):
        return {m.group(1) or m.group(4) for m in _VAR.finditer(value) if m.group(0) != "$$"}
    if isinstance(value, Mapping):
        return set().union(*(variables(v) for v in value.values())) if value else set()
    if isinstance(value, list | tuple):
        return set().union(*(variables(v) for v in value)) if value else set()
    return set()


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation: ``${X}``, ``${X:-default}``, ``${X-default}``, ``${X:?err}``."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1) or m.group(4), m.group(2), m.group(3)
        got = env.get(name)
        if op in (":-", "-"):
            return got if (got if op == ":-" else got is not None) else arg
        if op in (":?", "?") and not got:
            raise KeyError(f"compose needs {name}: {arg}")
        return got or ""

    return _VAR.sub(sub, value)


def command(service: str, env: Mapping[str, str]) -> list[str]:
    """The service's command from compose.yaml, interpolated with ``env``."""
    cmd = load_compose()["services"][service]["command"]
    return [interpolate(str(part), env) for part in cmd]


def local_executable(cmd: list[str]) -> list[str]:
    """Map the image's executables to this machine's: ``python`` → this interpreter,
    console scripts (``celery``, ``orchestrator``) → the virtual environment's."""
    head, rest = cmd[0], cmd[1:]
    if head == "python":
        return [sys.executable, *rest]
    venv_bin = Path(sys.executable).parent
    if (venv_bin / head).exists():
        return [str(venv_bin / head), *rest]
    found = shutil.which(head)
    if found is None:
        raise FileNotFoundError(head)
    return [found, *rest]


def replace_option(cmd: list[str], option: str, value: str) -> list[str]:
    """``--opt=X`` or ``--opt X`` / ``-o X`` set to ``value`` (appended when absent)."""
    out, i, done = [], 0, False
    while i < len(cmd):
        part = cmd[i]
        if part.startswith(option + "="):
            out.append(f"{option}={value}")
            done = True
        elif part == option and i + 1 < len(cmd):
            out += [option, value]
            i += 1
            done = True
        else:
            out.append(part)
        i += 1
    return out if done else [*out, option, value]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Processes:
    """Started processes, each in its own session, all stopped by ``stop_all`` (SIGTERM to the
    group, SIGKILL after a grace period)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, cmd: list[str], env: Mapping[str, str],
              stdout: int | None = None) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(cmd, env=dict(env), cwd=ROOT, stdin=subprocess.DEVNULL,
                                stdout=stdout if stdout is not None else log,
                                stderr=log if stdout is not None else subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n"
                                     f"{self.log(name)[-3000:]}")

    def stop(self, name: str, grace: float = 10.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
            except ProcessLookupError:
                pass
        try:  # the group may outlive its leader (prefork children)
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if proc.stdout is not None:
            proc.stdout.close()

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             check: Callable[[], None] | None = None, every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check is not None:
            check()
        got = predicate()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
