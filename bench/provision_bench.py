"""Bulk provisioning benchmark: `iotgate fleet provision --count N` against a plain openssl-CLI loop.

Both make, per device, an EC P-256 key, a CSR with CN = thing name, and a certificate signed by the same
issuing CA. The openssl loop is what a shell script does (three processes per device) and runs on a sample,
then is extrapolated; iotgate's figure is the wall time of the real CLI, registry writes included.

    .venv/bin/python bench/provision_bench.py [--count 100000] [--openssl-sample 200]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IOTGATE = str(Path(sys.executable).with_name("iotgate"))


def iotgate(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IOTGATE, "--home", str(home), *args], check=True, capture_output=True, text=True)


def openssl_loop(home: Path, count: int) -> float:
    """Seconds per device for genpkey + req + x509 -req, one shell-script device at a time."""
    out = home / "openssl-devices"
    out.mkdir()
    env = {**os.environ}
    started = time.perf_counter()
    for i in range(count):
        d = out / f"dev-{i}"
        d.mkdir()
        subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-out", str(d / "device.key")], check=True, capture_output=True, env=env)
        subprocess.run(["openssl", "req", "-new", "-key", str(d / "device.key"), "-subj", f"/CN=dev-{i}",
                        "-out", str(d / "device.csr")], check=True, capture_output=True, env=env)
        subprocess.run(["openssl", "x509", "-req", "-in", str(d / "device.csr"), "-CA", str(home / "issuing-ca.pem"),
                        "-CAkey", str(home / "issuing-ca.key"), "-set_serial", str(1000 + i), "-days", "365",
                        "-sha256", "-out", str(d / "device.pem")], check=True, capture_output=True, env=env)
    return (time.perf_counter() - started) / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--openssl-sample", type=int, default=200)
    opts = parser.parse_args()
    # beside the working directory, where a real home (./.iotgate) lives: /tmp may be a slower filesystem
    base = Path(tempfile.mkdtemp(prefix=".iotgate-bench-", dir=Path.cwd()))
    home = base / "home"
    try:
        iotgate(home, "pki", "init")
        args = ["fleet", "provision", "--count", str(opts.count), "--json"]
        if opts.workers:
            args += ["--workers", str(opts.workers)]
        started = time.perf_counter()
        report = json.loads(iotgate(home, *args).stdout)
        wall = time.perf_counter() - started
        assert report["issued"] == opts.count, report
        per_device = wall / opts.count
        print(f"iotgate fleet provision --count {opts.count} (EC P-256, {report['workers']} workers, "
              f"{os.cpu_count()} cores)")
        print(f"  wall {wall:.1f} s (provisioning {report['seconds']:.1f} s), {opts.count / wall:,.0f} devices/s, "
              f"{per_device * 1e6:,.0f} us per identity (wall), target <= 30 s, stretch <= 15 s per 100k")
        if shutil.which("openssl") and opts.openssl_sample:
            per_openssl = openssl_loop(home, opts.openssl_sample)
            print(f"openssl CLI loop ({opts.openssl_sample} devices sampled): {per_openssl * 1e3:.1f} ms per identity"
                  f" -> {per_openssl * opts.count:,.0f} s for {opts.count}")
            print(f"  ratio: iotgate is {per_openssl / per_device:,.0f}x faster per identity")
        return 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
