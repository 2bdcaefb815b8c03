"""Test doubles for attackers (issue 6, specs/threat-model.md).

* :mod:`.fuzz` -- hypothesis helpers: bounded budgets, JSON mutations, and
  :func:`.fuzz.only_tree_errors`, the property every parser of untrusted input must hold;
* :mod:`.relay_proxy` -- a malicious relay: an HTTP/WebSocket proxy in front of a real
  relay process that tampers with, replays, reorders, duplicates, drops, delays and
  cross-wires envelopes and link frames;
* :mod:`.sessions` -- small builders for sessions and parties used by the scenarios;
* :mod:`.fakes` -- recording fakes for a mesh peer's events and application side.
"""
