"""This library's files: safetensors with JSON metadata that names the file's kind, written atomically and in a
canonical byte order, and read back only as the kind the reader expects.

Every writer (`save`) stores `kind` in the metadata; every reader (`read`) identifies what it was given, so a file of
another kind is refused with its loader named ("this is an AMED predictor file: load it with fd.amed.load(path)")
instead of failing inside a constructor. Files written before the kind was recorded are recognised by their metadata
keys (`Kind.legacy`).

Bytes are canonical: the header's keys sorted, so the same tensors and metadata make the same file in any process
(safetensors itself writes the metadata in hash-map order, which differs between processes).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import Tensor

from .checks import describe

HEADER_ALIGNMENT = 8  # safetensors pads its JSON header with spaces to this many bytes


@dataclass(frozen=True)
class Kind:
    """One kind of file: the `kind` metadata value, what it is in words, how to load it, the tensors and metadata
    keys every such file has, and how a file written before the kind was recorded is recognised (from its decoded
    metadata and tensor names)."""

    key: str
    what: str
    loader: str
    legacy: Callable[[dict[str, Any], set[str]], bool] = lambda metadata, tensors: False
    tensors: frozenset[str] = frozenset()
    metadata: frozenset[str] = frozenset()


def damaged(path: str | Path, kind: Kind, reason: str) -> ValueError:
    """The error for a file of the right kind whose contents are not what the kind holds."""
    return ValueError(f"path {str(path)!r} is {kind.what} file that is damaged: {reason}")


def _objective(metadata: dict[str, Any]) -> str | None:
    return metadata.get("objective", "ddpm") if "config" in metadata and "schedule" in metadata else None


UNET_METADATA = frozenset({"config", "schedule"})
DIGITS_UNET = Kind("fused_diffusion.zoo.digits_unet", "a digits U-Net (epsilon prediction)",
                   "fd.zoo.digits(path=path)", lambda m, t: _objective(m) == "ddpm", metadata=UNET_METADATA)
SHORTCUT_UNET = Kind("fused_diffusion.zoo.shortcut_unet", "a shortcut digits U-Net",
                     "fd.zoo.digits_shortcut(path=path)", lambda m, t: _objective(m) == "shortcut",
                     metadata=UNET_METADATA)
FLOW_UNET = Kind("fused_diffusion.zoo.flow_unet", "a flow-matching digits U-Net",
                 "fd.zoo.digits_shortcut(objective='flow', path=path)", lambda m, t: _objective(m) == "flow",
                 metadata=UNET_METADATA)
DISTILLED_METADATA = UNET_METADATA | {"distillation"}
CONSISTENCY_UNET = Kind("fused_diffusion.zoo.consistency_unet", "a consistency-distilled digits U-Net",
                        "fd.zoo.digits_consistency(path=path)", metadata=DISTILLED_METADATA)
PCM_UNET = Kind("fused_diffusion.zoo.pcm_unet", "a phased-consistency-distilled digits U-Net",
                "fd.zoo.digits_pcm(path=path)", metadata=DISTILLED_METADATA)
CLASSIFIER = Kind("fused_diffusion.zoo.digits_classifier", "the digits metric's classifier",
                  "fused_diffusion.zoo.classifier.load_classifier(path)",
                  lambda m, t: set(m) == {"info"} and "heldout_accuracy" in (m["info"] or {}))
AMED_PREDICTOR = Kind("fused_diffusion.amed.Predictor", "an AMED predictor", "fd.amed.load(path)",
                      lambda m, t: {"student", "config"} <= set(m), frozenset({"sigmas"}),
                      frozenset({"config", "student", "afs", "max_order"}))
GAMMA_ESTIMATE = Kind("fused_diffusion.analytic_dpm.GammaEstimate", "an Analytic-DPM Γ estimate",
                      "fd.analytic_dpm.GammaEstimate.load(path)", tensors=frozenset({"timesteps", "gamma", "stderr"}),
                      metadata=frozenset({"samples"}))
SHARD_METADATA = frozenset({"index", "seed", "samples", "digest"})
GENERATE_SHARD = Kind("fused_diffusion.generate.shard", "a shard of `python -m fused_diffusion generate`",
                      "safetensors.torch.load_file(path)['images']", lambda m, t: SHARD_METADATA <= set(m),
                      frozenset({"images"}), SHARD_METADATA)
KINDS = (DIGITS_UNET, SHORTCUT_UNET, FLOW_UNET, CONSISTENCY_UNET, PCM_UNET, CLASSIFIER, AMED_PREDICTOR, GAMMA_ESTIMATE, GENERATE_SHARD)


def identify(metadata: dict[str, Any], tensors: set[str]) -> Kind | None:
    """The kind of a file with this (decoded) metadata and these tensor names, or None for a foreign file."""
    recorded = metadata.get("kind")
    if recorded is not None:
        return next((kind for kind in KINDS if kind.key == recorded), None)
    return next((kind for kind in KINDS if kind.legacy(metadata, tensors)), None)


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """`write(temporary path)`, then os.replace onto `path`: a reader (or a killed run) never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def canonical_bytes(tensors: dict[str, Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file's bytes with the header's keys sorted (safetensors' own order of metadata keys varies
    between processes; the data section is already in a fixed order)."""
    from safetensors.torch import save

    data = save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata=metadata)
    length = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + length]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % HEADER_ALIGNMENT)
    return len(header).to_bytes(8, "little") + header + data[8 + length :]


def save(path: str | Path, tensors: dict[str, Tensor], kind: Kind, **metadata: Any) -> None:
    """Writes `tensors` with `kind` and each metadata value stored as JSON, atomically and canonically."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise TypeError(f"path must be a file path (str or os.PathLike), got {describe(path)}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"path {str(path)!r} is a folder; give a file name to write {kind.what} file to")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"path {str(path)!r}: the folder {str(path.parent)!r} does not exist")
    encoded = {k: json.dumps(v, sort_keys=True) for k, v in {**metadata, "kind": kind.key}.items()}
    data = canonical_bytes(tensors, encoded)
    write_atomically(Path(path), lambda temporary: temporary.write_bytes(data))


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:  # files written before values were JSON (raw strings)
        return value


def read_any(path: str | Path, reading: str = "file") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, decoded metadata) of a safetensors file; an error naming `path` when there is none or it is not
    a safetensors file. `reading` names what the caller wanted, for the messages."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path (str or os.PathLike), got {describe(path)}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"path {str(path)!r} is a folder, not {reading}")
    if not path.is_file():
        raise FileNotFoundError(f"path {str(path)!r}: no such file (expected {reading})")
    try:
        from safetensors import safe_open
    except ImportError as e:
        raise ImportError("this library's files are safetensors files: pip install safetensors") from e
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = {k: _decode(v) for k, v in (f.metadata() or {}).items()}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for each kind of damage
        raise ValueError(f"path {str(path)!r} is not a readable safetensors file ({type(e).__name__}: {e}); it is "
                         f"damaged or of another format (expected {reading})") from e
    return tensors, metadata


def read(path: str | Path, kind: Kind) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, decoded metadata) of a file of `kind`; a file of another of this library's kinds is refused with
    its own loader named, a foreign safetensors file as such."""
    tensors, metadata = read_any(path, kind.what + " file")
    found = identify(metadata, set(tensors))
    if found is kind:
        missing = sorted(kind.tensors - set(tensors)) + sorted(kind.metadata - set(metadata))
        if missing:
            raise damaged(path, kind, f"it lacks {missing}")
        return tensors, metadata
    if found is None:
        raise ValueError(f"path {str(path)!r} is a safetensors file but not {kind.what} file written by this library "
                         f"(metadata keys {sorted(metadata)}, {len(tensors)} tensors); it cannot be loaded here")
    raise ValueError(f"path {str(path)!r} is {found.what} file, not {kind.what} file: load it with {found.loader}")
