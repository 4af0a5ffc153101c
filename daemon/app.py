"""The daemon process: wires configuration, store, platform, gates, engine and API together.

Shutdown order matters and runs shielded from cancellation: the API stops
taking requests, the engine stops (every decision is already on record), the
platform stops its replicas, then the store closes. A SIGKILL skips all of
that, which is why every part resumes from the store and the platform's own
state file on the next start.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry, disable_created_metrics

from vouch.core.errors import ConfigError, Problem
from vouch.daemon.api import build_app
from vouch.daemon.audit.log import AuditLog
from vouch.daemon.auth import TokenSource, resolve_token
from vouch.daemon.breakglass import OverrideFiles, Scope
from vouch.daemon.config import VouchConfig
from vouch.daemon.controller import DaemonController
from vouch.daemon.eventflow import EventFlow
from vouch.daemon.events import EventSink
from vouch.daemon.leader import LeaderElector
from vouch.daemon.leaderlabel import LeaderLabel
from vouch.daemon.metrics import DaemonMetrics
from vouch.daemon.notify import build_dispatcher
from vouch.daemon.preview.kube import KubePreviews
from vouch.daemon.preview.local import LocalPreviews
from vouch.daemon.preview.state import PreviewReaper, Reaper
from vouch.daemon.probewatch import Freshness, ProbeWatch
from vouch.daemon.probing import Probing
from vouch.daemon.store.kubernetes import KubernetesStore, KubernetesStoreSpec
from vouch.daemon.store.sqlite import SqliteStore
from vouch.daemon.verification import DeployedAttester, ReleaseVerification
from vouch.loadtests.errors import LoadTestError
from vouch.probes.scheduler import ProbeRun
from vouch.rollout.alarms import Alert, AlertBook
from vouch.rollout.attestations.sources import AttestationSource, DirectorySourceSpec, build_source
from vouch.rollout.attestations.verify import AttestationVerifier, TrustSpec
from vouch.rollout.config import LocalPlatformSpec
from vouch.rollout.engine.driver import DriverSettings
from vouch.rollout.engine.runner import Engine
from vouch.rollout.gates import build_gates
from vouch.rollout.gates.base import Gate
from vouch.rollout.gates.loadtest import LoadTests
from vouch.rollout.gates.scale import ScaleTests
from vouch.rollout.loadtest_kube import KubernetesLocustRunner, connect_runner
from vouch.rollout.metrics import build_providers
from vouch.rollout.metrics.base import MetricProvider
from vouch.rollout.model import Verdict
from vouch.rollout.platforms.base import Platform
from vouch.rollout.platforms.kube.client import KubeApi, KubeApiError, RetryPolicy, connect
from vouch.rollout.platforms.kube.settings import KubernetesPlatformSpec
from vouch.rollout.platforms.kubernetes import KubernetesPlatform
from vouch.rollout.platforms.local import LocalPlatform
from vouch.rollout.platforms.traffic import TrafficRecorder
from vouch.rollout.policy import PolicySpec, RegoPolicySpec, build_policy
from vouch.rollout.policy.base import PolicyEngine
from vouch.rollout.state import AlertRecord, Event, Promotion, StepRecord, Store

log = logging.getLogger("vouch.daemon")


@dataclass(frozen=True)
class DaemonInfo:
    """What a started daemon tells whoever started it."""

    url: str
    token: TokenSource
    state_dir: Path


class _Hooks:
    """Feeds the engine's changes to the metrics, and its events to the log, the audit log and the notifiers."""

    def __init__(self, metrics: DaemonMetrics, flow: EventFlow) -> None:
        self._metrics = metrics
        self._flow = flow

    def on_transition(self, before: Promotion | None, after: Promotion) -> None:
        self._metrics.transition(before, after)

    def on_verdicts(self, promotion: Promotion, verdicts: Sequence[Verdict]) -> None:
        self._metrics.verdicts(verdicts)

    def on_step(self, promotion: Promotion, step: StepRecord) -> None:
        self._metrics.step_finished(step, environment=promotion.environment)

    def on_event(self, event: Event) -> None:
        self._flow(event)


def _gate_factory(
    config: VouchConfig,
    providers: dict[str, MetricProvider],
    alerts: AlertBook,
    probing: Probing,
    loads: LoadTests,
) -> Callable[[Promotion], Sequence[Gate]]:
    def gates_for(promotion: Promotion) -> Sequence[Gate]:
        service = config.services[promotion.service]
        loaded = "loadtest" in promotion.gates and service.performance_critical
        return build_gates(
            promotion.gates,
            slos=service.slos,
            providers=providers,
            alerts=alerts,
            alarms=config.environments[promotion.environment].alarms,
            probes=probing.gate_probes(promotion.service) if "probes" in promotion.gates else (),
            loadtest=loads.gate(service, promotion) if loaded else None,
        )

    return gates_for


async def serve(
    config: VouchConfig,
    *,
    on_ready: Callable[[DaemonInfo], None] | None = None,
    settings: DriverSettings | None = None,
) -> None:
    """Run the daemon until cancelled (SIGTERM and SIGINT cancel it in ``vouch daemon``)."""
    state = config.state_path()
    state.mkdir(parents=True, exist_ok=True)
    token = resolve_token(token_env=config.daemon.token_env, token_file=config.token_path())
    disable_created_metrics()  # type: ignore[no-untyped-call]  # a _created series per counter doubles /metrics for thousands of probes
    registry = CollectorRegistry()
    traffic = TrafficRecorder(registry)
    store = await _open_store(config, state)
    elector = await _elector(config)
    audit = AuditLog.from_spec(
        config.audit,
        state_dir=state,
        signing_key=config.resolve(config.attestations.signing_key) if config.attestations.signing_key else None,
        registry=registry,
    )
    await audit.open()
    audit.record("config.loaded", actor="vouch", data=_config_summary(config))
    dispatcher = build_dispatcher(config.notifications, store=store, registry=registry)
    flow = EventFlow(audit=audit, publisher=dispatcher)
    platform = _platform(config, state=state, traffic=traffic, registry=registry)
    providers = build_providers(config.metric_providers, traffic=traffic)
    alerts = AlertBook()
    alerts.restore(_recorded_alerts(await store.list_alerts(limit=10_000)))
    events = EventSink(store, on_event=flow)
    probing = Probing(config, platform, registry, on_change=lambda run: _probe_changed(events, run))
    trust = _Trust.of(config, store, on_event=flow, registry=registry)
    key = config.resolve(config.attestations.signing_key) if config.attestations.signing_key else None
    scale = ScaleTests(store=store, source=trust.source, signing_key=key, registry=registry)  # knees, signed
    cluster_load = await _cluster_load_runner(config)
    in_cluster = (lambda _spec: cluster_load) if cluster_load is not None else None
    loads = LoadTests(registry=registry, resolve=config.resolve, scale=scale, runner=in_cluster)  # across analyses
    metrics = DaemonMetrics(registry)
    metrics.reset(await store.list_promotions(active=True, limit=100_000))
    engine = Engine(
        store=store,
        platform=platform,
        services=config.services,
        environments=config.environments,
        gates=_gate_factory(config, providers, alerts, probing, loads),
        hooks=_Hooks(metrics, flow),
        settings=settings,
        verifier=trust.verification,
        after_success=trust.attester,
    )
    scope = Scope(config.services, config.environments, config.break_glass)
    controller = DaemonController(
        engine=engine,
        store=store,
        alerts=alerts,
        environments=config.environments,
        metrics=metrics,
        leadership=elector,
        scope=scope,
        on_event=flow,
        notify=flow.notify,
    )
    app = build_app(controller, token=token.token, registry=registry, max_body_bytes=config.daemon.max_body_bytes)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    host, port = config.host_port()
    try:
        await runner.setup()
        await platform.start()
        site = web.TCPSite(runner, host, port)
        await site.start()
        async with asyncio.TaskGroup() as group:
            leading = _leading_tasks(config, engine, probing, providers, registry, events)
            if config.break_glass.directory is not None:
                folder = config.resolve(config.break_glass.directory)
                leading["override-files"] = OverrideFiles(folder, store=store, scope=scope, on_event=flow).run
            if elector is None:
                for name, work in leading.items():
                    group.create_task(work(), name=name)
            else:
                group.create_task(elector.run(), name="leader-election")
                for name, work in leading.items():
                    group.create_task(elector.while_leading(work), name=name)
                label = await _leader_label(config)
                if label is not None:
                    group.create_task(label.run(elector), name="leader-label")
                log.info("taking part in leader election as %s; acting only while leading", elector.identity)
            group.create_task(events.run(), name="events")
            group.create_task(audit.run(), name="audit")
            group.create_task(dispatcher.run(), name="notify")
            if elector is not None:
                await elector.wait_observed()
            if not controller.ready():
                await engine.started.wait()
            url = f"http://{host}:{port}"
            log.info("listening on %s (%s); state in %s", url, "leading" if controller.acting() else "following", state)
            if on_ready is not None:
                on_ready(DaemonInfo(url=url, token=token, state_dir=state))
    finally:
        closers = [loads.aclose, *([cluster_load.aclose] if cluster_load is not None else [])]
        await asyncio.shield(_shutdown(runner, platform, providers, trust, audit, store, closers))


def _config_summary(config: VouchConfig) -> dict[str, object]:
    """What the audit log says about a loaded configuration: which file, its digest, what it governs."""
    source = config.source
    digest = hashlib.sha256(source.read_bytes()).hexdigest() if source is not None and source.is_file() else None
    return {
        "path": str(source) if source is not None else None,
        "sha256": digest,
        "services": sorted(config.services),
        "environments": sorted(config.environments),
        "break_glass_directory": config.break_glass.directory,
        "notifiers": [n.name for n in config.notifications.notifiers],
    }


def _leading_tasks(
    config: VouchConfig,
    engine: Engine,
    probing: Probing,
    providers: dict[str, MetricProvider],
    registry: CollectorRegistry,
    events: EventSink,
) -> dict[str, Callable[[], Coroutine[None, None, None]]]:
    """The work only the leader does, by task name: drive promotions, probe, watch probe series, reap previews."""
    work: dict[str, Callable[[], Coroutine[None, None, None]]] = {"engine": engine.run, "probing": probing.run}
    if config.probe_watch is not None:
        work["probe-watch"] = _watch(config, providers, probing, registry, events).run

    def reaped(name: str) -> None:
        events.emit("preview.reaped", f"preview {name} expired and was removed", {"preview": name})

    work["preview-reaper"] = PreviewReaper(_preview_reapers(config), on_reaped=reaped).run
    return work


def _preview_reapers(config: VouchConfig) -> list[Reaper]:
    """Who removes expired previews every minute: the local ones always; each other kind adds its own here."""
    grace = config.platform.stop_grace if isinstance(config.platform, LocalPlatformSpec) else 5.0
    reapers: list[Reaper] = [LocalPreviews(config.state_path(), stop_grace=grace)]
    if isinstance(config.platform, KubernetesPlatformSpec):
        reapers.append(
            KubePreviews.on_platform(config.platform, config.previews)
        )  # the namespaces of previews in its cluster
    return reapers


async def _leader_label(config: VouchConfig) -> LeaderLabel | None:
    """Marks this daemon's pod while it leads, when it runs in a pod (the chart sets POD_NAME and POD_NAMESPACE)."""
    pod, namespace = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
    if not pod or not namespace:
        return None
    store = config.daemon.store
    context = store.context if isinstance(store, KubernetesStoreSpec) else None
    kubeconfig = store.kubeconfig if isinstance(store, KubernetesStoreSpec) else None
    try:
        api = await connect(context=context, kubeconfig=kubeconfig)
    except KubeApiError as exc:
        raise ConfigError([Problem("<config>", None, "daemon.leader_election", f"no Kubernetes API: {exc}")]) from exc
    return LeaderLabel(KubeApi(api, RetryPolicy()), pod=pod, namespace=namespace)


async def _cluster_load_runner(config: VouchConfig) -> KubernetesLocustRunner | None:
    """Locust in the cluster when configured (``loadtest_runner``); None: a subprocess beside the daemon."""
    spec = config.loadtest_runner
    if spec is None:
        return None
    try:
        return await connect_runner(spec)
    except LoadTestError as exc:
        raise ConfigError([Problem("<config>", None, "loadtest_runner", str(exc))]) from exc


async def _open_store(config: VouchConfig, state: Path) -> SqliteStore | KubernetesStore:
    spec = config.daemon.store
    if isinstance(spec, KubernetesStoreSpec):
        return await KubernetesStore.open(spec)
    return await SqliteStore.open(state / "vouch.db")


async def _elector(config: VouchConfig) -> LeaderElector | None:
    spec = config.daemon.leader_election
    if not spec.enabled:
        return None
    store = config.daemon.store
    context = store.context if isinstance(store, KubernetesStoreSpec) else None
    kubeconfig = store.kubeconfig if isinstance(store, KubernetesStoreSpec) else None
    try:
        api = await connect(context=context, kubeconfig=kubeconfig)
    except KubeApiError as exc:
        raise ConfigError([Problem("<config>", None, "daemon.leader_election", f"no Kubernetes API: {exc}")]) from exc
    return LeaderElector.from_spec(api, spec)


def _platform(
    config: VouchConfig, *, state: Path, traffic: TrafficRecorder, registry: CollectorRegistry
) -> LocalPlatform | KubernetesPlatform:
    if isinstance(config.platform, KubernetesPlatformSpec):
        return KubernetesPlatform(config.platform, config.services)
    return LocalPlatform(config.platform, config.services, state_dir=state, traffic=traffic, registry=registry)


@dataclass
class _Trust:
    """The attestations gate's parts, built once: the source, the verifier, a policy per environment."""

    source: AttestationSource
    verification: ReleaseVerification | None
    attester: DeployedAttester | None
    policies: list[PolicyEngine]

    @classmethod
    def of(
        cls, config: VouchConfig, store: Store, *, on_event: Callable[[Event], None], registry: CollectorRegistry
    ) -> _Trust:
        spec = config.attestations
        if spec.source is None or isinstance(spec.source, DirectorySourceSpec):
            folder = config.state_path() / "attestations" if spec.source is None else config.resolve(spec.source.path)
            source = build_source(DirectorySourceSpec(path=str(folder)))
        else:
            source = build_source(spec.source)
        gated = {name: env for name, env in config.environments.items() if "attestations" in env.gates}
        policies = {name: build_policy(_resolved_policy(config, env.policy)) for name, env in gated.items()}
        verification = None
        if gated:
            verification = ReleaseVerification(
                store=store,
                source=source,
                verifier=AttestationVerifier(_resolved_trust(config, spec.trust)),
                policies=policies,
                settings={name: env.policy_settings for name, env in gated.items()},
                on_event=on_event,
                registry=registry,
            )
        attester = None
        if spec.signing_key is not None:
            attester = DeployedAttester(key=config.resolve(spec.signing_key), source=source)
        return cls(source, verification, attester, list(policies.values()))

    async def close(self) -> None:
        await asyncio.gather(self.source.close(), *(p.close() for p in self.policies))


def _resolved_trust(config: VouchConfig, trust: TrustSpec) -> TrustSpec:
    keys = [key.model_copy(update={"path": str(config.resolve(key.path))}) for key in trust.keys]
    root = str(config.resolve(trust.trusted_root)) if trust.trusted_root else None
    return trust.model_copy(update={"keys": keys, "trusted_root": root})


def _resolved_policy(config: VouchConfig, policy: PolicySpec) -> PolicySpec:
    if isinstance(policy, RegoPolicySpec) and policy.path is not None:
        return policy.model_copy(update={"path": str(config.resolve(policy.path))})
    return policy


def _recorded_alerts(records: list[AlertRecord]) -> list[Alert]:
    """The stored alerts (newest first) as the book's alerts, oldest first, for it to replay."""
    return [
        Alert(
            "firing" if r.status == "firing" else "resolved",
            dict(r.labels),
            dict(r.annotations),
            None,
            None,
            r.fingerprint,
        )
        for r in reversed(records)
    ]


def _probe_changed(events: EventSink, run: ProbeRun) -> None:
    result = run.result
    data = {"probe": result.probe, "target": result.target, **run.labels}
    if run.state.failing:
        reason = result.reason.value if result.reason else "failed"
        events.emit(
            "probe.failing", f"probe {result.probe} is failing on {result.target}: {reason}: {result.message}", data
        )
    else:
        events.emit("probe.recovered", f"probe {result.probe} recovered on {result.target}", data)


def _watch(
    config: VouchConfig,
    providers: dict[str, MetricProvider],
    probing: Probing,
    registry: CollectorRegistry,
    events: EventSink,
) -> ProbeWatch:
    spec = config.probe_watch
    assert spec is not None

    def changed(item: Freshness) -> None:
        data = {"probe": item.probe, "target": item.target, "age": item.age}
        events.emit(f"probe.{item.state}", f"probe {item.probe} on {item.target} is {item.state} in Prometheus", data)

    return ProbeWatch(
        providers[spec.provider],
        lambda: probing.scheduled,
        registry,
        interval=spec.interval,
        stale_after=spec.stale_after,
        on_change=changed,
    )


async def _shutdown(
    runner: web.AppRunner,
    platform: Platform,
    providers: dict[str, MetricProvider],
    trust: _Trust,
    audit: AuditLog,
    store: SqliteStore | KubernetesStore,
    closers: Sequence[Callable[[], Awaitable[None]]],
) -> None:
    closing = [*(p.close for p in providers.values()), trust.close, audit.close, store.close]
    steps = [runner.cleanup, *closers, platform.stop, *closing]
    for step in steps:
        try:
            await step()
        except Exception:
            log.exception("error while shutting down (%s); continuing", getattr(step, "__qualname__", step))
