"""Why a connection to Kafka failed, said in the raised error: one message per cause, every path.

aiokafka's bootstrap tries each address, *logs* the real reason (a TLS verification failure,
refused credentials) and raises only `KafkaConnectionError("Unable to bootstrap ...")`. After
such a failure we connect once more to each address with aiokafka's own `create_conn` and the
same settings, which raises the real reason as an exception. Chosen over a logging filter that
would capture aiokafka's log record: it depends on no log format and still works when an
application silences aiokafka's logger. The extra attempt is made only on a failed start, bounded
by `PROBE_TIMEOUT_MS`.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from aiokafka import errors as ak
from aiokafka.conn import collect_hosts, create_conn

from alpha_streaming._errors import KafkaClientError

if TYPE_CHECKING:
    from faststream.kafka import KafkaBroker

__all__ = ("BOOTSTRAP_HINT", "connection_kwargs", "describe_error", "explain", "raise_connection_error")

PROBE_TIMEOUT_MS = 10_000
BOOTSTRAP_HINT = "check --bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS / ALPHA_REDPANDA_BOOTSTRAP_SERVERS"
AUTH_HINT = "check ALPHA_REDPANDA_SASL_USERNAME/_PASSWORD"
CA_HINT = "check ALPHA_REDPANDA_SSL_CAFILE: it must hold the CA that signed the broker's certificate"
NAME_HINT = (
    "connect through an address the broker's certificate names (its subjectAltName), "
    "or give the broker a certificate for this address"
)
# What `create_conn` needs from a broker's connection options (secrets stay in this mapping).
_PROBE_OPTIONS = (
    "client_id",
    "ssl_context",
    "security_protocol",
    "sasl_mechanism",
    "sasl_plain_username",
    "sasl_plain_password",
    "sasl_kerberos_service_name",
    "sasl_kerberos_domain_name",
    "sasl_oauth_token_provider",
)


def describe_error(exc: BaseException) -> str:
    """`Class: message`, without repeating the class name that aiokafka's messages already start with."""
    text = str(exc)
    name = type(exc).__name__
    return text if name in text.split(":", 1)[0] else f"{name}: {text}"


def connection_kwargs(broker: KafkaBroker) -> dict[str, Any]:
    """The options FastStream gives every aiokafka client of `broker` (servers, security...)."""
    return dict(broker._connection_kwargs)  # no public accessor in FastStream 0.7


async def raise_connection_error(connection: Mapping[str, Any], exc: BaseException) -> NoReturn:
    """Raise the `KafkaClientError` that says why connecting with `connection` failed with `exc`."""
    servers = connection.get("bootstrap_servers") or []
    servers_text = servers if isinstance(servers, str) else ",".join(servers)
    causes: dict[str, BaseException] = {}
    if isinstance(exc, ak.KafkaConnectionError) and "Unable to bootstrap" in str(exc):
        causes = await _probe(connection)
    if not causes:
        causes = {servers_text: exc}
    texts = {address: explain(cause, connection) for address, cause in causes.items()}
    if len(set(texts.values())) == 1:
        detail = next(iter(texts.values()))
    else:
        detail = "; ".join(f"{address}: {text}" for address, text in texts.items())
    raise KafkaClientError(f"cannot connect to Kafka at {servers_text}: {detail}") from next(
        iter(causes.values())
    )


async def _probe(connection: Mapping[str, Any]) -> dict[str, BaseException]:
    """Each bootstrap address's own failure (addresses that now answer are left out)."""
    options = {key: connection[key] for key in _PROBE_OPTIONS if key in connection}
    timeout_ms = min(int(connection.get("request_timeout_ms") or PROBE_TIMEOUT_MS), PROBE_TIMEOUT_MS)
    found: dict[str, BaseException] = {}
    for host, port, _ in collect_hosts(connection.get("bootstrap_servers") or [], randomize=False):
        try:
            conn = await create_conn(host, port, request_timeout_ms=timeout_ms, **options)
        except (TimeoutError, OSError, ak.KafkaError) as exc:
            found[f"{host}:{port}"] = exc
        else:
            conn.close()
    return found


def explain(exc: BaseException, connection: Mapping[str, Any]) -> str:
    """What went wrong and what to check, for one connection failure (never a secret)."""
    protocol = connection.get("security_protocol", "PLAINTEXT")
    mechanism = connection.get("sasl_mechanism")
    if isinstance(exc, ssl.SSLCertVerificationError):
        check = exc.verify_message or exc.reason or str(exc)
        hint = NAME_HINT if "mismatch" in check else CA_HINT
        if "expired" in check:
            hint = "the broker's certificate has expired; renew it"
        return f"TLS certificate verification failed: {check}; {hint}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if "CERTIFICATE_REQUIRED" in reason.upper():
            hint = (
                "the listener requires a client certificate: set ALPHA_REDPANDA_SSL_CERTFILE and _SSL_KEYFILE"
            )
        else:
            hint = f"check ALPHA_REDPANDA_SECURITY_PROTOCOL ({protocol}) and the listener's TLS setup"
        return f"TLS handshake failed: {reason}; {hint}"
    if isinstance(exc, ak.SaslAuthenticationFailed):
        user = connection.get("sasl_plain_username")
        said = exc.args[0] if exc.args else ""
        return f"authentication failed (SASL {mechanism} as {user!r}): {said}; {AUTH_HINT}"
    if isinstance(exc, ak.UnsupportedSaslMechanismError | ak.IllegalSaslStateError):
        return f"SASL mechanism {mechanism} refused: {exc}; check ALPHA_REDPANDA_SASL_MECHANISM"
    if isinstance(exc, ak.KafkaConnectionError) and "closed" in str(exc):
        if protocol in {"SSL", "SASL_SSL"}:
            expects = (
                "a client certificate (set ALPHA_REDPANDA_SSL_CERTFILE and _SSL_KEYFILE) "
                f"or another protocol than {protocol}"
            )
        else:
            expects = f"TLS or SASL (security_protocol is {protocol}; check ALPHA_REDPANDA_SECURITY_PROTOCOL)"
        return f"the broker closed the connection during the handshake: the listener may require {expects}"
    if isinstance(exc, OSError | TimeoutError):
        return f"Unable to bootstrap: {_unreachable(exc)}; {BOOTSTRAP_HINT}"
    return f"{describe_error(exc)}; {BOOTSTRAP_HINT}"


def _unreachable(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, TimeoutError):
        return "no answer before the timeout"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
