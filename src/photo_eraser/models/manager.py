"""Known model files: manifest, install check, download (``pull``) and ``import``.

A model is installed when ``MODEL_DIR/<file>`` exists with the manifest's size. Files only
reach that name by an atomic rename after their size and SHA-256 were checked, except for
``import --no-verify``, which leaves a ``<file>.unverified`` marker so that a file of another
size (a different export the user trusts) still counts as installed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

MANIFEST_ENV = "PHOTO_ERASER_MODEL_MANIFEST"
"""Path of a JSON file whose entries are added to (or replace) the built-in manifest."""

PART_SUFFIX = ".part"
UNVERIFIED_SUFFIX = ".unverified"
_CHUNK = 1024 * 1024


class ModelError(Exception):
    """A model cannot be listed, downloaded or installed. The message is for users."""


@dataclass(frozen=True)
class ModelSpec:
    """One manifest entry: which file, how big, its checksum, license and source URL."""

    name: str
    file: str
    size: int
    sha256: str
    license: str
    url: str
    description: str = ""


@dataclass(frozen=True)
class ModelStatus:
    """A manifest entry and its state in one model directory."""

    spec: ModelSpec
    installed: bool
    path: Path | None
    verified: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self.spec),
            "installed": self.installed,
            "path": str(self.path) if self.path else None,
            "verified": self.verified,
        }


def _parse_manifest(data: Any, source: str) -> dict[str, ModelSpec]:
    if not isinstance(data, dict):
        raise ModelError(f"model manifest {source} must be a JSON object of name -> entry")
    specs = {}
    for name, entry in data.items():
        try:
            spec = ModelSpec(
                name=name,
                file=str(entry["file"]),
                size=int(entry["size"]),
                sha256=str(entry["sha256"]).lower(),
                license=str(entry["license"]),
                url=str(entry["url"]),
                description=str(entry.get("description", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model manifest {source}: bad entry {name!r} ({exc!r})") from exc
        if Path(spec.file).name != spec.file or spec.file.startswith("."):
            raise ModelError(f"model manifest {source}: entry {name!r} has a bad file name")
        specs[name] = spec
    return specs


def load_manifest(extra: Path | None = None) -> dict[str, ModelSpec]:
    """The built-in manifest, updated with ``extra`` (default: ``$PHOTO_ERASER_MODEL_MANIFEST``)."""
    text = resources.files("photo_eraser.models").joinpath("manifest.json").read_text("utf-8")
    specs = _parse_manifest(json.loads(text), "manifest.json")
    if extra is None and os.environ.get(MANIFEST_ENV):
        extra = Path(os.environ[MANIFEST_ENV])
    if extra is not None:
        try:
            data = json.loads(extra.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read model manifest {extra}: {exc}") from exc
        specs.update(_parse_manifest(data, str(extra)))
    return specs


def get_spec(name: str, manifest: Mapping[str, ModelSpec] | None = None) -> ModelSpec:
    """The manifest entry for ``name``; ``ModelError`` naming the known models otherwise."""
    specs = load_manifest() if manifest is None else manifest
    try:
        return specs[name]
    except KeyError:
        known = ", ".join(sorted(specs)) or "none"
        raise ModelError(f"unknown model {name!r}; known models: {known}") from None


def installed_path(
    name: str, model_dir: Path, manifest: Mapping[str, ModelSpec] | None = None
) -> Path | None:
    """Where model ``name`` is installed in ``model_dir``, or ``None``. Cheap: no hashing."""
    specs = load_manifest() if manifest is None else manifest
    spec = specs.get(name)
    if spec is None:
        return None
    path = Path(model_dir) / spec.file
    try:
        size = path.stat().st_size
    except OSError:
        return None
    if size == spec.size or _marker(path).exists():
        return path
    return None


def list_models(
    model_dir: Path, manifest: Mapping[str, ModelSpec] | None = None
) -> list[ModelStatus]:
    """Every manifest entry with whether (and where) it is installed in ``model_dir``."""
    specs = load_manifest() if manifest is None else manifest
    statuses = []
    for name in sorted(specs):
        path = installed_path(name, model_dir, specs)
        verified = path is not None and not _marker(path).exists()
        statuses.append(ModelStatus(specs[name], path is not None, path, verified))
    return statuses


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path, spec: ModelSpec) -> None:
    """Raise ``ModelError`` unless ``path`` has the manifest's size and SHA-256."""
    size = path.stat().st_size
    if size != spec.size:
        raise ModelError(f"{path} has {size} bytes, expected {spec.size} for model {spec.name!r}")
    digest = sha256_file(path)
    if digest != spec.sha256:
        raise ModelError(
            f"{path} has SHA-256 {digest}, expected {spec.sha256} for model {spec.name!r}"
        )


def pull(
    name: str,
    model_dir: Path,
    *,
    progress: bool = True,
    manifest: Mapping[str, ModelSpec] | None = None,
    timeout: float = 30.0,
    on_progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Download model ``name`` into ``model_dir``; return its path.

    Resumable: bytes already in ``<file>.part`` are kept when a download is interrupted and
    requested with an HTTP Range next time. A size or checksum mismatch deletes the part file.
    An installed model is returned as is, unless it was imported without verification: then
    the download replaces it. One download per model directory at a time: a second ``pull``
    (the CLI beside a server's auto-pull) waits for the first and then finds it installed.

    ``on_progress(bytes_done, bytes_total)`` is called after every chunk; an exception it
    raises stops the download, keeping the part file for the next ``pull``.
    """
    spec = get_spec(name, manifest)
    model_dir = Path(model_dir)
    existing = installed_path(name, model_dir, {name: spec})
    if existing is not None and not _marker(existing).exists():
        return existing
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create model directory {model_dir}: {exc}") from exc
    with _locked(model_dir):
        return _pull_locked(spec, model_dir, progress, timeout, on_progress)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``directory`` itself (no lock file is left behind; the
    kernel releases it if the process dies)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError as exc:
        raise ModelError(f"cannot open {directory}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _pull_locked(
    spec: ModelSpec,
    model_dir: Path,
    progress: bool,
    timeout: float,
    on_progress: Callable[[int, int], None] | None,
) -> Path:
    name = spec.name
    dest = model_dir / spec.file
    existing = installed_path(name, model_dir, {name: spec})
    if existing is not None and not _marker(existing).exists():
        return existing  # another process installed it while we waited for the lock
    part = model_dir / (spec.file + PART_SUFFIX)
    have = part.stat().st_size if part.exists() else 0
    if have > spec.size:
        part.unlink()
        have = 0
    if have < spec.size:
        _download(spec, part, have, progress=progress, timeout=timeout, on_progress=on_progress)
    try:
        verify_file(part, spec)
    except ModelError as exc:
        part.unlink(missing_ok=True)
        raise ModelError(
            f"download of model {name!r} from {spec.url} failed verification and was deleted: {exc}"
        ) from exc
    os.replace(part, dest)
    _marker(dest).unlink(missing_ok=True)
    return dest


def import_model(
    name: str,
    source: Path,
    model_dir: Path,
    *,
    verify: bool = True,
    manifest: Mapping[str, ModelSpec] | None = None,
) -> Path:
    """Install a file the user already has as model ``name``; return the installed path.

    With ``verify`` (the default) the file must match the manifest's size and SHA-256.
    The copy goes through a temporary file in ``model_dir`` and an atomic rename.
    """
    spec = get_spec(name, manifest)
    source = Path(source)
    if not source.is_file():
        raise ModelError(f"{source} is not a file")
    if verify:
        verify_file(source, spec)
    model_dir = Path(model_dir)
    dest = model_dir / spec.file
    tmp = model_dir / (spec.file + ".import")
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, tmp)
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"cannot install {source} into {model_dir}: {exc}") from exc
    marker = _marker(dest)
    if verify:
        marker.unlink(missing_ok=True)
    else:
        marker.write_text(f"imported without verification from {source}\n", "utf-8")
    return dest


def _marker(path: Path) -> Path:
    return path.with_name(path.name + UNVERIFIED_SUFFIX)


def _download(
    spec: ModelSpec,
    part: Path,
    have: int,
    *,
    progress: bool,
    timeout: float,
    on_progress: Callable[[int, int], None] | None = None,
) -> None:
    """Append ``spec.url`` to ``part`` from byte ``have``; keep the part file on network errors."""
    headers = {"User-Agent": "photo-eraser"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        with (
            httpx.Client(
                follow_redirects=True, timeout=httpx.Timeout(timeout, connect=10.0)
            ) as client,
            client.stream("GET", spec.url, headers=headers) as response,
        ):
            if have and response.status_code == 206 and _range_start(response) == have:
                mode = "ab"
            elif response.status_code == 200:
                mode, have = "wb", 0
            elif response.status_code in (206, 416):
                part.unlink(missing_ok=True)
                raise ModelError(
                    f"the server of {spec.url} cannot resume the partial download "
                    f"(HTTP {response.status_code}); it was deleted, run the command again"
                )
            else:
                raise ModelError(
                    f"download of model {spec.name!r} from {spec.url} failed: "
                    f"HTTP {response.status_code}"
                )
            with (
                open(part, mode) as f,
                tqdm(
                    total=spec.size,
                    initial=have,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=spec.file,
                    disable=not progress,
                ) as bar,
            ):
                for chunk in response.iter_bytes():
                    have += len(chunk)
                    if have > spec.size:
                        break
                    f.write(chunk)
                    bar.update(len(chunk))
                    if on_progress is not None:
                        on_progress(have, spec.size)
                f.flush()
                os.fsync(f.fileno())
    except httpx.HTTPError as exc:
        raise ModelError(
            f"download of model {spec.name!r} from {spec.url} was interrupted ({exc!r}); "
            "run the same command again to resume"
        ) from exc
    except OSError as exc:
        raise ModelError(f"cannot write {part}: {exc}") from exc
    if have > spec.size:
        part.unlink(missing_ok=True)
        raise ModelError(
            f"download of model {spec.name!r} from {spec.url} is larger than the expected "
            f"{spec.size} bytes; the partial file was deleted"
        )


def _range_start(response: httpx.Response) -> int | None:
    """First byte of a 206 response, from ``Content-Range: bytes START-END/TOTAL``."""
    value = response.headers.get("Content-Range", "")
    unit, _, rest = value.partition(" ")
    start = rest.partition("-")[0]
    return int(start) if unit == "bytes" and start.isdigit() else None
