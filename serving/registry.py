"""The model registry: what the repository holds, which versions are loaded, and their state.

A malformed model.json is a configuration error and stops the server at start (the operator must
fix it); a version whose files fail to load is reported not ready and the other models serve on.
New versions found by `refresh()` load beside the old ones and take over once ready; the old ones
then drain and unload, so a hot reload drops no request.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from mimo.protos.repository import (
    ModelSpec,
    RepositoryError,
    check_version_layout,
    model_dirs,
    read_model_json,
    version_dirs,
)
from mimo.serving.backends import Backend, BackendOptions, create_backend
from mimo.serving.errors import NotFound, Unavailable
from mimo.serving.scheduler import Scheduler, SchedulerOptions
from mimo.serving.settings import ServerSettings
from mimo.serving.statistics import ModelStats

log = logging.getLogger("mimo.serving")

READY, LOADING, UNAVAILABLE, UNLOADING = "READY", "LOADING", "UNAVAILABLE", "UNLOADING"


@dataclass
class ModelVersion:
    spec: ModelSpec
    version: int
    path: Path
    backend_kind: str
    state: str = LOADING
    reason: str = ""
    backend: Backend | None = None
    scheduler: Scheduler | None = None
    stats: ModelStats | None = None

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class ModelEntry:
    spec: ModelSpec
    path: Path
    versions: dict[int, ModelVersion] = field(default_factory=dict)


def wanted_versions(spec: ModelSpec, available: list[int]) -> list[int]:
    """Versions to serve under the model's version policy (default: the newest one)."""
    policy = spec.version_policy
    if policy.get("all"):
        return sorted(available)
    if "specific" in policy:
        return sorted(v for v in available if v in set(policy["specific"]))
    return sorted(available)[-int(policy.get("latest", 1)):]


class Registry:
    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.root = settings.model_repository
        self.models: dict[str, ModelEntry] = {}
        self._refresh_lock = asyncio.Lock()

    # -- lookups (hot path) -------------------------------------------------------------------

    def get(self, name: str, version: str = "") -> ModelVersion:
        entry = self.models.get(name)
        if entry is None:
            raise NotFound(f"unknown model '{name}'")
        if version:
            if not version.isdigit() or int(version) not in entry.versions:
                served = ", ".join(str(v) for v in entry.versions) or "none"
                raise NotFound(f"model '{name}' has no version '{version}' (served: {served})")
            found = entry.versions[int(version)]
            if found.state != READY:
                raise Unavailable(f"model '{name}' version {version} is {found.state.lower()}: {found.reason}")
            return found
        for number in sorted(entry.versions, reverse=True):
            if entry.versions[number].state == READY:
                return entry.versions[number]
        raise Unavailable(f"model '{name}' has no ready version" + _reasons(entry))

    def ready_versions(self) -> list[ModelVersion]:
        return [mv for e in self.models.values() for mv in e.versions.values() if mv.state == READY]

    def is_model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
            return True
        except (NotFound, Unavailable):
            return False

    # -- loading ------------------------------------------------------------------------------

    def scan(self) -> dict[str, tuple[ModelSpec, Path]]:
        """Read every model.json; RepositoryError names the first malformed one."""
        found = {}
        for name, path in model_dirs(self.root).items():
            found[name] = (read_model_json(path), path)
        if not found:
            raise RepositoryError(f"model repository {self.root} holds no models")
        return found

    async def load_all(self) -> None:
        for name, (spec, path) in self.scan().items():
            self.models[name] = ModelEntry(spec, path)
            await self._sync_versions(self.models[name])

    async def refresh(self) -> None:
        """Pick up new, changed and removed versions (hot reload); a bad model.json is logged."""
        async with self._refresh_lock:
            try:
                found = {name: path for name, path in model_dirs(self.root).items()}
            except RepositoryError as exc:
                log.error("repository poll: %s", exc)
                return
            for name, path in found.items():
                try:
                    spec = read_model_json(path)
                except RepositoryError as exc:
                    log.error("repository poll: %s (keeping what is loaded)", exc)
                    continue
                entry = self.models.setdefault(name, ModelEntry(spec, path))
                entry.spec = spec
                await self._sync_versions(entry)

    async def load_model(self, name: str) -> None:
        path = self.root / name
        if not path.is_dir():
            raise NotFound(f"no model '{name}' in the repository")
        try:
            spec = read_model_json(path)
        except RepositoryError as exc:
            raise Unavailable(str(exc)) from None
        entry = self.models.setdefault(name, ModelEntry(spec, path))
        entry.spec = spec
        await self._sync_versions(entry)

    async def unload_model(self, name: str) -> None:
        entry = self.models.get(name)
        if entry is None:
            raise NotFound(f"unknown model '{name}'")
        for mv in list(entry.versions.values()):
            await self._retire(entry, mv)

    async def _sync_versions(self, entry: ModelEntry) -> None:
        available = version_dirs(entry.path)
        wanted = wanted_versions(entry.spec, list(available))
        if not wanted:
            log.warning("model %s: no version folders in %s", entry.spec.name, entry.path)
        for number in wanted:
            if number not in entry.versions or entry.versions[number].state == UNAVAILABLE:
                entry.versions[number] = await self._load_version(entry.spec, number, available[number])
        for number in [n for n in entry.versions if n not in wanted]:
            if self._has_ready_replacement(entry, number):
                await self._retire(entry, entry.versions[number])

    @staticmethod
    def _has_ready_replacement(entry: ModelEntry, number: int) -> bool:
        return any(mv.state == READY for n, mv in entry.versions.items() if n != number)

    async def _load_version(self, spec: ModelSpec, number: int, path: Path) -> ModelVersion:
        kind = spec.backend or self.settings.backend
        mv = ModelVersion(spec, number, path, kind)
        formats = spec.versions.get(number, {}).get("formats")
        problems = check_version_layout(path, ["onnx" if kind == "onnxruntime" else "savedmodel"])
        if formats is not None and ("onnx" if kind == "onnxruntime" else "savedmodel") not in formats:
            problems.append(f"{path}: model.json lists formats {formats}, not what backend {kind} needs")
        if problems:
            return self._failed(mv, "; ".join(problems))
        options = BackendOptions(device=self.settings.device, intra_op_threads=self.settings.intra_op_threads)
        try:
            backend = create_backend(kind, path, spec, options)
            await asyncio.to_thread(backend.load)
        except Exception as exc:  # noqa: BLE001 - any load failure makes this version not ready
            return self._failed(mv, f"{kind} could not load {path}: {type(exc).__name__}: {exc}")
        mv.backend = backend
        mv.stats = ModelStats(spec.name, str(number))
        mv.scheduler = Scheduler(backend, mv.stats, self._scheduler_options(spec), spec.name)
        mv.state = READY
        log.info("model %s version %s ready on %s (%s)", spec.name, number, kind, ", ".join(backend.devices()))
        return mv

    def _scheduler_options(self, spec: ModelSpec) -> SchedulerOptions:
        batching = spec.batching
        return SchedulerOptions(
            instances=self.settings.executions_per_model,
            batching=self.settings.batching and batching.get("enabled", True) and spec.max_batch_size > 1,
            max_batch_size=max(1, spec.max_batch_size),
            max_queue_delay_s=batching.get("max_queue_delay_ms", self.settings.max_queue_delay_ms) / 1000,
            max_queue_size=batching.get("max_queue_size", self.settings.max_queue_size),
            padding=padding_of(spec),
            execution=self.settings.execution,
        )

    @staticmethod
    def _failed(mv: ModelVersion, reason: str) -> ModelVersion:
        mv.state, mv.reason = UNAVAILABLE, reason[:500]
        log.error("model %s version %s not ready: %s", mv.name, mv.version, mv.reason)
        return mv

    async def _retire(self, entry: ModelEntry, mv: ModelVersion) -> None:
        mv.state = UNLOADING
        if mv.scheduler is not None:
            await mv.scheduler.drain(self.settings.grace_seconds)
            mv.scheduler.close()
        if mv.backend is not None:
            mv.backend.unload()
        entry.versions.pop(mv.version, None)
        log.info("model %s version %s unloaded", mv.name, mv.version)

    async def close(self) -> None:
        for entry in self.models.values():
            for mv in list(entry.versions.values()):
                if mv.scheduler is not None:
                    await mv.scheduler.drain(self.settings.grace_seconds)
                    mv.scheduler.close()


def padding_of(spec: ModelSpec) -> dict[str, float]:
    """model.json `batching.padding` (input -> pad value), where right-padding axis 1 is exact.

    Padding changes a sequence input's length, so it is only used when no output has a dynamic
    dimension after the batch axis (such an output would come back padded too).
    """
    padding = dict(spec.batching.get("padding", {}))
    if padding and any(-1 in t.shape[1:] for t in spec.outputs):
        log.warning("model %s: batching.padding ignored (an output has a dynamic dimension)", spec.name)
        return {}
    return padding


def _reasons(entry: ModelEntry) -> str:
    reasons = [f"version {n}: {mv.reason}" for n, mv in entry.versions.items() if mv.reason]
    return (" (" + "; ".join(reasons) + ")") if reasons else ""
