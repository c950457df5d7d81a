"""Declared data flows checked against what the gateway saw (``iotgate flows``).

``model``: the flows file (TOML or YAML). ``log``: access logs -> observations. ``compare``: the pure core,
declared vs observed -> findings. ``draw``: Mermaid and SVG. ``suggest``: least-privilege flows and AWS IoT
policies from observed traffic.
"""

from gateway.observe.flows.compare import Comparison, compare
from gateway.observe.flows.log import Observation, observe, read_logs
from gateway.observe.flows.model import Declared, FlowsError, Principal, load_declared, parse_declared

__all__ = ["Comparison", "Declared", "FlowsError", "Observation", "Principal", "compare", "load_declared",
           "observe", "parse_declared", "read_logs"]
