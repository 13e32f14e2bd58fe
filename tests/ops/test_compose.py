"""docker-compose.yml, the Dockerfile and deploy/prometheus.yml, checked without a Docker engine.

The compose-spec JSON schema (``deploy/compose-spec.json``, a copy of the spec's own) catches
syntax. The rest are what the schema cannot see: ``depends_on`` targets that exist (and make
no cycle), commands that are real ``chatscale`` subcommands with valid arguments, environment
variables that ``chatscale/config.py`` reads with values it accepts, host ports that do not
collide, and the same services as the embedded runner (``chatscale run``). Where the real
``docker compose`` CLI plugin is installed, ``docker compose config`` runs too (it needs no
engine); tests/ops/test_compose_run.py goes further and runs the compose services as processes.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

from chatscale.cli import build_parser
from chatscale.config import Settings, env_names
from ops import supervisor

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = ROOT / "deploy" / "compose-spec.json"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"
DOCKERFILE = ROOT / "Dockerfile"
SERVICE_ROLES = (
    "gateway",
    "worker",
    "presence",
    "voice",
    "indexer",
    "archive",
)  # long-running chatscale processes

_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<default>[^}]*))?\}")


def stand_in(name: str) -> str:
    """The value the checks use for a required variable (``${VAR:?message}``), URL-safe."""
    return f"required-{name.lower().replace('_', '-')}-0123456789abcdef"  # 32+ chars


def interpolate(value: Any) -> str:
    """Compose's ``${VAR:-default}`` with the defaults (the host's environment is ignored, so
    the checks do not depend on who runs them); a required ``${VAR:?message}`` becomes
    ``stand_in(VAR)``; ``$$`` is a literal ``$``."""
    text = str(value).replace("$$", "\0")

    def value_of(m: re.Match[str]) -> str:
        if (m.group("op") or "").endswith("?"):
            return stand_in(m.group("name"))
        return m.group("default") or ""

    return _VAR.sub(value_of, text).replace("\0", "$")


def required_variables() -> set[str]:
    """Variables compose refuses to start without (``${VAR:?message}``)."""
    return {
        m.group("name")
        for m in _VAR.finditer(COMPOSE.read_text())
        if (m.group("op") or "").endswith("?")
    }


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return load_compose()["services"]


def is_ours(service: dict[str, Any]) -> bool:
    """Built from this repository's Dockerfile (the chatscale image)."""
    return "build" in service or str(service.get("image", "")).startswith("chatscale")


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: interpolate(v) for k, v in env.items()}


def _words(value: Any) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [interpolate(v) for v in value]


def chatscale_commands(service: dict[str, Any]) -> list[list[str]]:
    """The chatscale argument lists a service of ours runs (the image's ENTRYPOINT is
    ``chatscale``; ``sh -c "chatscale a && chatscale b"`` runs several)."""
    entrypoint, command = _words(service.get("entrypoint")), _words(service.get("command"))
    if not entrypoint:
        return [command]
    assert entrypoint == ["sh", "-c"], f"unexpected entrypoint {entrypoint}"
    assert len(command) == 1, "sh -c takes one script"
    runs = []
    for part in command[0].split("&&"):
        words = shlex.split(part)
        assert words and words[0] == "chatscale", f"not a chatscale command: {part!r}"
        runs.append(words[1:])
    return runs


def role(service: dict[str, Any]) -> str | None:
    runs = chatscale_commands(service) if is_ours(service) else []
    if len(runs) == 1 and runs[0] and runs[0][0] in SERVICE_ROLES and not service.get("profiles"):
        return runs[0][0]
    return None


def topology(service: dict[str, Any]) -> str:
    """``cluster`` for the services of the `cluster` profile (Valkey cluster, Cassandra ring),
    ``single`` for the rest: each topology is wired on its own."""
    return "cluster" if "cluster" in (service.get("profiles") or []) else "single"


def cluster_role(service: dict[str, Any]) -> str | None:
    """``role`` for the chatscale services of the `cluster` profile."""
    if topology(service) != "cluster" or not is_ours(service):
        return None
    runs = chatscale_commands(service)
    return runs[0][0] if len(runs) == 1 and runs[0] and runs[0][0] in SERVICE_ROLES else None


def url_hosts(url: str) -> list[str]:
    """The hosts of a URL that may list several (``scheme://[auth@]h1:p,h2:p/...``)."""
    netloc = urlparse(url).netloc.rpartition("@")[2]
    return [part.rsplit(":", 1)[0] for part in netloc.split(",")]


def replicas(service: dict[str, Any]) -> int:
    return int((service.get("deploy") or {}).get("replicas", 1))


def published_ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) for every published port."""
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            if "published" in port:
                out.append(
                    (port.get("host_ip", "0.0.0.0"), int(port["published"]), int(port["target"]))
                )
            continue
        parts = interpolate(port).split("/")[0].split(":")
        if len(parts) == 3:
            out.append((parts[0], int(parts[1]), int(parts[2])))
        elif len(parts) == 2:
            out.append(("0.0.0.0", int(parts[0]), int(parts[1])))
    return out


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


# ---- the schema -------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec_schema():
    schema = yaml.safe_load(SCHEMA.read_text())  # JSON is YAML
    # The spec's $schema is draft-07 without the trailing '#', which jsonschema does not map.
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(load_compose()), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_schema_catches_what_it_should():
    """Guard against a schema copy that accepts anything."""
    schema = yaml.safe_load(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    broken = load_compose()
    broken["services"]["worker"]["restart"] = ["always"]
    broken["services"]["worker"]["bogus_key"] = 1
    assert len(list(validator.iter_errors(broken))) >= 2


# ---- semantics the schema cannot check ------------------------------------------------------------


def test_depends_on_targets_exist_with_meaningful_conditions_and_no_cycles():
    svc = services()
    for name, service in svc.items():
        for target, condition in depends_on(service).items():
            assert target in svc, f"{name} depends on undefined service {target}"
            if condition == "service_healthy":
                assert "healthcheck" in svc[target], f"{name} waits for {target}'s health check"
            if condition == "service_completed_successfully":
                assert svc[target].get("restart", "no") == "no", f"{target} must be one-shot"
            if not service.get("profiles"):
                assert not svc[target].get("profiles"), f"{name} needs {target} of a profile"

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"depends_on cycle: {' -> '.join((*path, name))}"
        for target in depends_on(svc[name]):
            visit(target, (*path, name))

    for name in svc:
        visit(name, ())


def test_every_command_is_a_real_chatscale_subcommand():
    parser = build_parser()
    seen = set()
    for name, service in services().items():
        if not is_ours(service):
            continue
        for argv in chatscale_commands(service):
            try:
                args = parser.parse_args(argv)
            except SystemExit:
                pytest.fail(f"{name}: `chatscale {' '.join(argv)}` is not a valid command")
            assert args.command != "run", f"{name}: containers run one service each, not `run`"
            seen.add(args.command)
    assert {"migrate", "seed", "gateway", "worker", "presence", "dashboard"} <= seen
    assert {"bench"} & seen or {"loadtest"} & seen


def test_the_seed_loaded_by_init_exists_in_the_image():
    inits = [s for s in services().values() if is_ours(s) and len(chatscale_commands(s)) > 1]
    assert sorted(topology(s) for s in inits) == ["cluster", "single"]  # one per topology
    for init in inits:
        runs = chatscale_commands(init)
        assert [r[0] for r in runs] == ["migrate", "seed"]
        seed = runs[1][1]
        assert (ROOT / seed).exists() or (ROOT / "seeds" / f"{seed}.toml").exists()
        assert f"COPY {seed.split('/')[0]}/" in DOCKERFILE.read_text()


def test_environment_holds_only_variables_the_config_reads_with_valid_values(monkeypatch):
    names = env_names()
    for name, service in services().items():
        if not is_ours(service):
            continue
        env = environment(service)
        unknown = set(env) - names
        assert not unknown, f"{name} sets variables chatscale/config.py does not read: {unknown}"
        for key in list(names):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = Settings()  # raises on a value of the wrong type
        scheme = {"single": "redis://", "cluster": "redis+cluster://"}[topology(service)]
        assert settings.redis_url and settings.redis_url.startswith(scheme), name
        assert settings.storage_url.startswith("cassandra://")
    dockerfile_env = set(re.findall(r"\b(CHATSCALE_[A-Z0-9_]+)=", DOCKERFILE.read_text()))
    assert dockerfile_env and dockerfile_env <= names


def test_services_share_one_configuration():
    """Every chatscale container talks to the same Redis, storage, prefix and secret."""
    wiring = (
        "REDIS_URL",
        "CHATSCALE_STORAGE_URL",
        "CHATSCALE_KEY_PREFIX",
        "CHATSCALE_TOKEN_SECRET",
    )
    for kind in ("single", "cluster"):  # each topology on its own
        values = {
            name: tuple(environment(s).get(k) for k in wiring)
            for name, s in services().items()
            if is_ours(s) and topology(s) == kind
        }
        assert len(set(values.values())) == 1, values
        redis_url, storage_url = next(iter(values.values()))[:2]
        assert set(url_hosts(redis_url)) | set(url_hosts(storage_url)) <= set(services())
        if kind == "cluster":  # both names of the Redis URL say the same
            for name, s in services().items():
                if is_ours(s) and topology(s) == kind:
                    assert environment(s)["CHATSCALE_REDIS_URL"] == redis_url, name


def test_host_ports_do_not_collide_and_gateways_advertise_their_own():
    taken: dict[tuple[str, int], str] = {}
    for name, service in services().items():
        # set(): one service may publish a port number for both UDP and TCP (the voice relay)
        for host_ip, host_port, _ in set(published_ports(service)):
            for ip in {host_ip, "0.0.0.0"} if host_ip != "0.0.0.0" else {"0.0.0.0", "127.0.0.1"}:
                key = (ip, host_port)
                assert key not in taken, f"{name} and {taken[key]} both publish {host_port}"
            taken[(host_ip, host_port)] = name
        if replicas(service) > 1:
            assert not published_ports(service), f"{name}: replicas cannot share a host port"
    gateways = {n: s for n, s in services().items() if role(s) == "gateway"}
    assert len(gateways) >= 2
    ids = []
    for name, service in gateways.items():
        env = environment(service)
        assert env["CHATSCALE_GATEWAY_HOST"] == "0.0.0.0", f"{name} must listen beyond loopback"
        port = int(env["CHATSCALE_GATEWAY_PORT"])
        (host_port,) = [hp for _, hp, target in published_ports(service) if target == port]
        public = urlparse(env["CHATSCALE_GATEWAY_PUBLIC_URL"])
        assert public.scheme == "ws" and public.port == host_port, f"{name} resumes elsewhere"
        ids.append(chatscale_commands(service)[0])
        assert "--port" not in ids[-1], "--port resets --host to 127.0.0.1: use the variables"
    assert len({tuple(argv) for argv in ids}) == len(ids), "gateway ids must differ"


def test_loadtest_profile_targets_the_gateways_inside_the_network():
    svc = services()
    loadtest = svc["loadtest"]
    assert loadtest.get("profiles") == ["loadtest"]
    argv = chatscale_commands(loadtest)[0]
    args = build_parser().parse_args(argv)
    urls = getattr(args, "gateway", None) or []
    assert len(urls) >= 2
    for url in urls:
        parsed = urlparse(url)
        assert parsed.hostname in svc and role(svc[parsed.hostname]) == "gateway", url
        env = environment(svc[parsed.hostname])
        assert parsed.port == int(env["CHATSCALE_GATEWAY_PORT"]), url
    for target in urls:
        assert urlparse(target).hostname in depends_on(loadtest)


def test_dashboard_service_on_host_loopback_against_the_gateways_inside_the_network():
    """`chatscale dashboard` in a container: bound on every interface of the container (for
    Docker's port proxy), published on the host's 127.0.0.1 only, the gateways by their
    in-network names, started after them; its admin token from the environment or its log."""
    svc = services()
    dash = svc["dashboard"]
    assert is_ours(dash) and not dash.get("profiles")
    args = build_parser().parse_args(chatscale_commands(dash)[0])
    assert args.command == "dashboard" and args.host == "0.0.0.0"
    assert published_ports(dash) == [("127.0.0.1", args.port, args.port)]
    assert urlparse(args.public_url).hostname == "localhost"
    assert urlparse(args.public_url).port == args.port
    gateways = {n for n, s in svc.items() if role(s) == "gateway"}
    assert {urlparse(u).hostname for u in args.gateway} == gateways
    for url in args.gateway:
        parsed = urlparse(url)
        assert parsed.port == int(environment(svc[parsed.hostname])["CHATSCALE_GATEWAY_PORT"])
        assert depends_on(dash)[parsed.hostname] == "service_healthy"
    assert depends_on(dash)["init"] == "service_completed_successfully"
    assert "CHATSCALE_DASHBOARD_ADMIN_TOKEN" in environment(dash)
    assert "CHATSCALE_DASHBOARD_ADMIN_TOKEN" not in required_variables()  # else: in its log


def test_datastores_valkey_with_aof_and_cassandra_with_health_check_and_modest_heap():
    svc = services()
    valkey = svc["valkey"]
    assert valkey["image"].startswith("valkey/valkey:8")
    command = _words(valkey["command"])
    assert command[command.index("--appendonly") + 1] == "yes"
    cassandra = svc["cassandra"]
    assert cassandra["image"] == "cassandra:5.0"
    assert "SELECT release_version FROM system.local" in " ".join(
        _words(cassandra["healthcheck"]["test"])
    )
    env = environment(cassandra)
    assert env["MAX_HEAP_SIZE"] and env["HEAP_NEWSIZE"]  # cassandra-env.sh needs both or neither
    storage = urlparse(environment(svc["worker"])["CHATSCALE_STORAGE_URL"])
    assert storage.port == 9042 and storage.hostname == "cassandra"


def test_valkey_requires_the_password_every_client_uses():
    """No default password: compose refuses to start without CHATSCALE_REDIS_PASSWORD, Valkey
    requires it, every chatscale service's REDIS_URL carries it, the health check uses it."""
    assert "CHATSCALE_REDIS_PASSWORD" in required_variables()
    password = stand_in("CHATSCALE_REDIS_PASSWORD")
    svc = services()
    valkey = svc["valkey"]
    command = _words(valkey["command"])
    assert command[command.index("--requirepass") + 1] == password
    assert command[command.index("--appendfsync") + 1] in ("everysec", "always")
    assert environment(valkey)["REDISCLI_AUTH"] == password
    health = " ".join(_words(valkey["healthcheck"]["test"]))
    assert "PONG" in health, "valkey-cli exits 0 on NOAUTH: the check must look for PONG"
    for host_ip, _, _ in published_ports(valkey):
        assert host_ip == "127.0.0.1", "valkey is published on the host's loopback only"
    for name, service in svc.items():
        if is_ours(service) and topology(service) == "single":
            url = urlparse(environment(service)["REDIS_URL"])
            assert url.password == password and url.hostname == "valkey", name
    # The cluster profile: every node requires the password and uses it for replication, the
    # cluster's clients (and its init) carry it, no node is published.
    nodes = [
        n
        for n, s in svc.items()
        if s.get("image", "").startswith("valkey/")
        and topology(s) == "cluster"
        and "valkey-server" in _words(s.get("command"))
    ]
    assert len(nodes) == 6
    for name in nodes:
        command = _words(svc[name]["command"])
        assert command[command.index("--requirepass") + 1] == password, name
        assert command[command.index("--masterauth") + 1] == password, name
        assert environment(svc[name])["REDISCLI_AUTH"] == password, name
        assert not published_ports(svc[name]), name
    assert environment(svc["valkey-cluster-init"])["REDISCLI_AUTH"] == password
    for name, service in svc.items():
        if is_ours(service) and topology(service) == "cluster":
            url = environment(service)["CHATSCALE_REDIS_URL"]
            assert urlparse(url).password == password, name
            assert set(url_hosts(url)) <= set(nodes), name


def test_metrics_stay_inside_the_compose_network():
    """/metrics has no authentication: no service publishes it, the image does not expose or
    bind it on every interface by default, and what aggregates it (Prometheus, Grafana) is
    published on the host's loopback only. Gateways and the voice relay are the only ports open beyond it."""
    svc = services()
    for name, service in svc.items():
        env = environment(service)
        metrics_port = int(env.get("CHATSCALE_METRICS_PORT", "0"))
        for host_ip, host_port, target in published_ports(service):
            assert target != metrics_port, f"{name} publishes its /metrics port"
            if (role(service) or cluster_role(service)) not in ("gateway", "voice"):
                assert host_ip == "127.0.0.1", f"{name} publishes {host_port} beyond loopback"
    steps = _instructions()
    exposed = {int(p) for w, arg in steps if w == "EXPOSE" for p in arg.split()}
    metrics_port = int(environment(svc["worker"])["CHATSCALE_METRICS_PORT"])
    assert metrics_port not in exposed, "EXPOSE would let `docker run -P` publish /metrics"
    assert "CHATSCALE_METRICS_HOST=0.0.0.0" not in DOCKERFILE.read_text()
    assert Settings.model_fields["metrics_host"].default == "127.0.0.1"


def test_compose_and_the_embedded_runner_describe_the_same_services(tmp_path):
    """`chatscale run` and docker compose: same roles, counts, subcommands and wiring."""
    defaults = build_parser().parse_args(["run"])
    topo = supervisor.Topology(
        Settings(), tmp_path, gateways=defaults.gateways, workers=defaults.workers
    )
    embedded = supervisor.plan(topo)
    embedded_roles = Counter(child.role for child in embedded)
    compose_roles: Counter[str] = Counter()
    for service in services().values():
        if role(service):
            compose_roles[role(service)] += replicas(service)
    assert compose_roles == embedded_roles
    assert {c.role: c.args[0] for c in embedded} == {r: r for r in compose_roles}
    parser = build_parser()
    for child in embedded:  # the supervisor's argument lists are valid commands too
        parser.parse_args(child.args)
    # Besides those processes both run a Redis-protocol server and a storage backend.
    svc = services()
    assert any(s.get("image", "").startswith(("valkey/", "redis")) for s in svc.values())
    assert any(s.get("image", "").startswith("cassandra") for s in svc.values())
    # The wiring the supervisor passes to its children is set in compose too.
    supervisor_env = {k for k in topo.env() if k.startswith("CHATSCALE_")}
    compose_env = set(environment(svc["worker"])) | {"CHATSCALE_REDIS_URL"}  # REDIS_URL alias
    assert (supervisor_env & env_names()) <= compose_env | {"CHATSCALE_METRICS_PORT"}


def test_prometheus_scrapes_every_service_on_the_metrics_port():
    config = yaml.safe_load(PROMETHEUS.read_text())
    svc = services()
    scraped: set[str] = set()
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for name in sd["names"]:
                assert name in svc, f"job {job['job_name']} scrapes unknown service {name}"
                assert sd["port"] == int(environment(svc[name])["CHATSCALE_METRICS_PORT"])
                scraped.add(name)
    assert scraped == {n for n, s in svc.items() if role(s) or cluster_role(s)}
    prom = svc["prometheus"]
    assert prom.get("profiles") == ["metrics"]
    mount = next(v for v in prom["volumes"] if "prometheus.yml" in v)
    assert (ROOT / mount.split(":")[0]).resolve() == PROMETHEUS


def test_bind_mounted_files_exist_and_named_volumes_are_declared():
    compose = load_compose()
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"


# ---- the Dockerfile ---------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_cache_friendly_non_root_and_ships_every_package():
    steps = _instructions()
    final = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM") :]
    users = [arg for w, arg in final if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    copies = [arg for w, arg in steps if w == "COPY"]
    deps_at = next(i for i, c in enumerate(copies) if c.startswith("pyproject.toml"))
    source_at = min(i for i, c in enumerate(copies) if c.startswith(("chatscale/", ".")))
    assert deps_at < source_at, "dependencies must be installed before the source is copied"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    for package in packages:
        assert any(c.startswith(f"{package}/") for c in copies), f"{package}/ is not in the image"
    assert ["chatscale"] == yaml.safe_load(next(a for w, a in final if w == "ENTRYPOINT"))
    python = next(a for w, a in steps if w == "ARG" and a.startswith("PYTHON_VERSION="))
    assert pyproject["project"]["requires-python"] == f">={python.split('=')[1]}"
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for copy in copies:
        source = copy.split()[0]
        if not source.startswith("--"):
            assert source.rstrip("/") not in ignored, f".dockerignore hides {source}"


# ---- the real tool, where it is installed ----------------------------------------------------------


def test_docker_compose_config_accepts_the_file():
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI; the schema and semantic checks above still ran")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("docker CLI without the compose plugin; the checks above still ran")
    result = subprocess.run(
        [docker, "compose", "--profile", "loadtest", "--profile", "metrics", "--profile", "cluster"]
        + ["config", "-q"],
        cwd=ROOT,
        env={
            **os.environ,
            **{name: stand_in(name) for name in required_variables()},
        },  # required, no default
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_the_cold_tier_is_the_s3_service_with_the_key_it_accepts():
    """CHATSCALE_COLD_URL points at the s3 service (S3Proxy, the server the tests run from
    Maven jars) on its port, signed with the identity and credential that service sets; the
    object store is not published on the host and every reader of the cold tier waits for it."""
    svc = services()
    s3 = svc["s3"]
    assert s3["image"].startswith("andrewgaul/s3proxy:") and not published_ports(s3)
    s3_env = environment(s3)
    cold = urlparse(environment(svc["worker"])["CHATSCALE_COLD_URL"])
    assert cold.scheme == "s3" and cold.hostname and cold.path.strip("/")
    assert (cold.username, cold.password) == (
        s3_env["S3PROXY_IDENTITY"],
        s3_env["S3PROXY_CREDENTIAL"],
    )
    endpoint = urlparse(dict(p.split("=", 1) for p in cold.query.split("&"))["endpoint"])
    assert endpoint.hostname == "s3"
    assert endpoint.port == urlparse(s3_env["S3PROXY_ENDPOINT"]).port
    assert s3_env["JCLOUDS_PROVIDER"] == "filesystem"
    assert s3_env["JCLOUDS_FILESYSTEM_BASEDIR"] in {v.split(":")[1] for v in s3["volumes"]}
    for name, service in svc.items():
        if topology(service) == "cluster":
            continue  # the cluster profile runs the chat path only
        if role(service) in ("gateway", "archive"):  # they read or write cold pages
            assert depends_on(service).get("s3") == "service_started", name
    # ... and the image can talk to it: the Dockerfile installs the `s3` extra (boto3)
    assert "['optional-dependencies']['s3']" in DOCKERFILE.read_text()


def test_the_search_index_is_the_opensearch_service_that_its_users_wait_for():
    """CHATSCALE_SEARCH_URL names an index on the opensearch service (the version the tests
    run from Maven jars), on its HTTP port, security off (plain HTTP, compose-network only);
    the gateways and the indexer wait for its health check; the image has the HTTP client."""
    from storage.opensearch_node import DEFAULT_VERSION
    from storage.search_opensearch import parse_url

    svc = services()
    node = svc["opensearch"]
    assert node["image"] == f"opensearchproject/opensearch:{DEFAULT_VERSION}"
    assert not published_ports(node)
    env = environment(node)
    assert env["discovery.type"] == "single-node" and env["DISABLE_SECURITY_PLUGIN"] == "true"
    base, index = parse_url(environment(svc["worker"])["CHATSCALE_SEARCH_URL"])
    assert urlparse(base).hostname == "opensearch" and urlparse(base).port == 9200 and index
    assert "9200/_cluster/health" in " ".join(_words(node["healthcheck"]["test"]))
    for name, service in svc.items():
        if topology(service) == "cluster":
            continue  # the cluster profile runs the chat path only
        if role(service) in ("gateway", "indexer"):
            assert depends_on(service).get("opensearch") == "service_healthy", name
    assert "['optional-dependencies']['opensearch']" in DOCKERFILE.read_text()


def test_cluster_profile_is_a_valkey_cluster_and_a_cassandra_ring_with_the_same_services():
    """`--profile cluster`: 3 Valkey masters + 3 replicas formed by a one-shot init, 3 Cassandra
    nodes, and chatscale's services (same roles as the single-node topology, minus the optional
    ones) wired to them: the cluster Redis URL and a Cassandra URL with every node at RF=3."""
    svc = services()
    cluster = {n: s for n, s in svc.items() if topology(s) == "cluster"}
    valkeys = [n for n, s in cluster.items() if "--cluster-enabled" in _words(s.get("command"))]
    assert len(valkeys) == 6
    for name in valkeys:
        command = _words(svc[name]["command"])
        assert command[command.index("--cluster-enabled") + 1] == "yes"
        assert command[command.index("--appendonly") + 1] == "yes"
        assert command[command.index("--cluster-announce-hostname") + 1] == name
    init = cluster["valkey-cluster-init"]
    script = interpolate(_words(init["command"])[0])
    assert "--cluster create" in script and "--cluster-replicas 1" in script
    assert all(name in script for name in valkeys)
    assert depends_on(init) == dict.fromkeys(valkeys, "service_healthy")
    ring = [n for n, s in cluster.items() if s.get("image") == "cassandra:5.0"]
    assert len(ring) == 3
    seeds = {environment(svc[n])["CASSANDRA_SEEDS"] for n in ring}
    assert len(seeds) == 1 and set(seeds.pop().split(",")) <= set(ring)
    roles: Counter[str] = Counter()
    for service in cluster.values():
        if cluster_role(service):
            roles[cluster_role(service)] += replicas(service)
    assert roles == {"gateway": 2, "worker": 2, "presence": 1}
    for name, service in cluster.items():
        if is_ours(service):
            env = environment(service)
            assert env["CHATSCALE_REDIS_URL"].startswith("redis+cluster://"), name
            assert sorted(url_hosts(env["CHATSCALE_REDIS_URL"])) == valkeys[:3], name
            storage = env["CHATSCALE_STORAGE_URL"]
            assert sorted(url_hosts(storage)) == sorted(ring), name
            assert "rf=3" in urlparse(storage).query, name
            # the chat path only: nothing points at the single-node topology's s3/opensearch
            assert env.get("CHATSCALE_SEARCH_URL") == "" == env.get("CHATSCALE_COLD_URL"), name
            deps = depends_on(service)
            assert "valkey" not in deps and "cassandra" not in deps, name
