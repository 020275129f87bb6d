"""The topology (mesh.yaml) as typed configuration, with environment overrides.

One file names every service, its address, identity, database, topics and call policy;
everything else (servers, clients, certificates, the gateway) is derived from it. Any
value can be overridden by an environment variable, so the same file serves a laptop,
CI and a deployment. Errors name the file, the key and what is wrong: never a traceback.
"""
from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

import yaml

from services.config_files import REPO_ROOT, ConfigError, load_yaml

DEFAULT_TOPOLOGY = REPO_ROOT / "mesh.yaml"
_NAME = re.compile(r"[a-z][a-z0-9-]*")


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str, where: str) -> "Address":
        host, sep, port = str(text).rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"{where}: '{text}' is not a host:port address (port 0-65535)")
        return cls(host.strip("[]"), int(port))


INSTANCE_PORT_STEP = 100


def is_ip(host: str) -> bool:
    """An IP address, not a name to resolve."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
MAX_INSTANCES = 8


def _shifted(address: Address, k: int) -> Address:
    return address if k == 0 or address.port == 0 else Address(address.host, address.port + k * INSTANCE_PORT_STEP)


@dataclass(frozen=True)
class BreakerPolicy:
    fail_max: int = 5
    reset_timeout_seconds: float = 10.0


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4
    initial_backoff_seconds: float = 0.05
    max_backoff_seconds: float = 1.0
    backoff_multiplier: float = 2.0


@dataclass(frozen=True)
class RestartPolicy:
    """`make run`: how a service (or the gateway) that exits by itself is started again."""
    initial_delay_seconds: float = 1.0   # before the first restart
    max_delay_seconds: float = 30.0      # the delay grows by `multiplier` per exit, up to this
    multiplier: float = 2.0
    crash_loop_exits: int = 5            # this many exits within crash_loop_seconds: give up on it
    crash_loop_seconds: float = 60.0


@dataclass(frozen=True)
class QueuePolicy:
    """How a work queue retries an item whose work failed, and when it gives up: after
    max_attempts, or once the item is max_age_seconds old, the item is parked as a dead letter
    (kept, not retried, until an operator replays it)."""
    max_attempts: int = 10
    initial_backoff_seconds: float = 0.2    # doubled per attempt, with jitter (half to all of it)
    max_backoff_seconds: float = 30.0
    max_age_seconds: float = 86400.0
    # How long a worker holds an item it claimed (renewed every third of it while the work runs):
    # the time after which the item of a worker that died is taken by another.
    lease_seconds: float = 30.0
    # Work in hand (the queue's items: queued, leased or waiting out a backoff; and their events
    # not yet delivered) at which the service refuses new work with RESOURCE_EXHAUSTED: what is
    # accepted settles within about max_backlog / the settle rate, instead of behind a queue
    # that only grows (runtime/backlog.py).
    max_backlog: int = 1000


@dataclass(frozen=True)
class Observability:
    tracing: bool = True
    trace_export: str = "none"      # none | console | file | file:PATH
    trace_sample_ratio: float = 1.0
    log_level: str = "INFO"
    public_metrics: bool = False    # metrics endpoints may listen beyond loopback


@dataclass(frozen=True)
class Messaging:
    """How events and queued work travel: `embedded` (the producer's outbox relay calls each
    subscriber over the mesh, workers poll the work queue's table: nothing else to run) or
    `rabbitmq` (through a broker: messaging/rabbit_events.py and rabbit_work.py)."""
    transport: str = "embedded"
    rabbitmq_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    prefix: str = "diboas"          # every exchange and queue name starts with it

    @property
    def brokered(self) -> bool:
        return self.transport == RABBITMQ


EMBEDDED, RABBITMQ = "embedded", "rabbitmq"


@dataclass(frozen=True)
class Defaults:
    deadline_seconds: float = 5.0
    drain_seconds: float = 10.0
    unready_seconds: float = 1.0   # NOT_SERVING this long before draining, so probes notice
    start_timeout_seconds: float = 60.0  # `make run` gives up when a service is not SERVING by then
    max_concurrent_calls: int = 256      # calls a service serves at once; past it, outside calls are refused
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    queue: QueuePolicy = field(default_factory=QueuePolicy)


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    identity: str  # SPIFFE id
    address: Address
    metrics: Address | None
    database: str
    upstreams: tuple[str, ...]
    publishes: tuple[str, ...]
    subscribes: tuple[str, ...]
    policy: Mapping[str, frozenset[str]]  # method -> caller names; "*" = default
    queues: Mapping[str, QueuePolicy] = field(default_factory=dict)  # work queue -> its own policy
    # Copies of the service, each its own process, sharing its database and queues. On one
    # machine instance k listens on the configured ports + k * INSTANCE_PORT_STEP.
    instances: int = 1
    # Where the server binds when callers reach it by another name (`address` a DNS name of every
    # instance, as a Kubernetes headless Service; `listen` 0.0.0.0:port in each pod). None: `address`.
    listen: Address | None = None

    def instance_address(self, k: int) -> Address:
        return _shifted(self.address, k)

    def instance_listen(self, k: int) -> Address:
        """Where instance k's server binds."""
        return _shifted(self.listen, k) if self.listen is not None else self.instance_address(k)

    @property
    def balanced(self) -> bool:
        """Whether callers may find several instances behind the target: more than one configured,
        or a DNS name (which may resolve to many, as a Kubernetes headless Service does)."""
        return self.instances > 1 or not (is_ip(self.address.host) or self.address.host == "localhost")

    def instance_metrics(self, k: int) -> Address | None:
        return None if self.metrics is None else _shifted(self.metrics, k)

    @property
    def endpoints(self) -> tuple[Address, ...]:
        return tuple(self.instance_address(k) for k in range(self.instances))

    @property
    def target(self) -> str:
        """The gRPC target of every instance: one address (which DNS may resolve to several,
        as a Kubernetes headless service does), or the list of all of them."""
        if self.instances == 1:
            return str(self.address)
        return "ipv4:" + ",".join(str(a) for a in self.endpoints)

    def allowed_callers(self, method: str) -> frozenset[str]:
        return self.policy.get(method, self.policy.get("*", frozenset()))


@dataclass(frozen=True)
class GatewayConfig:
    name: str
    identity: str
    http: Address
    https: Address
    admin: Address
    rate_limit_per_second: int = 50        # requests per second of each user (the token's `sub`)
    rate_limit_burst: int = 100
    anonymous_rate_limit_per_second: int = 10   # of all requests without a valid token together
    anonymous_rate_limit_burst: int = 20
    rate_limit_users: int = 10000          # users whose budgets are kept at once (least recent dropped)
    max_request_bytes: int = 65536
    request_timeout_seconds: float = 10.0


@dataclass(frozen=True)
class Topology:
    path: Path
    trust_domain: str
    certs_dir: Path
    state_dir: Path
    defaults: Defaults
    observability: Observability
    gateway: GatewayConfig
    clients: Mapping[str, str]  # client name -> SPIFFE id
    services: Mapping[str, ServiceConfig]
    # The shape: which services share a process. Process name -> its services, in the order they
    # start (a service's upstreams before it). Every service is in exactly one process.
    mode: str = "services"
    processes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    modes: tuple[str, ...] = ("services",)      # every shape the topology knows
    messaging: Messaging = field(default_factory=Messaging)
    instance: int = 0           # which instance this process is (DIBOAS_INSTANCE), 0-based

    def uses_broker(self, name: str) -> bool:
        """Whether the service talks to the broker: with messaging over RabbitMQ, a service that
        publishes, subscribes or has a work queue (the others never connect to it)."""
        s = self.services[name]
        return self.messaging.brokered and bool(s.publishes or s.subscribes or s.queues)

    def service(self, name: str) -> ServiceConfig:
        try:
            return self.services[name]
        except KeyError:
            known = ", ".join(sorted(self.services))
            raise ConfigError(f"{self.path}: no service named '{name}' (known: {known})") from None

    @property
    def start_order(self) -> tuple[str, ...]:
        """Every service, each one's upstreams before it (as one process would start them all)."""
        return _start_order(tuple(self.services), self.services)

    def process_of(self, service: str) -> str:
        """The name of the process that runs `service` in this shape."""
        return next(name for name, members in self.processes.items() if service in members)

    def queue_policy(self, service: str, queue: str) -> QueuePolicy:
        """The retry policy of one of a service's work queues (the default one unless it has its own)."""
        return self.service(service).queues.get(queue, self.defaults.queue)

    def identities(self) -> dict[str, str]:
        """Every name that gets a certificate, mapped to its SPIFFE id."""
        ids = {name: svc.identity for name, svc in self.services.items()}
        ids[self.gateway.name] = self.gateway.identity
        ids.update(self.clients)
        return ids

    def name_of(self, spiffe_id: str) -> str | None:
        """The short name (as used in policies) of one of this topology's identities; None for any
        other SPIFFE id, even a well-formed one of the same trust domain."""
        return self._names_by_identity.get(spiffe_id)

    @cached_property
    def _names_by_identity(self) -> dict[str, str]:
        return {identity: name for name, identity in self.identities().items()}


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def spiffe_id(trust_domain: str, kind: str, name: str) -> str:
    return f"spiffe://{trust_domain}/{kind}/{name}"


def _env_key(*parts: str) -> str:
    return "DIBOAS_" + "_".join(p.upper().replace("-", "_") for p in parts)


def load_topology(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> Topology:
    """Read the topology file (DIBOAS_TOPOLOGY or mesh.yaml) and apply DIBOAS_* overrides."""
    env = os.environ if env is None else env
    path = Path(path or env.get("DIBOAS_TOPOLOGY") or DEFAULT_TOPOLOGY)
    try:
        raw = load_yaml(path.read_text(), path)
    except FileNotFoundError:
        raise ConfigError(f"topology file {path} does not exist (set DIBOAS_TOPOLOGY)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"topology file {path} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"topology file {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"topology file {path} must be a mapping at the top level")
    return _build(path, raw, env)


def _section(raw: Mapping, key: str, where: str, default=None) -> dict:
    value = raw.get(key, default if default is not None else {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: '{key}' must be a mapping")
    return value


def _number(raw: Mapping, key: str, where: str, default: float, env: Mapping[str, str], env_key: str,
            positive: bool = False) -> float:
    """A finite number, not negative (or, with `positive`, greater than zero)."""
    value = env.get(env_key, raw.get(key, default))
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}.{key} (or {env_key}): '{value}' is not a number") from None
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        need = "greater than zero" if positive else "zero or more"
        raise ConfigError(f"{where}.{key} (or {env_key}): must be a finite number {need}, got {value}")
    return number


def _switch(raw: Mapping, key: str, where: str, default: bool, env: Mapping[str, str], env_key: str) -> bool:
    # YAML reads a bare on/off as a boolean; the environment gives text.
    value = str(env.get(env_key, raw.get(key, default))).strip().lower()
    if value not in ("true", "false", "on", "off", "1", "0"):
        raise ConfigError(f"{where}.{key} (or {env_key}): '{value}' is not on/off")
    return value in ("true", "on", "1")

def _whole(raw: Mapping, key: str, where: str, default: int, env: Mapping[str, str], env_key: str) -> int:
    """A whole number of at least 1 (a count: requests, bytes, users)."""
    value = env.get(env_key, raw.get(key, default))
    number = _number(raw, key, where, default, env, env_key)
    if number < 1 or number != int(number):
        raise ConfigError(f"{where}.{key} (or {env_key}): must be a whole number of at least 1, got {value}")
    return int(number)


def _instances(raw: Mapping, where: str, name: str, env: Mapping[str, str]) -> int:
    """How many instances of a service: DIBOAS_<SERVICE>_INSTANCES, else DIBOAS_INSTANCES (`make run
    INSTANCES=N`), else its `instances:`, else 1."""
    key = _env_key(name, "instances")
    source = key if env.get(key) else "DIBOAS_INSTANCES" if env.get("DIBOAS_INSTANCES") else f"{where}.instances"
    text = str(env.get(key) or env.get("DIBOAS_INSTANCES") or raw.get("instances", 1)).strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_INSTANCES:
        raise ConfigError(f"{source}: the number of instances is a whole number from 1 to {MAX_INSTANCES}, got '{text}'")
    return int(text)


def _names(value, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: must be a list of names")
    return tuple(value)


def _restart_policy(raw: Mapping, where: str, env: Mapping[str, str]) -> RestartPolicy:
    policy = RestartPolicy(
        initial_delay_seconds=_number(raw, "initial_delay_seconds", where, 1.0, env, "DIBOAS_RESTART_INITIAL_DELAY"),
        max_delay_seconds=_number(raw, "max_delay_seconds", where, 30.0, env, "DIBOAS_RESTART_MAX_DELAY"),
        multiplier=_number(raw, "multiplier", where, 2.0, env, "DIBOAS_RESTART_MULTIPLIER"),
        crash_loop_exits=_whole(raw, "crash_loop_exits", where, 5, env, "DIBOAS_RESTART_CRASH_LOOP_EXITS"),
        crash_loop_seconds=_number(raw, "crash_loop_seconds", where, 60.0, env, "DIBOAS_RESTART_CRASH_LOOP_SECONDS",
                                   positive=True),
    )
    if policy.max_delay_seconds < policy.initial_delay_seconds:
        raise ConfigError(f"{where}.max_delay_seconds (or DIBOAS_RESTART_MAX_DELAY) must not be below "
                          f"initial_delay_seconds")
    if policy.multiplier < 1:
        raise ConfigError(f"{where}.multiplier (or DIBOAS_RESTART_MULTIPLIER) must be at least 1, got {policy.multiplier:g}")
    return policy


def _queue_policy(raw: Mapping, where: str, base: QueuePolicy, env: Mapping[str, str], env_prefix: str) -> QueuePolicy:
    """A work queue's retry policy: `raw` over `base`, each value overridable by <env_prefix>_<KEY>."""
    def number(key: str, env_suffix: str) -> float:
        return _number(raw, key, where, getattr(base, key), env, f"{env_prefix}_{env_suffix}", positive=True)
    policy = QueuePolicy(max_attempts=_whole(raw, "max_attempts", where, base.max_attempts, env, f"{env_prefix}_MAX_ATTEMPTS"),
                         initial_backoff_seconds=number("initial_backoff_seconds", "INITIAL_BACKOFF"),
                         max_backoff_seconds=number("max_backoff_seconds", "MAX_BACKOFF"),
                         max_age_seconds=number("max_age_seconds", "MAX_AGE"),
                         lease_seconds=number("lease_seconds", "LEASE"),
                         max_backlog=_whole(raw, "max_backlog", where, base.max_backlog, env, f"{env_prefix}_MAX_BACKLOG"))
    if policy.max_backoff_seconds < policy.initial_backoff_seconds:
        raise ConfigError(f"{where}.max_backoff_seconds must not be below initial_backoff_seconds")
    return policy


def _build(path: Path, raw: Mapping, env: Mapping[str, str]) -> Topology:
    where = str(path)
    base = path.parent
    trust_domain = env.get("DIBOAS_TRUST_DOMAIN", raw.get("trust_domain", "diboas.local"))
    certs_dir = (base / env.get("DIBOAS_CERTS_DIR", raw.get("certs_dir", "certs/out"))).resolve()
    state_dir = (base / env.get("DIBOAS_STATE_DIR", raw.get("state_dir", "var"))).resolve()

    d = _section(raw, "defaults", where)
    b = _section(d, "breaker", f"{where}: defaults")
    r = _section(d, "retry", f"{where}: defaults")
    dw = f"{where}: defaults"
    retry = RetryPolicy(
        max_attempts=int(_number(r, "max_attempts", dw + ".retry", 4, env, "DIBOAS_RETRY_MAX_ATTEMPTS", positive=True)),
        initial_backoff_seconds=_number(r, "initial_backoff_seconds", dw + ".retry", 0.05, env,
                                        "DIBOAS_RETRY_INITIAL_BACKOFF", positive=True),
        max_backoff_seconds=_number(r, "max_backoff_seconds", dw + ".retry", 1.0, env, "DIBOAS_RETRY_MAX_BACKOFF", positive=True),
        backoff_multiplier=_number(r, "backoff_multiplier", dw + ".retry", 2.0, env, "DIBOAS_RETRY_BACKOFF_MULTIPLIER", positive=True),
    )
    if retry.max_backoff_seconds < retry.initial_backoff_seconds:
        raise ConfigError(f"{dw}.retry.max_backoff_seconds must not be below initial_backoff_seconds")
    if not 2 <= retry.max_attempts <= 5:
        raise ConfigError(f"{dw}.retry.max_attempts must be between 2 and 5 (gRPC's cap), got {retry.max_attempts}")
    defaults = Defaults(
        deadline_seconds=_number(d, "deadline_seconds", dw, 5.0, env, "DIBOAS_DEFAULT_DEADLINE", positive=True),
        drain_seconds=_number(d, "drain_seconds", dw, 10.0, env, "DIBOAS_DRAIN_SECONDS"),
        unready_seconds=_number(d, "unready_seconds", dw, 1.0, env, "DIBOAS_UNREADY_SECONDS"),
        start_timeout_seconds=_number(d, "start_timeout_seconds", dw, 60.0, env, "DIBOAS_START_TIMEOUT", positive=True),
        max_concurrent_calls=_whole(d, "max_concurrent_calls", dw, 256, env, "DIBOAS_MAX_CONCURRENT_CALLS"),
        breaker=BreakerPolicy(
            fail_max=_whole(b, "fail_max", dw + ".breaker", 5, env, "DIBOAS_BREAKER_FAIL_MAX"),
            reset_timeout_seconds=_number(b, "reset_timeout_seconds", dw + ".breaker", 10.0, env,
                                          "DIBOAS_BREAKER_RESET_TIMEOUT", positive=True),
        ),
        retry=retry,
        restart=_restart_policy(_section(d, "restart", dw), f"{dw}.restart", env),
        queue=_queue_policy(_section(d, "queue", dw), dw + ".queue", QueuePolicy(), env, "DIBOAS_QUEUE"),
    )

    o = _section(raw, "observability", where)
    ow = f"{where}: observability"
    tracing = _switch(o, "tracing", ow, True, env, "DIBOAS_TRACING")
    export = str(env.get("DIBOAS_TRACE_EXPORT", o.get("trace_export", "none")))
    if export.partition(":")[0] not in ("none", "console", "file"):
        raise ConfigError(f"{ow}.trace_export (or DIBOAS_TRACE_EXPORT): '{export}' is not none, console, file or file:PATH")
    ratio = _number(o, "trace_sample_ratio", ow, 1.0, env, "DIBOAS_TRACE_SAMPLE_RATIO")
    if ratio > 1:
        raise ConfigError(f"{ow}.trace_sample_ratio (or DIBOAS_TRACE_SAMPLE_RATIO): must be between 0 and 1, got {ratio}")
    level = str(env.get("DIBOAS_LOG_LEVEL", o.get("log_level", "INFO"))).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"{ow}.log_level (or DIBOAS_LOG_LEVEL): '{level}' is not DEBUG, INFO, WARNING or ERROR")
    public_metrics = _switch(o, "public_metrics", ow, False, env, "DIBOAS_PUBLIC_METRICS")
    observability = Observability(tracing, export, ratio, level, public_metrics)
    messaging = _messaging(_section(raw, "messaging", where), f"{where}: messaging", env)

    g = _section(raw, "gateway", where)
    gname = g.get("identity", "gateway")
    gateway = GatewayConfig(
        name=gname,
        identity=spiffe_id(trust_domain, "service", gname),
        http=Address.parse(env.get("DIBOAS_GATEWAY_HTTP", g.get("http", "127.0.0.1:8080")), f"{where}: gateway.http"),
        https=Address.parse(env.get("DIBOAS_GATEWAY_HTTPS", g.get("https", "127.0.0.1:8443")), f"{where}: gateway.https"),
        admin=Address.parse(env.get("DIBOAS_GATEWAY_ADMIN", g.get("admin", "127.0.0.1:9901")), f"{where}: gateway.admin"),
        rate_limit_per_second=_whole(g, "rate_limit_per_second", f"{where}: gateway", 50, env,
                                     "DIBOAS_GATEWAY_RATE_LIMIT"),
        rate_limit_burst=_whole(g, "rate_limit_burst", f"{where}: gateway", 100, env, "DIBOAS_GATEWAY_RATE_LIMIT_BURST"),
        anonymous_rate_limit_per_second=_whole(g, "anonymous_rate_limit_per_second", f"{where}: gateway", 10, env,
                                               "DIBOAS_GATEWAY_ANONYMOUS_RATE_LIMIT"),
        anonymous_rate_limit_burst=_whole(g, "anonymous_rate_limit_burst", f"{where}: gateway", 20, env,
                                          "DIBOAS_GATEWAY_ANONYMOUS_RATE_LIMIT_BURST"),
        rate_limit_users=_whole(g, "rate_limit_users", f"{where}: gateway", 10000, env, "DIBOAS_GATEWAY_RATE_LIMIT_USERS"),
        max_request_bytes=_whole(g, "max_request_bytes", f"{where}: gateway", 65536, env,
                                 "DIBOAS_GATEWAY_MAX_REQUEST_BYTES"),
        request_timeout_seconds=_number(g, "request_timeout_seconds", f"{where}: gateway", 10.0, env,
                                        "DIBOAS_GATEWAY_REQUEST_TIMEOUT", positive=True),
    )
    if gateway.admin.host not in LOOPBACK:
        raise ConfigError(f"{where}: gateway.admin (or DIBOAS_GATEWAY_ADMIN) must be on loopback, "
                          f"got {gateway.admin.host}: Envoy's admin interface can stop the gateway")
    clients = {n: spiffe_id(trust_domain, "client", n) for n in _names(raw.get("clients", []), f"{where}: clients")}

    raw_services = _section(raw, "services", where)
    if not raw_services:
        raise ConfigError(f"{where}: 'services' names no service")
    services: dict[str, ServiceConfig] = {}
    for name, s in raw_services.items():
        sw = f"{where}: services.{name}"
        if not _NAME.fullmatch(str(name)):
            raise ConfigError(f"{sw}: a service name is lower-case letters, digits and '-'")
        if not isinstance(s, dict):
            raise ConfigError(f"{sw} must be a mapping")
        if "address" not in s and _env_key(name, "address") not in env:
            raise ConfigError(f"{sw}: 'address' is missing")
        address = Address.parse(env.get(_env_key(name, "address"), s.get("address")), f"{sw}.address ({_env_key(name, 'address')})")
        metrics_raw = env.get(_env_key(name, "metrics"), s.get("metrics"))
        metrics = Address.parse(metrics_raw, f"{sw}.metrics ({_env_key(name, 'metrics')})") if metrics_raw else None
        if metrics is not None and metrics.host not in LOOPBACK and not observability.public_metrics:
            raise ConfigError(f"{sw}.metrics ({_env_key(name, 'metrics')}) must be on loopback, got {metrics.host}: "
                              "the metrics show every method's traffic and errors to whoever asks; to serve them "
                              "beyond this machine, set observability.public_metrics: on (or DIBOAS_PUBLIC_METRICS=on)")
        database = str(env.get(_env_key(name, "database"), s.get("database", f"sqlite:///{{state_dir}}/{name}.db")))
        database = database.replace("{state_dir}", str(state_dir))
        policy_raw = _section(s, "policy", sw)
        policy = {str(m): frozenset(_names(callers, f"{sw}.policy.{m}")) for m, callers in policy_raw.items()}
        queues_raw = _section(s, "queues", sw)
        queues = {str(q): _queue_policy(_section(queues_raw, q, f"{sw}.queues"), f"{sw}.queues.{q}", defaults.queue,
                                        env, _env_key(name, "queue", str(q).replace(".", "_")))
                  for q in queues_raw}
        instances = _instances(s, sw, name, env)
        listen_raw = env.get(_env_key(name, "listen"), s.get("listen"))
        listen = Address.parse(listen_raw, f"{sw}.listen ({_env_key(name, 'listen')})") if listen_raw else None
        services[name] = ServiceConfig(
            name=name,
            identity=spiffe_id(trust_domain, "service", name),
            address=address,
            metrics=metrics,
            database=database,
            upstreams=_names(s.get("upstreams"), f"{sw}.upstreams"),
            publishes=_names(s.get("publishes"), f"{sw}.publishes"),
            subscribes=_names(s.get("subscribes"), f"{sw}.subscribes"),
            policy=policy,
            queues=queues,
            instances=instances,
            listen=listen,
        )

    known = set(services) | {gateway.name} | set(clients)
    if len(known) != len(services) + 1 + len(clients):
        raise ConfigError(f"{where}: service, gateway and client names must all differ")
    for svc in services.values():
        for up in svc.upstreams:
            if up not in services:
                raise ConfigError(f"{where}: services.{svc.name}.upstreams names '{up}', which is not a service")
        for method, callers in svc.policy.items():
            unknown = sorted(callers - known)
            if unknown:
                raise ConfigError(f"{where}: services.{svc.name}.policy.{method} names unknown callers {unknown}")
        if not messaging.brokered:
            _check_deliveries(where, svc, services)
    mode, processes = _shape(raw, where, services, known, env)
    _check_instances(where, services, processes, gateway)
    instance = str(env.get("DIBOAS_INSTANCE", "0")).strip()
    if not instance.isdigit():
        raise ConfigError(f"DIBOAS_INSTANCE: '{instance}' is not an instance number (0, 1, ...)")
    return Topology(path, trust_domain, certs_dir, state_dir, defaults, observability, gateway, clients, services,
                    mode, processes, tuple(sorted({SERVICES_MODE, *_section(raw, "shapes", where)})), messaging,
                    int(instance))


def _check_instances(where: str, services: Mapping[str, ServiceConfig], processes: Mapping[str, tuple[str, ...]],
                     gateway: "GatewayConfig") -> None:
    """The services of one process run as many instances as each other (a process is one unit), and
    no two instances' ports meet each other or the gateway's."""
    for process, members in processes.items():
        counts = {services[m].instances for m in members}
        if len(counts) > 1:
            listed = ", ".join(f"{m} {services[m].instances}" for m in members)
            raise ConfigError(f"{where}: the services of process '{process}' run together, so as many instances each "
                              f"(instances: {listed})")
    taken: dict[Address, str] = {a: f"gateway.{n}" for n, a in
                                 (("http", gateway.http), ("https", gateway.https), ("admin", gateway.admin))}
    for svc in services.values():
        for k in range(svc.instances):
            for kind, address in (("address", svc.instance_address(k)), ("metrics", svc.instance_metrics(k))):
                if address is None or address.port == 0:
                    continue
                owner = f"services.{svc.name}.{kind} (instance {k})"
                if address in taken:
                    raise ConfigError(f"{where}: {owner} would listen on {address}, as {taken[address]} does "
                                      f"(instance k listens on the configured port + {INSTANCE_PORT_STEP} * k)")
                taken[address] = owner


_PREFIX = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


def _messaging(raw: Mapping, where: str, env: Mapping[str, str]) -> Messaging:
    transport = str(env.get("DIBOAS_MESSAGING_TRANSPORT", raw.get("transport", EMBEDDED))).lower()
    if transport not in (EMBEDDED, RABBITMQ):
        raise ConfigError(f"{where}.transport (or DIBOAS_MESSAGING_TRANSPORT): '{transport}' is not {EMBEDDED} or {RABBITMQ}")
    url = str(env.get("DIBOAS_RABBITMQ_URL", raw.get("rabbitmq_url", Messaging.rabbitmq_url)))
    if urlsplit(url).scheme not in ("amqp", "amqps") or not urlsplit(url).hostname:
        raise ConfigError(f"{where}.rabbitmq_url (or DIBOAS_RABBITMQ_URL): '{_hide_password(url)}' is not an "
                          "amqp:// or amqps:// URL with a host")
    prefix = str(env.get("DIBOAS_RABBITMQ_PREFIX", raw.get("prefix", Messaging.prefix)))
    if not _PREFIX.fullmatch(prefix):
        raise ConfigError(f"{where}.prefix (or DIBOAS_RABBITMQ_PREFIX): '{prefix}' is not 1-64 lower-case letters, "
                          "digits, '_', '.' or '-'")
    return Messaging(transport, url, prefix)


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def _check_deliveries(where: str, publisher: ServiceConfig, services: Mapping[str, ServiceConfig]) -> None:
    """The publisher's relay delivers each event to every subscriber of its topic by calling the
    subscriber's DeliverEvents: the subscriber must be an upstream of the publisher, and let it call."""
    for topic in publisher.publishes:
        for subscriber in (s for s in services.values() if topic in s.subscribes):
            if subscriber.name not in publisher.upstreams:
                raise ConfigError(f"{where}: services.{publisher.name} publishes {topic}, to which {subscriber.name} "
                                  f"subscribes: add {subscriber.name} to services.{publisher.name}.upstreams")
            if publisher.name not in subscriber.allowed_callers("DeliverEvents"):
                raise ConfigError(f"{where}: services.{subscriber.name} subscribes to {topic}, which {publisher.name} "
                                  f"publishes: services.{subscriber.name}.policy.DeliverEvents must name {publisher.name}")


SERVICES_MODE = "services"      # the shape every topology has: each service in a process of its own


def _shape(raw: Mapping, where: str, services: Mapping[str, ServiceConfig], names: set[str],
           env: Mapping[str, str]) -> tuple[str, dict[str, tuple[str, ...]]]:
    """The mode (DIBOAS_MODE, or `mode:`) and its processes. A shape under `shapes:` groups
    services into named processes; a service no group of the shape names runs on its own."""
    shapes = _section(raw, "shapes", where)
    mode = str(env.get("DIBOAS_MODE") or raw.get("mode", SERVICES_MODE)).strip()
    known = sorted({SERVICES_MODE, *shapes})
    if mode != SERVICES_MODE and mode not in shapes:
        raise ConfigError(f"{where}: mode (or DIBOAS_MODE) '{mode}' is not a shape of this topology "
                          f"(known: {', '.join(known)})")
    groups = {} if mode == SERVICES_MODE else _section(shapes, mode, f"{where}: shapes")
    sw = f"{where}: shapes.{mode}"
    placed: dict[str, str] = {}
    processes: dict[str, tuple[str, ...]] = {}
    for process, members in groups.items():
        members = _names(members, f"{sw}.{process}")
        if not _NAME.fullmatch(str(process)):
            raise ConfigError(f"{sw}: a process name is lower-case letters, digits and '-', got '{process}'")
        if not members:
            raise ConfigError(f"{sw}.{process}: names no service")
        if process in names and tuple(members) != (process,):
            raise ConfigError(f"{sw}.{process}: a process may take the name of a service, the gateway or a "
                              f"client only when it runs just that service")
        for member in members:
            if member not in services:
                raise ConfigError(f"{sw}.{process} names '{member}', which is not a service "
                                  f"(services: {', '.join(services)})")
            if member in placed:
                raise ConfigError(f"{sw}: '{member}' is in two processes, {placed[member]} and {process}")
            placed[member] = str(process)
        processes[str(process)] = tuple(members)
    for name in services:
        if name not in placed:
            if name in processes:
                raise ConfigError(f"{sw}: the process '{name}' must run the service '{name}' (or take another name)")
            processes[name] = (name,)
    return mode, {process: _start_order(members, services) for process, members in processes.items()}


def _start_order(members: tuple[str, ...], services: Mapping[str, ServiceConfig]) -> tuple[str, ...]:
    """The members with each one's upstreams (within the process) before it: a service's callers
    in the same process find it built. A cycle keeps the topology's order for what is left."""
    ordered: list[str] = []
    remaining = list(members)
    while remaining:
        ready = [m for m in remaining if all(up in ordered or up not in members or up == m
                                             for up in services[m].upstreams)] or remaining[:1]
        ordered += ready
        remaining = [m for m in remaining if m not in ready]
    return tuple(ordered)
