"""The library function under `gmia phantom`."""

from __future__ import annotations

import time
from pathlib import Path

from ...config import PhantomSpec, get_preset, override
from ...errors import ConfigError
from . import generate, write

__all__ = ["resolve_spec", "make_phantom_set"]


def resolve_spec(preset: str | None = None, **flags) -> PhantomSpec:
    """A PhantomSpec from a preset's benchmark (if given), with the flags that were set overriding it."""
    if preset is not None:
        spec = get_preset(preset).phantom
        if spec is None:
            raise ConfigError(f"preset {preset!r} has no phantom benchmark; use phantom-cxr64 or phantom-face64")
    else:
        if flags.get("domain") is None:
            raise ConfigError("give --domain cxr|face, or --preset phantom-cxr64|phantom-face64")
        spec = PhantomSpec(domain=flags["domain"])
    return override(spec, **flags)


def make_phantom_set(out: Path, preset: str | None = None, **flags) -> str:
    """Generate and write a phantom set; returns a one-line summary."""
    spec = resolve_spec(preset, **flags)
    t0 = time.perf_counter()
    ps = generate(spec.domain, spec.patients, spec.studies, spec.size, spec.seed)
    write(ps, out)
    seconds = time.perf_counter() - t0
    n_test = int((ps.meta["split"] == "test").sum())
    return (f"wrote {len(ps)} {spec.domain} phantom images ({spec.patients} patients x {spec.studies} studies, "
            f"{spec.size}px, seed {spec.seed}; {n_test} test images) to {out} in {seconds:.1f}s")
