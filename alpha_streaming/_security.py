"""Connection security: checking the TLS/SASL settings and building the one security object.

Every connection the project opens (direct clients, built services, the dead-letter producer,
the admin client, the CLI) goes through `make_broker`, which takes its security from here, so
they all reach the cluster the same way. Files are checked when the settings are validated: a
service with a missing CA file or a wrong key password fails at startup naming the path and the
variable, not later with a bare `FileNotFoundError` or `ssl.SSLError`.
Nothing here ever puts a secret (SASL password, key password) into a message.
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING, Any, TypeAlias

from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from alpha_streaming._errors import ConfigError

if TYPE_CHECKING:
    from alpha_streaming._settings import RedpandaSettings

__all__ = ("SecurityOverride", "broker_security", "check_security", "ssl_context", "with_security")

SecurityOverride: TypeAlias = ssl.SSLContext | BaseSecurity
"""What settings cannot express: a ready `ssl.SSLContext`, or a FastStream security object."""

TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
_SSL_FIELDS = ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password")
_SASL_CLASSES = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}


def _env(field: str) -> str:
    return f"ALPHA_REDPANDA_{field.upper()}"


def check_security(config: RedpandaSettings) -> None:
    """Raise `ConfigError` for security settings that cannot work together (run by the validator)."""
    protocol = config.security_protocol
    uses_sasl = protocol.startswith("SASL_")
    if uses_sasl and not (config.sasl_mechanism and config.sasl_username and config.sasl_password):
        raise ConfigError(
            f"security_protocol={protocol} needs sasl_mechanism, sasl_username and "
            "sasl_password (ALPHA_REDPANDA_SASL_MECHANISM / _SASL_USERNAME / _SASL_PASSWORD)"
        )
    if not uses_sasl and config.sasl_mechanism:
        raise ConfigError(
            f"sasl_mechanism={config.sasl_mechanism} is set but security_protocol is {protocol}; "
            "use SASL_PLAINTEXT or SASL_SSL"
        )
    tls_set = [field for field in _SSL_FIELDS if getattr(config, field) is not None]
    override = config.security
    if isinstance(override, BaseSecurity):
        _check_security_object(config, tls_set)
        return
    if (tls_set or override is not None) and protocol not in TLS_PROTOCOLS:
        given = ", ".join(f"{f} ({_env(f)})" for f in tls_set) or "an ssl.SSLContext (security=)"
        raise ConfigError(
            f"{given} is set but security_protocol is {protocol}, which does not use TLS; set "
            "ALPHA_REDPANDA_SECURITY_PROTOCOL=SSL (or SASL_SSL), or remove the TLS settings"
        )
    if override is not None and tls_set:
        raise ConfigError(
            f"security= is an ssl.SSLContext, which replaces {', '.join(tls_set)}; "
            "set the files on the context or in the settings, not both"
        )
    if override is None and protocol in TLS_PROTOCOLS:
        ssl_context(config)  # opens every file now, so a bad one fails at startup


def _check_security_object(config: RedpandaSettings, tls_set: list[str]) -> None:
    others = [*tls_set, *(["security_protocol"] if config.security_protocol != "PLAINTEXT" else [])]
    others += [f for f in ("sasl_mechanism", "sasl_username", "sasl_password") if getattr(config, f)]
    if others:
        raise ConfigError(
            f"security= is a FastStream security object, which replaces {', '.join(others)}; "
            "leave those settings unset (or pass an ssl.SSLContext and keep them)"
        )


def ssl_context(config: RedpandaSettings) -> ssl.SSLContext:
    """A verifying client context from `ssl_cafile` (else the system CAs) and the client certificate.

    Raises `ConfigError` naming the file and its variable when a file is missing, unreadable or
    not PEM, or when the key does not open with `ssl_key_password`.
    """
    if isinstance(config.security, ssl.SSLContext):
        return config.security
    cafile = config.ssl_cafile
    if cafile is not None:
        _readable("ssl_cafile", cafile)
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(
            f"ssl_cafile={cafile!r} ({_env('ssl_cafile')}) holds no PEM CA certificate "
            f"({_reason(exc)}); point it at the PEM file of the CA that signed the broker's certificate"
        ) from None
    certfile, keyfile = config.ssl_certfile, config.ssl_keyfile
    if certfile is None:
        if keyfile is not None or config.ssl_key_password is not None:
            raise ConfigError(
                "ssl_keyfile / ssl_key_password are set without ssl_certfile "
                "(ALPHA_REDPANDA_SSL_CERTFILE): a client certificate needs its certificate file"
            )
        return context
    _readable("ssl_certfile", certfile)
    if keyfile is not None:
        _readable("ssl_keyfile", keyfile)
    secret = config.ssl_key_password
    # A callable, never None: with None OpenSSL would prompt on the terminal for an encrypted key.
    password = (lambda: secret.get_secret_value()) if secret is not None else (lambda: "")
    try:
        context.load_cert_chain(certfile, keyfile, password)
    except (ssl.SSLError, ValueError) as exc:
        key = f"ssl_keyfile={keyfile!r}" if keyfile else f"the key in ssl_certfile={certfile!r}"
        raise ConfigError(
            f"cannot load the client certificate ssl_certfile={certfile!r} with {key}: "
            f"{_key_problem(keyfile or certfile, secret is not None, exc)} "
            "(ALPHA_REDPANDA_SSL_CERTFILE / _SSL_KEYFILE / _SSL_KEY_PASSWORD)"
        ) from None
    return context


def _key_problem(keyfile: str, has_password: bool, exc: BaseException) -> str:
    # OpenSSL says only "PEM lib" for a wrong password; the key file's header tells which case it is.
    with open(keyfile, "rb") as file:
        encrypted = b"ENCRYPTED" in file.read()
    if encrypted and not has_password:
        return "the key is encrypted and ssl_key_password is not set"
    if encrypted:
        return "ssl_key_password does not open the key, or the key does not match the certificate"
    return f"{_reason(exc)}; both must be PEM and the key must match the certificate"


def _readable(field: str, path: str) -> None:
    try:
        with open(path, "rb") as file:
            file.read(1)
    except FileNotFoundError:
        raise ConfigError(f"{field}={path!r} ({_env(field)}): no such file") from None
    except OSError as exc:
        raise ConfigError(f"{field}={path!r} ({_env(field)}): cannot read it ({exc.strerror})") from None


def _reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or str(exc)


def broker_security(config: RedpandaSettings) -> BaseSecurity | None:
    """FastStream's security object for the configured protocol (None for PLAINTEXT)."""
    if isinstance(config.security, BaseSecurity):
        return config.security
    protocol = config.security_protocol
    if protocol == "PLAINTEXT":
        return None
    use_ssl = protocol in TLS_PROTOCOLS
    context = ssl_context(config) if use_ssl else None
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context, use_ssl=True)
    # The settings validator guarantees the SASL fields are present here.
    assert config.sasl_username is not None and config.sasl_password is not None
    sasl = _SASL_CLASSES[config.sasl_mechanism or "PLAIN"]
    return sasl(
        config.sasl_username, config.sasl_password.get_secret_value(), ssl_context=context, use_ssl=use_ssl
    )


def with_security(config: RedpandaSettings, security: SecurityOverride) -> RedpandaSettings:
    """`config` with `security` set, checked like `RedpandaSettings(..., security=...)`."""
    updated = config.model_copy(update={"security": security})
    check_security(updated)
    return updated


class _SaslRedaction(logging.Filter):
    """aiokafka logs every request at DEBUG, SASL PLAIN's password bytes included: redact those."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(_is_sasl_request(arg) for arg in args):
            record.args = tuple(
                "<SaslAuthenticateRequest redacted>" if _is_sasl_request(a) else a for a in args
            )
        return True


def _is_sasl_request(value: Any) -> bool:
    return type(value).__name__.startswith("SaslAuthenticateRequest")


_conn_log = logging.getLogger("aiokafka.conn")
if not any(isinstance(f, _SaslRedaction) for f in _conn_log.filters):
    _conn_log.addFilter(_SaslRedaction())
