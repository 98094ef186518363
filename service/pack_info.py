"""What the configured model pack offers, read from its manifest.json (no torch in the API process)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from service.errors import ApiError
from service.schemas import AttributePublic, EditDefaults, ModelPublic


def read_model_info(pack_path: Path) -> ModelPublic:
    """Summarise a pack's manifest. Hashes and tensors are checked by the workers that load it.

    The summary is parsed once per version of the manifest (its path, modification time and size), so
    a request costs one `stat`, and a replaced pack is seen at once.

    Raises:
        ApiError: 503 `pack_unavailable` when the manifest is missing or unreadable.
    """
    manifest_path = pack_path / "manifest.json"
    try:
        stat = manifest_path.stat()
    except FileNotFoundError as exc:
        raise ApiError(503, "pack_unavailable", f"no model pack at {pack_path}") from exc
    except OSError as exc:
        raise ApiError(
            503, "pack_unavailable", f"the model pack manifest {manifest_path} is unreadable: {exc}"
        ) from exc
    return _parse_model_info(manifest_path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _parse_model_info(manifest_path: Path, mtime_ns: int, size: int) -> ModelPublic:
    """Parse one version of a manifest (`mtime_ns` and `size` only key the cache)."""
    pack_path = manifest_path.parent
    try:
        manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        generator = manifest["generator"]
        info = generator.get("info", {})
        kwargs = generator.get("kwargs", {})
        attributes = [
            AttributePublic(
                name=name,
                description=entry.get("description", ""),
                directions=sorted(entry["directions"]),
                has_evaluator=entry.get("evaluator") is not None,
            )
            for name, entry in sorted(manifest["attributes"].items())
        ]
        return ModelPublic(
            name=manifest["name"],
            description=manifest.get("description", ""),
            generator_kind=generator["kind"],
            img_resolution=info.get("img_resolution", kwargs.get("img_resolution")),
            w_dim=info.get("w_dim", kwargs.get("w_dim")),
            num_ws=info.get("num_ws"),
            attributes=attributes,
            defaults=EditDefaults(**manifest["defaults"]),
        )
    except FileNotFoundError as exc:
        raise ApiError(503, "pack_unavailable", f"no model pack at {pack_path}") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ApiError(
            503, "pack_unavailable", f"the model pack manifest {manifest_path} is unreadable: {exc}"
        ) from exc
