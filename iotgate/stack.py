"""The stack's configuration, rendered from the one set of templates in ``deploy/`` for docker-compose.yml and for
the native tests alike (``iotgate stack render``): the gateway's TOML, Prometheus's scrape config, Grafana's
provisioned datasource and dashboard provider, and the dashboard itself (copied as it is).
"""

from __future__ import annotations

import shutil
import string
from pathlib import Path

from certs.errors import IotgateError

PROFILES: dict[str, dict[str, str]] = {
    # services reach each other by their compose names; only the gateway's 8883 is published (on loopback)
    "compose": {"gateway_host": "0.0.0.0", "gateway_port": "8883", "upstream": "mqtts://mosquitto:8884",
                "metrics_host": "0.0.0.0", "metrics_port": "9464", "metrics_target": "gateway:9464",
                "prometheus_url": "http://prometheus:9090", "dashboards_dir": "/stack/grafana/dashboards"},
    # everything on this machine's loopback
    "native": {"gateway_host": "127.0.0.1", "gateway_port": "8883", "upstream": "mqtts://127.0.0.1:8884",
               "metrics_host": "127.0.0.1", "metrics_port": "9464", "metrics_target": "127.0.0.1:9464",
               "prometheus_url": "http://127.0.0.1:9090", "dashboards_dir": "{out}/grafana/dashboards"},
}

# template (relative to deploy/) -> rendered file (relative to the output directory)
TEMPLATES = {
    "gateway.toml": "gateway.toml",
    "prometheus/prometheus.yml": "prometheus/prometheus.yml",
    "grafana/datasource.yml": "grafana/provisioning/datasources/iotgate.yml",
    "grafana/dashboards.yml": "grafana/provisioning/dashboards/iotgate.yml",
}
COPIED = {"grafana/dashboards/iotgate.json": "grafana/dashboards/iotgate.json"}


class StackError(IotgateError):
    pass


def values(profile: str, out: Path, overrides: dict[str, str] | None = None) -> dict[str, str]:
    if profile not in PROFILES:
        raise StackError(f"--profile {profile!r}: one of {', '.join(PROFILES)}")
    result = {k: v.replace("{out}", str(out)) for k, v in PROFILES[profile].items()}
    for key, value in (overrides or {}).items():
        if key not in result:
            raise StackError(f"--set {key}: not a stack variable; known: {', '.join(sorted(result))}")
        result[key] = value
    return result


def render(deploy: Path, out: Path, profile: str = "native", overrides: dict[str, str] | None = None) -> list[Path]:
    """Write every rendered file under ``out``; returns their paths. Nothing is written when a template fails."""
    vals = values(profile, out, overrides)
    rendered: dict[Path, str] = {}
    for source, target in TEMPLATES.items():
        path = deploy / source
        try:
            text = path.read_text()
        except OSError as exc:
            raise StackError(f"{path}: cannot read the template: {exc.strerror} (--deploy names the deploy/ "
                             "directory of iotgate's source)") from None
        try:
            rendered[out / target] = string.Template(text).substitute(vals)
        except KeyError as exc:
            raise StackError(f"{path}: unknown variable ${{{exc.args[0]}}}; known: {', '.join(sorted(vals))}") from None
        except ValueError as exc:
            raise StackError(f"{path}: {exc}") from None
    for source in COPIED:
        if not (deploy / source).is_file():
            raise StackError(f"{deploy / source}: missing")
    written = []
    for path, text in rendered.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    for source, target in COPIED.items():
        (out / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(deploy / source, out / target)
        written.append(out / target)
    return written
