"""Background service processes: start detached with a log and a pid file, find, stop."""

from __future__ import annotations

import logging
import os
import signal
import site
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)


class ServiceError(RuntimeError):
    """A service could not be started or reached; the message names it and says what to do."""


def node_import_paths() -> list[str]:
    """Where another interpreter (Orthanc's plugin, Triton's stub) finds the node and its dependencies."""
    from node.config import REPO_ROOT

    return [p for p in site.getsitepackages() if Path(p).is_dir()] + [str(REPO_ROOT)]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def check_ports_free(service: str, ports: Mapping[str, int]) -> None:
    for what, port in ports.items():
        if port and port_in_use(port):
            raise ServiceError(
                f"{service}: {what} port {port} is already taken; stop what uses it "
                f"(`ss -ltnp 'sport = :{port}'`) or set AINODE_{what.upper().replace(' ', '_')}_PORT to another port"
            )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child counts as dead
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def read_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def start_process(
    name: str,
    argv: Sequence[str],
    *,
    run_dir: Path,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    detach: bool = True,
) -> subprocess.Popen:
    """Start ``argv`` in its own session, output to ``log_dir/name.log``, pid in ``run_dir/name.pid``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        proc = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd,
            start_new_session=detach,
        )
    except OSError as exc:
        raise ServiceError(f"{name}: cannot run {argv[0]}: {exc}; run `make install`") from exc
    finally:
        log.close()
    (run_dir / f"{name}.pid").write_text(str(proc.pid))
    logger.debug("started %s pid %d", name, proc.pid)
    return proc


def stop_pid(pid: int, *, timeout: float = 15.0, group: bool = True) -> None:
    sig_target = (lambda s: os.killpg(pid, s)) if group else (lambda s: os.kill(pid, s))
    try:
        sig_target(signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    try:
        sig_target(signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stop_child(proc: subprocess.Popen | None, name: str, run_dir: Path, *, timeout: float = 20.0) -> None:
    """Stop a service this process started (its whole process group) and forget its pid file."""
    if proc is not None and proc.poll() is None:
        stop_pid(proc.pid, timeout=timeout)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    (run_dir / f"{name}.pid").unlink(missing_ok=True)


def stop_service(name: str, run_dir: Path, *, timeout: float = 15.0) -> bool:
    pid_file = run_dir / f"{name}.pid"
    pid = read_pid(pid_file)
    pid_file.unlink(missing_ok=True)
    if pid is None:
        return False
    stop_pid(pid, timeout=timeout)
    return True


def wait_until(
    service: str,
    ready: Callable[[], bool],
    *,
    timeout: float,
    proc: subprocess.Popen | None = None,
    log_file: Path | None = None,
    interval: float = 0.25,
) -> None:
    """Poll ``ready`` until true; fail with the tail of the log when the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"{service} exited with status {proc.returncode} while starting{_log_tail(log_file)}")
        try:
            if ready():
                return
        except Exception:  # noqa: BLE001 - any failure of a probe means "not yet"
            pass
        time.sleep(interval)
    raise ServiceError(f"{service} did not become ready within {timeout:.0f} s{_log_tail(log_file)}")


def _log_tail(log_file: Path | None, lines: int = 8) -> str:
    if log_file is None or not log_file.is_file():
        return ""
    tail = log_file.read_text(errors="replace").strip().splitlines()[-lines:]
    return f"; see {log_file}:\n    " + "\n    ".join(tail) if tail else f"; see {log_file}"
