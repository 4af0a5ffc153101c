"""The Job templates of a distributed Locust run, and how their ``${...}`` placeholders are filled.

The Helm chart ships three templates (``helm/vouch/files/locust/``) and mounts them into the daemon:
the master Job, the worker Job and the Service the workers reach the master through. Operators may
change them (node selectors, tolerations, a proxy sidecar) without a new vouch; the runner
(:mod:`vouch.rollout.loadtest_kube`) reads them at every run and fills the placeholders.

Filling works on the parsed YAML, never on its text, so no value can change a manifest's structure:

* a string that is exactly one placeholder takes the value with its type (``activeDeadlineSeconds:
  ${deadline}`` becomes a number, ``resources: ${resources}`` a mapping);
* a list item that is exactly one placeholder whose value is a list is spliced into that list
  (``- ${tag_args}`` adds zero or more arguments, ``- ${env}`` the run's environment variables);
* inside a longer string the value is written as text (``--users=${users}``, ``${name}-master``).

An unknown placeholder is an error naming it and the known ones (a typo never reaches the cluster).

>>> fill({"args": ["--users=${users}", "${more}"], "n": "${n}"}, {"users": 5, "more": ["-x"], "n": 2})
{'args': ['--users=5', '-x'], 'n': 2}
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vouch.loadtests.errors import LoadTestError

Json = dict[str, Any]

FILES = {"master": "master-job.yaml", "workers": "worker-job.yaml", "service": "master-service.yaml"}
"""The template of each part of a run, by file name in the templates folder."""

KINDS = {"master": ("batch/v1", "Job"), "workers": ("batch/v1", "Job"), "service": ("v1", "Service")}

RUN_LABEL = "vouch.dev/loadtest-run"
"""On every object of a run (and its pods): the run's id."""
ROLE_LABEL = "vouch.dev/loadtest-role"
"""On the Jobs and their pods: ``master`` or ``worker``."""

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class RunObjects:
    """The filled manifests of one run, ready to create."""

    master: Json
    workers: Json
    service: Json


@dataclass(frozen=True)
class LoadJobTemplates:
    """The three parsed templates; :meth:`load` reads them from a folder (the chart's ConfigMap)."""

    master: Json
    workers: Json
    service: Json

    @classmethod
    def load(cls, folder: Path) -> LoadJobTemplates:
        """Read and check the templates in ``folder``; a missing or malformed one is a :class:`LoadTestError`."""
        return cls.parse({part: _read(folder / name) for part, name in FILES.items()}, where=str(folder))

    @classmethod
    def parse(cls, texts: Mapping[str, str], *, where: str = "the templates") -> LoadJobTemplates:
        """The templates from their YAML texts, by part (``master``, ``workers``, ``service``)."""
        parsed: dict[str, Json] = {}
        for part, (api_version, kind) in KINDS.items():
            name = FILES[part]
            try:
                doc = yaml.safe_load(texts[part])
            except KeyError as exc:
                raise LoadTestError(f"{where}: no {name}") from exc
            except yaml.YAMLError as exc:
                raise LoadTestError(f"{where}/{name} is not YAML: {exc}") from exc
            if not isinstance(doc, dict) or (doc.get("apiVersion"), doc.get("kind")) != (api_version, kind):
                raise LoadTestError(f"{where}/{name} must be one {api_version} {kind}")
            parsed[part] = doc
        return cls(parsed["master"], parsed["workers"], parsed["service"])

    def placeholders(self) -> set[str]:
        """Every placeholder the templates use."""
        return _names(self.master) | _names(self.workers) | _names(self.service)

    def render(self, values: Mapping[str, Any]) -> RunObjects:
        """The run's manifests, every placeholder filled from ``values``."""
        return RunObjects(fill(self.master, values), fill(self.workers, values), fill(self.service, values))


def fill(node: Any, values: Mapping[str, Any]) -> Any:
    """A deep copy of ``node`` with its placeholders filled (see the module docstring)."""
    if isinstance(node, dict):
        return {key: fill(value, values) for key, value in node.items()}
    if isinstance(node, list):
        out: list[Any] = []
        for item in node:
            whole = _whole(item)
            if whole is not None and isinstance(_value(whole, values), list):
                out.extend(copy.deepcopy(_value(whole, values)))
            else:
                out.append(fill(item, values))
        return out
    if isinstance(node, str):
        whole = _whole(node)
        if whole is not None:
            return copy.deepcopy(_value(whole, values))
        return _PLACEHOLDER.sub(lambda match: str(_value(match.group(1), values)), node)
    return node


def _whole(node: object) -> str | None:
    """The placeholder's name when ``node`` is exactly one placeholder."""
    if not isinstance(node, str):
        return None
    match = _PLACEHOLDER.fullmatch(node.strip())
    return match.group(1) if match else None


def _value(name: str, values: Mapping[str, Any]) -> Any:
    try:
        return values[name]
    except KeyError:
        known = ", ".join(f"${{{k}}}" for k in sorted(values))
        raise LoadTestError(f"unknown placeholder ${{{name}}} in a load-test template; known: {known}") from None


def _names(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set().union(*(_names(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_names(v) for v in node)) if node else set()
    return set(_PLACEHOLDER.findall(node)) if isinstance(node, str) else set()


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LoadTestError(f"cannot read the load-test template {path}: {exc.strerror or exc}") from exc
