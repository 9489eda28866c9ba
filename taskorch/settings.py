"""The one frozen settings object, read from ``TASKORCH_*`` variables once at an entry point.

A bad value stops the process at start with one line naming the variable and what is wrong, in the
manner of Starlette's ``Config``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TypeVar
from urllib.parse import urlparse

from taskorch import constants as c
from taskorch.errors import ConfigError

N = TypeVar("N", int, float)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything configurable. Build it with :func:`Settings.from_env`."""

    redis_url: str = "redis://localhost:6379/0"
    host: str = "127.0.0.1"
    port: int = 3000
    jwt_secret: str | None = None
    jwt_jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    allow_private_targets: bool = False
    public_url: str = ""
    function_provider: str = "local"
    functions_dir: str = ".taskorch/functions"
    function_timeout_s: float = 30.0
    lease_s: float = c.DEFAULT_LEASE_S
    max_in_flight: int = c.DEFAULT_MAX_IN_FLIGHT
    # Read by taskorch.partitions when a deployment first starts; checked here with the rest.
    partitions: int = c.DEFAULT_PARTITIONS
    shutdown_grace_s: float = 30.0
    retention_s: float = c.DEFAULT_RETENTION_S
    token_ttl_s: int = c.DEFAULT_TOKEN_TTL_S
    log_format: str = "json"
    log_level: str = "info"
    aws_region: str | None = None
    aws_lambda_role: str | None = None
    # -- deployment: platform conventions (PORT, REDIS_URL, WEB_CONCURRENCY) and /metrics access
    web_concurrency: int = 1
    metrics_token: str | None = None
    redis_policy_check: str = "refuse"
    local_functions: bool = True
    # -- the API's edges: Redis outages, slow clients, token lifetime --
    redis_timeout_s: float = c.DEFAULT_REDIS_TIMEOUT_S
    read_timeout_s: float = c.DEFAULT_READ_TIMEOUT_S
    keep_alive_s: int = c.DEFAULT_KEEP_ALIVE_S
    token_max_ttl_s: int = c.DEFAULT_TOKEN_MAX_TTL_S
    # Function sandbox (sandbox helper): run local functions unisolated when no sandbox can be made.
    unsafe_functions: bool = False

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        verify_tokens: bool = True,
        **overrides: object,
    ) -> Settings:
        """Read ``TASKORCH_*`` from ``env`` (default ``os.environ``) and validate everything.

        ``verify_tokens=False`` (a worker, ``user add``) does not insist on a JWT secret or JWKS:
        such processes never see a token. A secret that is set is still checked.
        """
        env = os.environ if env is None else env
        r = _Reader(env)
        # A platform (Heroku, Render, Cloud Run) hands out the port in PORT and expects the
        # process to listen on every interface; TASKORCH_HOST/TASKORCH_PORT still win.
        platform_port = r.opt("PORT")
        host = r.text("TASKORCH_HOST", "0.0.0.0" if platform_port else "127.0.0.1")
        port = r.whole("TASKORCH_PORT", 3000, lo=1, hi=65535)
        if platform_port and r.opt("TASKORCH_PORT") is None:
            port = r.whole("PORT", 3000, lo=1, hi=65535)
        settings = cls(
            redis_url=r.text("TASKORCH_REDIS_URL", r.text("REDIS_URL", "redis://localhost:6379/0")),
            host=host,
            port=port,
            jwt_secret=r.opt("TASKORCH_JWT_SECRET"),
            jwt_jwks_url=r.opt("TASKORCH_JWT_JWKS_URL"),
            jwt_issuer=r.opt("TASKORCH_JWT_ISSUER"),
            jwt_audience=r.opt("TASKORCH_JWT_AUDIENCE"),
            allow_private_targets=r.flag("TASKORCH_ALLOW_PRIVATE_TARGETS", False),
            public_url=r.text("TASKORCH_PUBLIC_URL", f"http://{host}:{port}").rstrip("/"),
            function_provider=r.choice("TASKORCH_FUNCTION_PROVIDER", "local", ("local", "aws")),
            functions_dir=r.text("TASKORCH_FUNCTIONS_DIR", _default_functions_dir()),
            function_timeout_s=r.number("TASKORCH_FUNCTION_TIMEOUT_S", 30.0, lo=0.1),
            lease_s=r.number("TASKORCH_LEASE_S", c.DEFAULT_LEASE_S, lo=1.0),
            max_in_flight=r.whole("TASKORCH_MAX_IN_FLIGHT", c.DEFAULT_MAX_IN_FLIGHT, lo=1),
            partitions=r.whole(
                "TASKORCH_PARTITIONS", c.DEFAULT_PARTITIONS, lo=1, hi=c.MAX_PARTITIONS
            ),
            shutdown_grace_s=r.number("TASKORCH_SHUTDOWN_GRACE_S", 30.0, lo=0.0),
            retention_s=r.number("TASKORCH_RETENTION_S", c.DEFAULT_RETENTION_S, lo=0.0),
            token_ttl_s=r.whole("TASKORCH_TOKEN_TTL_S", c.DEFAULT_TOKEN_TTL_S, lo=1),
            log_format=r.choice("TASKORCH_LOG_FORMAT", "json", ("json", "console")),
            log_level=r.choice("TASKORCH_LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
            aws_region=r.opt("TASKORCH_AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            aws_lambda_role=r.opt("TASKORCH_AWS_LAMBDA_ROLE"),
            # -- deployment
            web_concurrency=r.whole(
                "TASKORCH_WEB_CONCURRENCY",
                r.whole("WEB_CONCURRENCY", 1, lo=1, hi=256),
                lo=1,
                hi=256,
            ),
            metrics_token=r.opt("TASKORCH_METRICS_TOKEN"),
            redis_policy_check=r.choice(
                "TASKORCH_REDIS_POLICY_CHECK", "refuse", ("refuse", "warn", "off")
            ),
            local_functions=r.flag("TASKORCH_LOCAL_FUNCTIONS", True),
            # -- the API's edges: Redis outages, slow clients, token lifetime --
            redis_timeout_s=r.number(
                "TASKORCH_REDIS_TIMEOUT_S", c.DEFAULT_REDIS_TIMEOUT_S, lo=0.01
            ),
            read_timeout_s=r.number("TASKORCH_READ_TIMEOUT_S", c.DEFAULT_READ_TIMEOUT_S, lo=0.1),
            keep_alive_s=r.whole("TASKORCH_KEEP_ALIVE_S", c.DEFAULT_KEEP_ALIVE_S, lo=1),
            token_max_ttl_s=r.whole("TASKORCH_TOKEN_MAX_TTL_S", c.DEFAULT_TOKEN_MAX_TTL_S, lo=1),
            # Function sandbox (sandbox helper).
            unsafe_functions=r.flag("TASKORCH_UNSAFE_FUNCTIONS", False),
        )
        settings = replace(settings, **overrides)  # type: ignore[arg-type]
        settings.validate(verify_tokens=verify_tokens)
        return settings

    def validate(self, *, verify_tokens: bool = True) -> None:
        """Raise :class:`ConfigError` naming the first variable that is wrong."""
        scheme = urlparse(self.redis_url).scheme
        schemes = ("redis", "rediss", "unix", "redis+sentinel", "sentinel", "redis+cluster")
        if scheme not in (*schemes, "rediss+cluster"):
            raise ConfigError(
                "TASKORCH_REDIS_URL must start with redis://, rediss://, unix://, "
                f"redis+sentinel:// or redis+cluster://, got {self.redis_url!r}"
            )
        if verify_tokens and self.jwt_secret is None and self.jwt_jwks_url is None:
            raise ConfigError(
                "TASKORCH_JWT_SECRET is not set: set it to a random string of at least "
                f"{c.MIN_JWT_SECRET_BYTES} bytes (or set TASKORCH_JWT_JWKS_URL)"
            )
        if self.jwt_secret is not None and len(self.jwt_secret.encode()) < c.MIN_JWT_SECRET_BYTES:
            raise ConfigError(
                f"TASKORCH_JWT_SECRET is {len(self.jwt_secret.encode())} bytes long: it must be "
                f"at least {c.MIN_JWT_SECRET_BYTES} bytes (try: openssl rand -hex 32)"
            )
        if self.jwt_jwks_url is not None and urlparse(self.jwt_jwks_url).scheme not in (
            "http",
            "https",
        ):
            raise ConfigError("TASKORCH_JWT_JWKS_URL must be an http(s) URL")
        if urlparse(self.public_url).scheme not in ("http", "https"):
            raise ConfigError("TASKORCH_PUBLIC_URL must be an http(s) URL")
        if self.token_ttl_s > self.token_max_ttl_s:
            raise ConfigError(
                f"TASKORCH_TOKEN_TTL_S is {self.token_ttl_s}: it must not exceed "
                f"TASKORCH_TOKEN_MAX_TTL_S ({self.token_max_ttl_s}), or no token would be accepted"
            )


def _default_functions_dir() -> str:
    # As root, functions run under their own uids, which must be able to reach their folder:
    # a folder under /root (mode 0700) would not do, so root keeps them under /var/lib.
    return "/var/lib/taskorch/functions" if os.geteuid() == 0 else ".taskorch/functions"


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def opt(self, name: str) -> str | None:
        value = self.env.get(name, "").strip()
        return value or None

    def text(self, name: str, default: str) -> str:
        return self.opt(name) or default

    def whole(self, name: str, default: int, *, lo: int, hi: int | None = None) -> int:
        return self._bounded(name, default, int, "a whole number", lo, hi)

    def number(self, name: str, default: float, *, lo: float) -> float:
        return self._bounded(name, default, float, "a number of seconds", lo, None)

    def _bounded(
        self, name: str, default: N, kind: Callable[[str], N], what: str, lo: N, hi: N | None
    ) -> N:
        raw = self.opt(name)
        if raw is None:
            return default
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(f"{name} must be {what}, got {raw!r}") from None
        if value < lo or (hi is not None and value > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise ConfigError(f"{name} must be {bound}, got {value}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self.opt(name)
        if raw is None:
            return default
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be 0 or 1, got {raw!r}")

    def choice(self, name: str, default: str, options: tuple[str, ...]) -> str:
        value = (self.opt(name) or default).lower()
        if value not in options:
            raise ConfigError(f"{name} must be one of {', '.join(options)}, got {value!r}")
        return value
