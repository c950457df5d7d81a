"""Reports of a qualification run: ``report.json`` (everything), ``report.html`` (for people) and JUnit XML (for a
firmware CI to gate on: a failed case is a <failure>, an error an <error>, a skipped case <skipped>)."""

from __future__ import annotations

import datetime as dt
import html
import platform
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import orjson

from gateway.qualify.runner import RunResult
from gateway.qualify.verdict import CaseResult, Verdict, counts

__all__ = ["report_dict", "write_html", "write_json", "write_junit", "write_reports"]

_CSS = ("body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;font-size:90%;vertical-align:top}"
        ".pass{background:#efe}.warn{background:#ffd}.fail,.error{background:#fdd}.skipped{background:#eee}"
        "pre{font-size:85%;white-space:pre-wrap;margin:.3em 0}details{margin:.6em 0}"
        "h1 .pass,h1 .warn{color:#080;background:none}h1 .fail,h1 .error{color:#b00;background:none}")
_CLASS = {Verdict.PASS: "pass", Verdict.PASS_WITH_WARNINGS: "warn", Verdict.FAIL: "fail", Verdict.ERROR: "error",
          Verdict.SKIPPED: "skipped"}


def _not_run(result: RunResult) -> list[str]:
    ran = {r.case_id for r in result.results}
    return [c.id for c in result.suite.cases if c.id not in ran]


def report_dict(result: RunResult) -> dict[str, Any]:
    ep = result.endpoint
    return {
        "tool": "iotgate qualify",
        "suite": result.suite.as_dict(),
        "device": result.device,
        "endpoint": {"host": ep.host, "port": ep.port, "server_name": ep.server_name, "ca_file": ep.ca_file}
        if ep else None,
        "started": dt.datetime.fromtimestamp(result.started_at, dt.UTC).isoformat(),
        "seconds": round(result.seconds, 3),
        "verdict": str(result.verdict),
        "passed": result.verdict.passed,
        "error": result.error,
        "counts": counts(result.results),
        "not_run": _not_run(result),
        "cases": [r.as_dict() for r in result.results],
    }


def write_json(path: Path, result: RunResult) -> Path:
    path.write_bytes(orjson.dumps(report_dict(result), option=orjson.OPT_INDENT_2) + b"\n")
    return path


def _evidence_text(case: CaseResult) -> str:
    lines = []
    for e in case.evidence:
        t = "" if e["t"] is None else f"{e['t']:9.3f}s "
        lines.append(f"{t}{e['source']:>8}: {e['text']}")
    return "\n".join(lines)


def write_html(path: Path, result: RunResult) -> Path:
    verdict = result.verdict
    esc = html.escape
    ep = result.endpoint
    rows = []
    for r in result.results:
        warn = "".join(f"<br>&#9888; {esc(w)}" for w in r.warnings)
        rows.append(f"<tr class='{_CLASS[r.verdict]}'><td><a href='#{esc(r.case_id)}'>{esc(r.case_id)}</a><br>"
                    f"<small>{esc(r.title)}</small></td><td>{esc(str(r.verdict))}</td><td>{r.duration:.2f} s</td>"
                    f"<td>{esc(r.summary)}{warn}</td></tr>")
    for case_id in _not_run(result):
        rows.append(f"<tr class='error'><td>{esc(case_id)}</td><td>not run</td><td></td><td></td></tr>")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>iotgate qualify: {esc(result.suite.name)} ({esc(str(verdict))})</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>iotgate qualify {esc(result.suite.name)}: <span class='{_CLASS[verdict]}'>{esc(str(verdict))}</span>"
        "</h1>",
        f"<p>{esc(result.suite.description)}</p>",
        f"<p>device: {esc(result.device)}<br>endpoint: {esc(ep.server_name)} ({esc(ep.host)}:{ep.port}), device "
        f"trusts {esc(ep.ca_file)}<br>{len(result.results)} cases in {result.seconds:.1f} s</p>" if ep else "",
    ]
    if result.error:
        parts.append(f"<p class='error'><b>run error:</b> {esc(result.error)}</p>")
    parts.append("<table><thead><tr><th>case</th><th>verdict</th><th>time</th><th>what the device did</th></tr>"
                 f"</thead><tbody>{''.join(rows)}</tbody></table>")
    parts.append("<h2>Evidence</h2>")
    for r in result.results:
        parts.append(f"<details id='{esc(r.case_id)}'{' open' if not r.verdict.passed else ''}><summary>"
                     f"<b>{esc(r.case_id)}</b>: {esc(str(r.verdict))}</summary><pre>{esc(_evidence_text(r))}</pre>"
                     "</details>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def write_junit(path: Path, result: RunResult) -> Path:
    c = counts(result.results)
    not_run = _not_run(result)
    errors = c[str(Verdict.ERROR)] + len(not_run) + (1 if result.error else 0)
    tests = len(result.results) + len(not_run) + (1 if result.error else 0)
    attrs = {"name": result.suite.name, "tests": str(tests), "failures": str(c[str(Verdict.FAIL)]),
             "errors": str(errors), "skipped": str(c[str(Verdict.SKIPPED)]), "time": f"{result.seconds:.3f}",
             "timestamp": dt.datetime.fromtimestamp(result.started_at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
             "hostname": platform.node() or "localhost"}
    root = ET.Element("testsuites", {k: attrs[k] for k in ("name", "tests", "failures", "errors", "time")})
    suite = ET.SubElement(root, "testsuite", attrs)
    props = ET.SubElement(suite, "properties")
    ep = result.endpoint
    for name, value in (("device", result.device), ("suite_source", result.suite.source),
                        ("endpoint", f"{ep.server_name} {ep.host}:{ep.port}" if ep else ""),
                        ("verdict", str(result.verdict))):
        ET.SubElement(props, "property", {"name": name, "value": value})
    for r in result.results:
        case = ET.SubElement(suite, "testcase", {"classname": f"iotgate.qualify.{r.group}", "name": r.case_id,
                                                 "time": f"{r.duration:.3f}"})
        text = _evidence_text(r)
        if r.verdict is Verdict.FAIL:
            ET.SubElement(case, "failure", {"message": r.summary, "type": "fail"}).text = text
        elif r.verdict is Verdict.ERROR:
            ET.SubElement(case, "error", {"message": r.summary, "type": "error"}).text = text
        elif r.verdict is Verdict.SKIPPED:
            ET.SubElement(case, "skipped", {"message": r.summary})
        out = [f"{r.verdict}: {r.summary}", *(f"warning: {w}" for w in r.warnings), text]
        ET.SubElement(case, "system-out").text = "\n".join(out)
    for case_id in not_run:
        case = ET.SubElement(suite, "testcase", {"classname": "iotgate.qualify", "name": case_id, "time": "0"})
        ET.SubElement(case, "error", {"message": "not run: the run ended before this case", "type": "error"})
    if result.error:
        case = ET.SubElement(suite, "testcase", {"classname": "iotgate.qualify", "name": "run", "time": "0"})
        ET.SubElement(case, "error", {"message": result.error, "type": "error"})
    ET.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n")
    return path


def write_reports(directory: Path, result: RunResult) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return [write_json(directory / "report.json", result), write_html(directory / "report.html", result),
            write_junit(directory / "junit.xml", result)]
