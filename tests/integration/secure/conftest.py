"""The secure Kafka (`scripts/secure.sh`): TLS, SASL_SSL (SCRAM-SHA-512, PLAIN), mTLS, wrong-host.

`secure` starts it once per session (idempotent: a broker already up is reused) and hands out
settings per listener. Under `CI=true` a broker that cannot start fails the tests; elsewhere they
skip with the script's output.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from alpha_streaming import RedpandaSettings

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "secure.sh"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
PORTS = {"ssl": 18092, "sasl": 18093, "mtls": 18094, "other_host": 18095}


@dataclass(frozen=True)
class SecureCluster:
    """Where the secure broker listens and the credentials its listeners accept."""

    certs: Path
    users: dict[str, str]
    key_password: str

    def file(self, name: str) -> str:
        return str(self.certs / name)

    def values(self, listener: str, **overrides: Any) -> dict[str, Any]:
        """Settings for `listener`: ssl, scram, plain, mtls (client certificate), other_host."""
        port = PORTS["sasl" if listener in {"scram", "plain"} else listener]
        values: dict[str, Any] = {
            "bootstrap_servers": f"127.0.0.1:{port}",
            "security_protocol": "SSL",
            "ssl_cafile": self.file("ca.pem"),
            "request_timeout_ms": 15000,
        }
        if listener in {"scram", "plain"}:
            kind = "SCRAM" if listener == "scram" else "PLAIN"
            values |= {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512" if listener == "scram" else "PLAIN",
                "sasl_username": self.users[f"{kind}_USER"],
                "sasl_password": self.users[f"{kind}_PASSWORD"],
            }
        if listener == "mtls":
            values |= {
                "ssl_certfile": self.file("client.pem"),
                "ssl_keyfile": self.file("client.key"),
                "ssl_key_password": self.key_password,
            }
        return values | overrides

    def settings(self, listener: str, **overrides: Any) -> RedpandaSettings:
        return RedpandaSettings(**self.values(listener, **overrides))

    def env(self, listener: str, **overrides: Any) -> dict[str, str]:
        """The same settings as ALPHA_REDPANDA_* variables (for the CLI)."""
        return {f"ALPHA_REDPANDA_{k.upper()}": str(v) for k, v in self.values(listener, **overrides).items()}


@pytest.fixture(scope="session")
def secure() -> SecureCluster:
    try:
        done = subprocess.run([str(SCRIPT), "up"], capture_output=True, text=True, timeout=600, check=False)
        output, ok = done.stdout + done.stderr, done.returncode == 0
    except (OSError, subprocess.TimeoutExpired) as exc:
        output, ok = str(exc), False
    if not ok:
        message = f"scripts/secure.sh up could not start the secure Kafka:\n{output}"
        if IN_CI:
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)
    home = Path(os.environ.get("ALPHA_STACK_HOME", Path.home() / ".cache" / "alpha-streaming"))
    certs = Path(os.environ.get("ALPHA_SECURE_HOME", home / "secure")) / "certs"
    users = dict(line.split("=", 1) for line in (certs / "users.env").read_text().split())
    return SecureCluster(certs, users, (certs / "client.key.password").read_text().strip())


@pytest.fixture
def topic_name() -> str:
    return f"secure.{uuid.uuid4().hex[:12]}"
