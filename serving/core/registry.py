"""The model registry: what the repository holds, which versions are loaded, and their state.

One model folder that cannot be served (malformed model.json, missing files, a model.json the
file contradicts, a failed load) takes down only that model or version: it is recorded with its
reason (RepositoryIndex, readiness, the log) and the others serve. Whether the server may start
with what loaded is the server's call (`problems()`). New versions found by `refresh()` load
beside the old ones and take over once ready; the old ones then drain and unload, so a hot reload
drops no request. A version that failed is retried when its files or model.json change.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mimo.protos.repository import (
    MODEL_JSON,
    ModelSpec,
    RepositoryError,
    model_dirs,
    read_model_document,
    version_dirs,
)
from mimo.serving.core.backends import Backend, BackendOptions
from mimo.serving.core.errors import InvalidArgument, NotFound, PermissionDenied, ServingError, Unavailable
from mimo.serving.core.loader import choose_backend, describe_contract, load_version
from mimo.serving.core.memory import release_freed_memory
from mimo.serving.core.scheduler import Scheduler, SchedulerOptions
from mimo.serving.settings import ServerSettings
from mimo.serving.core.statistics import ModelStats

log = logging.getLogger("mimo.serving")

READY, LOADING, UNAVAILABLE, UNLOADING = "READY", "LOADING", "UNAVAILABLE", "UNLOADING"


@dataclass
class ModelVersion:
    model: str
    version: int
    path: Path
    backend_kind: str = ""
    state: str = LOADING
    reason: str = ""
    spec: ModelSpec | None = None  # the contract, once loaded (model.json completed from the file)
    backend: Backend | None = None
    scheduler: Scheduler | None = None
    stats: ModelStats | None = None
    fingerprint: tuple = ()  # of model.json and the version folder when it was loaded

    @property
    def name(self) -> str:
        return self.model


@dataclass
class ModelEntry:
    name: str
    path: Path
    document: dict[str, Any] | None = None  # model.json as read (partial or {"name"}); None if unreadable
    reason: str = ""  # why the model (not one version) cannot be served, or serves stale versions
    versions: dict[int, ModelVersion] = field(default_factory=dict)


def wanted_versions(policy: dict[str, Any], available: list[int]) -> list[int]:
    """Versions to serve under the model's version policy (default: the newest one)."""
    if policy.get("all"):
        return sorted(available)
    if "specific" in policy:
        return sorted(v for v in available if v in set(policy["specific"]))
    return sorted(available)[-int(policy.get("latest", 1)):]


def fingerprint(model_dir: Path, version_dir: Path) -> tuple:
    """Changes when model.json or the version folder's entries change (a fixed folder is retried)."""
    try:
        paths = [model_dir / MODEL_JSON, version_dir, *sorted(version_dir.iterdir())]
    except OSError:  # the folder went away while we looked
        return ()
    stamps = []
    for path in paths:
        try:
            stat = path.stat()
            stamps.append((path.name, stat.st_mtime_ns, stat.st_size))
        except OSError:
            stamps.append((path.name, None, None))
    return tuple(stamps)


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
            # ASCII digits only: "²".isdigit() holds (int() then raises), and int("١") is 1.
            if not (version.isascii() and version.isdigit()) or int(version) not in entry.versions:
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

    def problems(self) -> list[str]:
        """Every model and version that is not ready, with its reason (for a refused start)."""
        found = []
        for name, entry in sorted(self.models.items()):
            if entry.reason:
                found.append(f"model {name}: {entry.reason}")
            found += [f"model {name} version {n}: {mv.state.lower()}: {mv.reason}"
                      for n, mv in sorted(entry.versions.items()) if mv.state != READY]
        return found

    # -- loading ------------------------------------------------------------------------------

    async def load_all(self) -> None:
        """Load every model folder; RepositoryError only when the repository folder is missing."""
        for name, path in model_dirs(self.root).items():
            await self._sync_model(name, path)

    async def refresh(self) -> None:
        """Pick up new, changed and removed versions and new or fixed model folders (hot reload)."""
        async with self._refresh_lock:
            try:
                found = model_dirs(self.root)
            except RepositoryError as exc:
                log.error("repository poll: %s", exc)
                return
            for name, path in found.items():
                await self._sync_model(name, path)

    async def load_model(self, name: str) -> None:
        """Load the repository folder `name` (RepositoryModelLoad); its READY versions are kept."""
        path = self._model_folder(name)
        # One repository change at a time (loads, unloads and polls): concurrent loads cannot stack
        # up copies, and a second load of a model finds the first one's versions and keeps them.
        async with self._refresh_lock:
            entry = await self._sync_model(name, path, force=True)
        if not any(mv.state == READY for mv in entry.versions.values()):
            raise Unavailable(f"model '{name}' could not be loaded" + _reasons(entry))

    async def unload_model(self, name: str) -> None:
        async with self._refresh_lock:
            entry = self.models.get(name)
            if entry is None:
                raise NotFound(f"unknown model '{name}'")
            for mv in list(entry.versions.values()):
                await self._retire(entry, mv)

    def _model_folder(self, name: str) -> Path:
        """The repository's folder for model `name`: one of its folders by plain name, inside it.

        Registry entries are keyed by that name, so a model has one name and one loaded copy: a
        path, '..' or another spelling of a folder is refused, never loaded beside it.
        """
        try:
            folders = model_dirs(self.root)
        except RepositoryError as exc:
            raise Unavailable(str(exc)) from None
        path = folders.get(name)
        if path is None:
            if not name or name != Path(name).name or name in (".", "..") or "\\" in name or "\0" in name:
                raise InvalidArgument(f"model name {name!r} is not a folder name: load a model by the name of "
                                      f"its folder in the repository (e.g. 'mlp'), not by a path")
            raise NotFound(f"no model '{name}' in the repository")
        root = self.root.resolve()
        if not path.resolve().is_relative_to(root):
            raise PermissionDenied(f"model folder '{name}' links outside the repository ({root}): not loaded")
        return path

    async def _sync_model(self, name: str, path: Path, force: bool = False) -> ModelEntry:
        entry = self.models.setdefault(name, ModelEntry(name, path))
        try:
            entry.document = read_model_document(path)
        except RepositoryError as exc:
            # Versions loaded from the previous model.json keep serving until it is fixed.
            self._report(entry, str(exc) + (" (serving the versions loaded before)" if entry.versions else ""))
            return entry
        self._report(entry, await self._sync_versions(entry, force))
        return entry

    @staticmethod
    def _report(entry: ModelEntry, reason: str) -> None:
        """Record why a model cannot be served; log it once, not on every repository poll."""
        if reason and reason != entry.reason:
            log.error("model %s not served: %s", entry.name, reason)
        entry.reason = reason

    async def _sync_versions(self, entry: ModelEntry, force: bool = False) -> str:
        """Load wanted versions, retire replaced ones; returns why the model has none to load, or ""."""
        available = version_dirs(entry.path)
        wanted = wanted_versions(entry.document.get("version_policy", {}), list(available))
        reason = "" if wanted else (
            f"no version folders (1/, 2/, ...) in {entry.path}" if not available else
            f"no version folder matches the version policy {entry.document['version_policy']}")
        for number in wanted:
            known = entry.versions.get(number)
            stamp = fingerprint(entry.path, available[number])
            if known is None or (known.state == UNAVAILABLE and (force or known.fingerprint != stamp)):
                entry.versions[number] = await self._load_version(entry.document, number, available[number])
                entry.versions[number].fingerprint = stamp
        for number in [n for n in entry.versions if n not in wanted]:
            if self._has_ready_replacement(entry, number):
                await self._retire(entry, entry.versions[number])
        return reason

    @staticmethod
    def _has_ready_replacement(entry: ModelEntry, number: int) -> bool:
        return any(mv.state == READY for n, mv in entry.versions.items() if n != number)

    async def _load_version(self, document: dict, number: int, path: Path) -> ModelVersion:
        mv = ModelVersion(document["name"], number, path)
        options = BackendOptions(device=self.settings.device, intra_op_threads=self.settings.intra_op_threads)
        try:
            mv.backend_kind = choose_backend(document, number, path, self.settings.backend)
            loaded = await asyncio.to_thread(load_version, mv.backend_kind, document, number, path, options)
        except ServingError as exc:
            return self._failed(mv, exc.message)
        mv.spec, mv.backend = loaded.spec, loaded.backend
        mv.stats = ModelStats(mv.name, str(number))
        mv.scheduler = Scheduler(mv.backend, mv.stats, self._scheduler_options(mv.spec), mv.name)
        mv.state = READY
        log.info("model %s version %s ready on %s (%s) in %.2f s", mv.name, number, mv.backend_kind,
                 ", ".join(mv.backend.devices()), loaded.seconds)
        if loaded.derived:
            log.info("model %s version %s: derived from %s: %s", mv.name, number, mv.backend.model_file,
                     describe_contract(mv.spec, loaded.derived))
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
            release_freed_memory()
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
    reasons = [entry.reason] if entry.reason else []
    reasons += [f"version {n}: {mv.reason}" for n, mv in entry.versions.items() if mv.reason]
    return (" (" + "; ".join(reasons) + ")") if reasons else ""
