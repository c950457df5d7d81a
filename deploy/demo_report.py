"""The demo's HTML report: the flows diagram (declared vs observed, the attackers' attempts marked), handshake and
end-to-end latency plots, the flows check, and the allowed/refused table. Everything is inline SVG: one file."""

from __future__ import annotations

import html
import json
from pathlib import Path

from gateway.observe.flows import compare, load_declared, observe, read_logs
from gateway.observe.flows.draw import mermaid, render
from gateway.observe.flows.home import home_ca_aliases


def latency_svg(latency: dict, phases: tuple[str, ...], title: str, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(p, latency[p]) for p in phases if latency.get(p, {}).get("count")]
    if not rows:
        return None
    stats = ("min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")
    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.8 / len(rows)
    for i, (phase, values) in enumerate(rows):
        xs = [j + i * width for j in range(len(stats))]
        ax.bar(xs, [values[s] for s in stats], width, label=f"{phase} (n={values['count']})")
    ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(stats))], [s[:-3] for s in stats])
    ax.set_ylabel("ms")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.savefig(path, metadata={"Date": None}, bbox_inches="tight")
    plt.close(fig)
    return path


def write_report(out: Path, *, declared_file: Path, access_log: Path, fleet_report: Path | None,
                 rows: list[tuple[str, str, str, str, str]]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    declared = load_declared(declared_file)
    records, malformed = read_logs([access_log])
    cmp = compare(declared, observe(records), ca_aliases=home_ca_aliases(access_log.parent))
    render(declared, cmp, out / "flows.svg")
    (out / "flows.mmd").write_text(mermaid(declared, cmp))
    latency = json.loads(fleet_report.read_text())["latency"] if fleet_report and fleet_report.exists() else {}
    handshake = latency_svg(latency, ("tcp", "tls", "connack"), "connect: TCP, TLS handshake, CONNACK",
                            out / "handshake.svg")
    e2e = latency_svg(latency, ("puback", "e2e", "command"), "publish: PUBACK, end to end, command round trip",
                      out / "e2e.svg")

    def table(head, body):
        cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        lines = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in body)
        return f"<table><tr>{cells}</tr>{lines}</table>"

    def inline(path):
        return path.read_text().split("?>", 1)[-1] if path else "<p>no samples</p>"

    verdict = "PASS" if cmp.passed else "FAIL"
    parts = [
        "<!doctype html><meta charset=utf-8><title>iotgate demo</title><style>body{font-family:sans-serif;"
        "max-width:1200px;margin:2em auto}table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
        "padding:3px 6px;text-align:left}.PASS{color:#2ca02c}.FAIL{color:#d62728}svg{max-width:100%;height:auto}"
        "</style>",
        "<h1>iotgate demo</h1>",
        f"<h2>Flows: declared vs observed <span class={verdict}>{verdict}</span></h2>",
        f"<p>{len(cmp.undeclared)} undeclared flow(s), {len(cmp.auth_mismatches)} authentication mismatch(es), "
        f"{sum(r.count for r in cmp.refusals)} refused attempt(s), from {len(records)} access-log events "
        f"({malformed} malformed). Declared in <code>{html.escape(declared_file.name)}</code>.</p>",
        inline(out / "flows.svg"),
        "<details><summary>Mermaid source</summary><pre>" + html.escape(mermaid(declared, cmp)) + "</pre></details>",
        "<h2>Allowed and refused through the gateway</h2>",
        table(["who", "tried", "expected", "outcome", "seen by the device"], rows),
        "<h3>Refused attempts in the access log (unauthorized access)</h3>",
        table(["identity", "principal", "event", "reason", "count", "example"],
              [(r.identity, r.principal or "-", r.event, r.kind, r.count, r.reason) for r in cmp.refusals]),
        "<h3>Undeclared flows</h3>",
        table(["identity", "hop", "direction", "topic", "count", "status"],
              [(f.identity, f.hop, f.direction, f.topic, f.count, f.status) for f in cmp.undeclared]) if cmp.undeclared
        else "<p>none</p>",
        "<h2>Latency (fleet run)</h2>", inline(handshake), inline(e2e),
        "<h3>Every observed flow and how it authenticated</h3>",
        table(["identity", "principal", "hop", "direction", "topic", "count", "authentication", "status"],
              [(f.identity, f.principal or "-", f.hop, f.direction, f.topic, f.count, f.auth, f.status)
               for f in cmp.flows]),
    ]
    path = out / "report.html"
    path.write_text("\n".join(parts) + "\n")
    return path
