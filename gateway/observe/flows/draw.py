"""The declared and the observed flows as one diagram: Mermaid text (docs, README) and SVG/PNG (matplotlib).

Nodes: every declared principal and every observed identity (grouped under its principal), the gateway, the
broker. Edges: declared flows (solid), observed unintended ones (red, marked), refused attempts (dashed, with
counts). The layout is fixed (principals left, gateway, broker right), so the same input draws the same picture.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from gateway.observe.flows.compare import Comparison
from gateway.observe.flows.model import ACTIONS, Declared


def _id(text: str) -> str:
    return "n_" + re.sub(r"[^A-Za-z0-9_]", "_", text)


def _esc(text: str) -> str:
    return text.replace('"', "'").replace("#", "#35;")


def edges(declared: Declared, cmp: Comparison) -> list[tuple[str, str, str, str]]:
    """(from node, to node, label, style): style declared | unintended | refused."""
    out = []
    for p in declared.principals:
        src = "gateway" if p.kind == "upstream" else p.name
        dst = "broker" if p.kind == "upstream" else "gateway"
        topics = [f"{d} {t}" for d in ACTIONS for t in getattr(p, d)]
        out.append((src, dst, "; ".join(topics) + f" [{'/'.join(p.auth)}]", "declared"))
    unintended: dict[tuple[str, str], list[str]] = defaultdict(list)
    for f in cmp.undeclared:
        src = f.principal if f.principal and f.status != "undeclared principal" else f.identity
        if f.hop == "gateway-broker":
            src, dst = "gateway", "broker"
        else:
            dst = "gateway"
        unintended[(src, dst)].append(f"{f.direction} {f.topic} ({f.identity})")
    for (src, dst), labels in sorted(unintended.items()):
        out.append((src, dst, "UNDECLARED: " + "; ".join(sorted(set(labels))[:6]), "unintended"))
    refused: dict[str, list[str]] = defaultdict(list)
    for r in cmp.refusals:
        refused[r.principal or r.identity].append(f"{r.event} {r.kind} x{r.count}")
    for src, labels in sorted(refused.items()):
        out.append((src, "gateway", "REFUSED: " + "; ".join(labels[:6]), "refused"))
    return out


def nodes(declared: Declared, cmp: Comparison) -> list[str]:
    names = [p.name for p in declared.principals if p.kind != "upstream"]
    for src, _, _, _ in edges(declared, cmp):
        if src not in names and src not in ("gateway", "broker"):
            names.append(src)
    return names


def mermaid(declared: Declared, cmp: Comparison) -> str:
    members: dict[str, list[str]] = defaultdict(list)
    for identity, principal in sorted(cmp.principals.items()):
        if principal:
            members[principal].append(identity)
    lines = ["flowchart LR"]
    for name in nodes(declared, cmp):
        p = declared.principal(name)
        seen = members.get(name, [])
        label = name if p is None else f"{name} ({p.kind})"
        if seen:
            label += f"<br/>{len(seen)} seen: " + ", ".join(seen[:3]) + (" ..." if len(seen) > 3 else "")
        lines.append(f'  {_id(name)}["{_esc(label)}"]')
    upstream = next((p for p in declared.principals if p.kind == "upstream"), None)
    gw = "gateway (mTLS, AWS IoT policies)" + (f"<br/>upstream: {'/'.join(upstream.auth)}" if upstream else "")
    lines.append(f'  {_id("gateway")}["{_esc(gw)}"]')
    lines.append(f'  {_id("broker")}[("broker")]')
    styles = []
    for i, (src, dst, label, style) in enumerate(edges(declared, cmp)):
        arrow = "-.->" if style == "refused" else "-->"
        lines.append(f'  {_id(src)} {arrow}|"{_esc(label)}"| {_id(dst)}')
        if style == "unintended":
            styles.append(f"  linkStyle {i} stroke:#d62728,stroke-width:3px")
        elif style == "refused":
            styles.append(f"  linkStyle {i} stroke:#ff7f0e")
    for name in nodes(declared, cmp):
        if declared.principal(name) is None:
            lines.append(f"  style {_id(name)} fill:#fdd,stroke:#d62728")
    return "\n".join(lines + styles) + "\n"


def render(declared: Declared, cmp: Comparison, path: str | Path) -> Path:
    """SVG or PNG (by the suffix) of the same diagram, drawn with matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    left = nodes(declared, cmp)
    all_edges = edges(declared, cmp)
    height = max(3.0, 1.1 * len(left) + 1)
    fig, ax = plt.subplots(figsize=(14, height))
    ax.set_xlim(0, 14)
    ax.set_ylim(0, height)
    ax.axis("off")
    pos = {name: (2.0, height - 0.8 - i * 1.1) for i, name in enumerate(left)}
    pos["gateway"] = (8.5, height / 2)
    pos["broker"] = (12.5, height / 2)
    colours = {"declared": "#1f77b4", "unintended": "#d62728", "refused": "#ff7f0e"}
    for name, (x, y) in pos.items():
        undeclared = name not in ("gateway", "broker") and declared.principal(name) is None
        ax.text(x, y, name, ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round", fc="#fdd" if undeclared else "#eef", ec="#d62728" if undeclared else "#333"))
    offsets: dict[tuple[str, str], int] = defaultdict(int)
    for src, dst, label, style in all_edges:
        (x1, y1), (x2, y2) = pos[src], pos[dst]
        k = offsets[(src, dst)]
        offsets[(src, dst)] += 1
        dy = 0.18 * k
        ax.annotate("", xy=(x2 - 1.0, y2 + dy), xytext=(x1 + 1.2, y1 + dy),
                    arrowprops=dict(arrowstyle="->", color=colours[style], lw=2 if style == "unintended" else 1.2,
                                    linestyle="--" if style == "refused" else "-"))
        short = label if len(label) <= 70 else label[:67] + "..."
        ax.text((x1 + x2) / 2 + 0.1, (y1 + y2) / 2 + dy + (0.3 if y1 == y2 else 0.08), short, fontsize=6.5, color=colours[style],
                ha="center")
    ax.set_title("declared and observed flows (red: undeclared, orange dashed: refused)", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None, bbox_inches="tight")
    plt.close(fig)
    return path
