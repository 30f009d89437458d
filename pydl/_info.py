"""pydl.info(): what was built, what loaded, and which backend each op uses."""

from __future__ import annotations

import torch

from pydl import _backend, _ext


class Info(dict):
    """A dict with a readable str(): print(pydl.info())."""

    def __str__(self) -> str:
        lines = [
            f"pydl {self['version']} on torch {self['torch']}",
            f"extension: {'loaded' if self['extension_loaded'] else 'not loaded'}"
            + (f" ({self['extension_error']})" if self["extension_error"] else ""),
        ]
        if self["build"]:
            lines.append("build: " + ", ".join(f"{k}={v}" for k, v in self["build"].items()))
        lines.append("backends:")
        for family, per_device in self["backends"].items():
            for device, (backend, reason) in per_device.items():
                lines.append(f"  {family:<10} {device:<5} {backend:<6} {reason}")
        return "\n".join(lines)


def info() -> Info:
    """Report the extension's state and, per op family and device, the backend in use and why."""
    from pydl import __version__

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() or _ext.built_with_cuda() else [])
    backends = {
        family: {device: _backend.explain(family, device) for device in devices}
        for family in _backend.SUPPORTED
    }
    build = dict(_ext._state["build"])
    if _ext.loaded():
        try:
            build["cpu_isa"] = torch.ops.pydl.conv2d_cpu_isa()
            # MKL's tuned kernels run on Intel processors only (csrc/common/blas.h).
            build["mkl"] = torch.ops.pydl.mkl_code_path()
        except (AttributeError, RuntimeError):
            pass
    return Info(
        version=__version__,
        torch=torch.__version__,
        extension_loaded=_ext.loaded(),
        extension_error=_ext.load_error(),
        build=build,
        strict=_backend.strict(),
        experimental_cuda=_backend.experimental_cuda(),
        backends=backends,
    )
