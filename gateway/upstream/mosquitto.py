"""Mosquitto as the upstream broker: its configuration, rendered from one template, and a process runner.

The same rendering serves the tests, `make demo` and docker-compose.yml (`iotgate broker config`).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import socket
import string
import subprocess
import time
from pathlib import Path

from certs.errors import IotgateError
from certs.keys import write_file, write_private_file
from certs.store import GATEWAY_CLIENT_CN, PKIPaths

TEMPLATE = Path(__file__).with_name("mosquitto.conf.template")
DEFAULT_MAX_PACKET_SIZE = 128 * 1024 + 512


class BrokerError(IotgateError):
    pass


def find_mosquitto() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError("mosquitto is not installed: `apt-get install -y mosquitto` (make test and make demo do it)")


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Where the broker listens and which files of the iotgate home it uses."""

    pki: PKIPaths
    directory: Path  # rendered config, ACL, password file and unix socket live here (0700)
    host: str = "127.0.0.1"
    port: int = 8884
    unix_socket: bool = False
    username: str = GATEWAY_CLIENT_CN
    run_as_root: bool = dataclasses.field(default_factory=lambda: os.geteuid() == 0)
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE
    # The largest PUBLISH payload accepted (Mosquitto drops a larger one); None: only max_packet_size applies.
    # Set to AWS IoT's 128 KiB for devices that reach the broker directly; the gateway enforces it itself.
    message_size_limit: int | None = None
    # Who may connect over mTLS. "gateway": only certificates of the upstream CA, which issues the gateway's
    # own identity and nothing else (the gateway's upstream broker). "devices": device certificates of the
    # issuing CA too, for a plain Mosquitto that devices reach directly (simulator runs against Mosquitto,
    # and the benchmarks' baseline).
    clients: str = "gateway"
    # Extra ACL lines appended after the gateway's own, e.g. `pattern readwrite dt/%u/#` for devices that talk
    # to this broker directly (the device simulator's tests and benchmarks); empty for the gateway's upstream.
    acl_extra: str = ""
    # Extra configuration lines appended to the rendered file: general options (`max_keepalive 120`,
    # `set_tcp_nodelay true`) or options of the last listener.
    extra_config: str = ""

    @property
    def conf_path(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def acl_path(self) -> Path:
        return self.directory / "acl"

    @property
    def password_path(self) -> Path:
        return self.directory / "passwd"

    @property
    def secret_path(self) -> Path:
        """The gateway's own password for the unix socket listener (0600, never logged)."""
        return self.directory / "gateway.secret"

    @property
    def socket_path(self) -> Path:
        return self.directory / "mqtt.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}" if self.unix_socket else f"mqtts://{self.host}:{self.port}"


def _client_trust(config: BrokerConfig) -> tuple[Path, Path]:
    """The CA file and CRL file that decide which client certificates the broker accepts."""
    if config.clients == "gateway":
        return config.pki.upstream_ca_cert, config.pki.upstream_crl
    if config.clients == "devices":  # devices and the gateway: both CAs, both CRLs (written by write_config)
        return config.directory / "client-cas.pem", config.directory / "client-crls.pem"
    raise BrokerError(f"clients: {config.clients!r} is not 'gateway' or 'devices'")


def render(config: BrokerConfig) -> str:
    """The broker configuration text: mTLS listener requiring a client certificate, optional unix socket."""
    cafile, crlfile = _client_trust(config)
    unix = ""
    if config.unix_socket:
        unix = "\n".join([
            "",
            "# the co-located gateway: its own username and password, never anonymous",
            f"listener 0 {config.socket_path}",
            "allow_anonymous false",
            f"password_file {config.password_path}",
            f"acl_file {config.acl_path}",
        ])
    text = string.Template(TEMPLATE.read_text()).substitute(
        user_line="user root" if config.run_as_root else "",
        max_packet_size=config.max_packet_size,
        message_size_line=("" if config.message_size_limit is None else
                           f"# a payload above AWS IoT's limit is dropped\nmessage_size_limit {config.message_size_limit}"),
        host=config.host,
        port=config.port,
        cafile=cafile,
        certfile=config.pki.server_cert,
        keyfile=config.pki.server_key,
        crlfile=crlfile,
        acl_file=config.acl_path,
        unix_listener=unix,
    )
    if config.extra_config:
        text += f"\n# extra settings of this broker's configuration\n{config.extra_config.rstrip()}\n"
    return text


def write_config(config: BrokerConfig) -> Path:
    """Render the configuration, the ACL (the gateway identity, then `acl_extra`) and, for a unix socket,
    the password."""
    config.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(config.directory, 0o700)
    acl = f"# only the iotgate gateway's own identity may use this broker\nuser {config.username}\ntopic readwrite #\n"
    # `#` does not match topics that start with `$`: the gateway's services publish and its devices subscribe there
    acl += "topic readwrite $aws/#\n"
    if config.acl_extra:
        acl += f"\n# extra rules of this broker's configuration\n{config.acl_extra.rstrip()}\n"
    write_file(config.acl_path, acl.encode(), mode=0o600)
    if config.clients == "devices":
        pki = config.pki
        cafile, crlfile = _client_trust(config)
        write_file(cafile, pki.chain.read_bytes() + pki.upstream_ca_cert.read_bytes())
        write_file(crlfile, pki.crl.read_bytes() + pki.upstream_crl.read_bytes())
    if config.unix_socket:
        if not config.secret_path.exists():
            write_private_file(config.secret_path, secrets.token_urlsafe(32).encode())
        _write_password_file(config)
    write_file(config.conf_path, render(config).encode(), mode=0o600)
    return config.conf_path


def gateway_password(config: BrokerConfig) -> str:
    return config.secret_path.read_text().strip()


def _write_password_file(config: BrokerConfig) -> None:
    """Mosquitto's password file for the gateway's user: written in clear to a 0600 file, then hashed in place
    by `mosquitto_passwd -U` (the password never appears in a process's arguments)."""
    passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    config.password_path.unlink(missing_ok=True)
    fd = os.open(config.password_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, f"{config.username}:{gateway_password(config)}\n".encode())
    finally:
        os.close(fd)
    proc = subprocess.run([passwd, "-U", str(config.password_path)], capture_output=True, text=True)
    if proc.returncode != 0:
        config.password_path.unlink(missing_ok=True)
        raise BrokerError(f"mosquitto_passwd failed: {proc.stderr.strip() or proc.stdout.strip()}")


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class MosquittoProcess:
    """A Mosquitto child process on a rendered configuration; ready once its listener accepts."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = config.directory / "mosquitto.log"

    def start(self, timeout: float = 10.0) -> MosquittoProcess:
        conf = write_config(self.config)
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen([find_mosquitto(), "-c", str(conf)], stdout=log, stderr=log,
                                            stdin=subprocess.DEVNULL)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerError(f"mosquitto exited with {self.process.returncode}: {self.log_tail()}")
            if self._accepting():
                return self
            time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not open its listener within {timeout:.0f} s: {self.log_tail()}")

    def _accepting(self) -> bool:
        cfg = self.config
        try:
            if cfg.unix_socket:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(0.2)
                    s.connect(str(cfg.socket_path))
            with socket.create_connection((cfg.host, cfg.port), timeout=0.2):
                return True
        except OSError:
            return False

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def kill(self) -> None:
        """Abrupt stop (SIGKILL): what a crash looks like to the gateway."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def __enter__(self) -> MosquittoProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
