"""The ``prometheus`` metric provider: PromQL instant queries over async HTTP.

Every way a query can go wrong becomes a :class:`~vouch.core.errors.MetricQueryError`
whose message says what happened in terms a person can act on: which URL
refused the connection, how long the server was given, and Prometheus' own
``errorType`` and ``error`` when it rejected the query. The SLO gate turns
those into INCONCLUSIVE verdicts; nothing here ever invents a value.

Example::

    provider = PrometheusProvider(PrometheusProviderSpec(kind="prometheus", url="http://prometheus:9090"))
    samples = await provider.query('sum(rate(http_requests_total{job="checkout"}[1m]))')
    await provider.close()
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from vouch.core.errors import MetricQueryError
from vouch.rollout.config import PrometheusProviderSpec
from vouch.rollout.metrics.base import Sample

_SNIPPET = 200
"""How much of an unexpected body an error message quotes."""


class PrometheusProvider:
    """Queries one Prometheus server through one shared :class:`httpx.AsyncClient`.

    Pass ``client`` to share a client with other parts of the daemon (it is then
    not closed here); the spec's timeout, headers and bearer token are sent with
    every request either way. The token file is read at each query so a rotated
    token is picked up without a restart.
    """

    kind = "prometheus"

    def __init__(self, spec: PrometheusProviderSpec, *, client: httpx.AsyncClient | None = None) -> None:
        self._spec = spec
        self._endpoint = spec.url.rstrip("/") + "/api/v1/query"
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=spec.timeout)

    @property
    def url(self) -> str:
        return self._spec.url

    async def query(self, expr: str, *, at: float | None = None) -> list[Sample]:
        """Evaluate ``expr`` as an instant query at ``at`` (server time now when ``None``)."""
        form = {"query": expr}
        if at is not None:
            form["time"] = f"{at:.3f}"
        response = await self._post(form)
        body = _json_body(response)
        if response.status_code >= 400 or body.get("status") == "error":
            raise MetricQueryError(_rejection(response.status_code, body, expr))
        if body.get("status") != "success":
            raise MetricQueryError(f"Prometheus answered an unknown status {body.get('status')!r} for {expr!r}")
        return _samples(body.get("data"), expr)

    async def close(self) -> None:
        """Close the HTTP client if this provider created it."""
        if self._owns_client:
            await self._client.aclose()

    async def _post(self, form: dict[str, str]) -> httpx.Response:
        try:
            return await self._client.post(
                self._endpoint, data=form, headers=self._headers(), timeout=self._spec.timeout
            )
        except httpx.TimeoutException as exc:
            raise MetricQueryError(
                f"Prometheus at {self._spec.url} did not answer within {self._spec.timeout:g}s ({type(exc).__name__})"
            ) from exc
        except httpx.ConnectError as exc:
            reason = "connection refused" if _refused(exc) else str(exc) or type(exc).__name__
            raise MetricQueryError(f"cannot connect to Prometheus at {self._spec.url}: {reason}") from exc
        except httpx.HTTPError as exc:
            raise MetricQueryError(
                f"query to Prometheus at {self._spec.url} failed: {exc or type(exc).__name__}"
            ) from exc

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", **self._spec.headers}
        if self._spec.bearer_token_file:
            headers["Authorization"] = f"Bearer {self._token(self._spec.bearer_token_file)}"
        return headers

    @staticmethod
    def _token(path: str) -> str:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise MetricQueryError(f"cannot read the Prometheus bearer token file {path}: {exc}") from exc
        if not token:
            raise MetricQueryError(f"the Prometheus bearer token file {path} is empty")
        return token


def _refused(exc: BaseException) -> bool:
    """Whether a ConnectionRefusedError lies anywhere in ``exc``'s chain of causes."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _json_body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        snippet = response.text[:_SNIPPET].strip() or "(empty)"
        raise MetricQueryError(
            f"Prometheus answered HTTP {response.status_code} with a body that is not JSON: {snippet}"
        ) from None
    if not isinstance(body, dict):
        raise MetricQueryError(f"Prometheus answered HTTP {response.status_code} with JSON that is not an object")
    return body


def _rejection(status: int, body: dict[str, Any], expr: str) -> str:
    kind = body.get("errorType") or "error"
    error = body.get("error") or "no error message"
    return f"Prometheus rejected {expr!r} (HTTP {status}, {kind}): {error}"


def _samples(data: object, expr: str) -> list[Sample]:
    if not isinstance(data, dict):
        raise MetricQueryError(f"malformed Prometheus answer for {expr!r}: 'data' is missing or not an object")
    kind, result = data.get("resultType"), data.get("result")
    try:
        if kind == "vector":
            if not isinstance(result, list):
                raise TypeError("'result' is not a list")
            return [_vector_sample(item) for item in result]
        if kind == "scalar":
            at, value = _point(result)
            return [Sample(value=value, labels={}, at=at)]
    except (TypeError, ValueError, KeyError) as exc:
        raise MetricQueryError(f"malformed Prometheus answer for {expr!r}: {exc}") from exc
    raise MetricQueryError(
        f"expected an instant vector or scalar from {expr!r}, got a {kind}"
        + (" (a range selector needs a function such as rate() around it)" if kind == "matrix" else "")
    )


def _vector_sample(item: object) -> Sample:
    if not isinstance(item, dict):
        raise TypeError("a vector element is not an object")
    metric = item.get("metric", {})
    if not isinstance(metric, dict) or not all(isinstance(v, str) for v in metric.values()):
        raise TypeError("a vector element's 'metric' is not a map of strings")
    at, value = _point(item.get("value"))
    return Sample(value=value, labels=dict(metric), at=at)


def _point(pair: object) -> tuple[float, float]:
    """``[<unix time>, "<value>"]``; values such as ``"NaN"`` and ``"+Inf"`` parse as floats."""
    if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[1], str):
        raise TypeError(f'a value is not [time, "number"]: {str(pair)[:_SNIPPET]}')
    return float(pair[0]), float(pair[1])
