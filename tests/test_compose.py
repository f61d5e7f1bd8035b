"""docker-compose.yml must parse: `docker compose config -q` checks it without an engine.

Needs the compose v2 plugin; where it is missing (our dev/CI machines have only the docker
client), those tests are skipped with the reason. ops/README.md says how to build the plugin.
The security checks below read the file itself and always run: no password in it, each service only
its own role's password, nothing but loopback published by default, the application role no superuser.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
PASSWORDS = {"operator": "SENTIMENT_POSTGRES__PASSWORD", "worker": "SENTIMENT_POSTGRES__WORKER_PASSWORD",
             "reader": "SENTIMENT_POSTGRES__READER_PASSWORD", "feedback": "SENTIMENT_POSTGRES__FEEDBACK_PASSWORD"}


def _compose_available() -> str | None:
    """None if `docker compose` works, else why not."""
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    try:
        proc = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`docker compose version` failed: {exc}"
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        return f"no docker compose plugin (`docker compose version`: {msg[0] if msg else proc.returncode})"
    return None


def test_compose_file_parses() -> None:
    reason = _compose_available()
    if reason:
        pytest.skip(reason)
    proc = subprocess.run(
        ["docker", "compose", "-f", "docker-compose.yml", "--env-file", ".env.example", "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"docker compose config failed:\n{proc.stderr}{proc.stdout}"


def test_refresh_profile_is_opt_in() -> None:
    """`docker compose up` leaves the refresh job out; `--profile refresh` adds it."""
    reason = _compose_available()
    if reason:
        pytest.skip(reason)

    def services(*flags: str) -> set[str]:
        proc = subprocess.run(["docker", "compose", "-f", "docker-compose.yml", "--env-file", ".env.example", *flags,
                               "config", "--services"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
        return set(proc.stdout.split())

    assert "refresh" not in services() and {"worker", "dashboard"} <= services()
    assert "refresh" in services("--profile", "refresh")


def _strings(node: object) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def test_no_secret_in_the_compose_file() -> None:
    """Every password is a ${VARIABLE} from .env; no URL carries user:password@."""
    for name, service in SERVICES.items():
        for key, value in (service.get("environment") or {}).items():
            if "PASSWORD" in key:
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), f"{name}: {key}={value!r} is not from .env"
    assert not [s for s in _strings(COMPOSE) if re.search(r"://[^/@\s]+:[^/@\s]+@", s)]


def test_each_service_gets_only_its_roles_password() -> None:
    def given(service: str) -> set[str]:
        env = SERVICES[service].get("environment") or {}
        return {role for role, var in PASSWORDS.items() if var in env}

    assert given("init") == set(PASSWORDS)  # creates the roles and sets their passwords
    assert given("worker") == {"worker"}
    assert given("dashboard") == {"reader", "feedback"}
    assert given("refresh") == {"operator"}
    assert "POSTGRES_USER" not in SERVICES["postgres"]["environment"]  # the image's superuser is `postgres`
    assert all("://sentiment@" in s["environment"]["SENTIMENT_POSTGRES__URL"]
               for n, s in SERVICES.items() if n in ("init", "worker", "dashboard", "refresh"))


def test_the_application_role_is_not_a_superuser() -> None:
    """The first-start script creates the operator role that init and the app URLs use, without SUPERUSER."""
    mount = next(v for v in SERVICES["postgres"]["volumes"] if "docker-entrypoint-initdb.d" in v)
    script = (ROOT / mount.split(":")[0]).read_text()
    create = re.search(r"CREATE ROLE sentiment ([^;]*);", script)
    assert create and "NOSUPERUSER" in create.group(1) and " SUPERUSER" not in f" {create.group(1)}"
    assert "CREATE DATABASE sentiment OWNER sentiment" in script


def test_only_loopback_is_published_by_default() -> None:
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            host = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(port)).rsplit(":", 2)[0]
            assert host == "127.0.0.1", f"{name} publishes {port} beyond loopback"


def test_env_example_sets_every_variable_and_env_is_ignored() -> None:
    required = set(re.findall(r"\$\{([A-Z_]+):\?", (ROOT / "docker-compose.yml").read_text()))
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert required and required <= set(example)
    if shutil.which("git") and (ROOT / ".git").exists():
        ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT, check=False).returncode
        example_ignored = subprocess.run(["git", "check-ignore", "-q", ".env.example"], cwd=ROOT, check=False)
        assert ignored == 0 and example_ignored.returncode == 1
