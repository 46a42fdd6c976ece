"""Start-up guard: the NVIDIA driver must support the CUDA major that cuda-python and
TensorRT were built for.

A fresh ``pip install tensorrt cuda-python`` now resolves to the CUDA 13 builds; on a
CUDA 12 driver (R535 to R570, common on H100 hosts) every CUDA call then fails with
``cudaErrorInsufficientDriver`` and nothing says which package to change. So before
the first allocation this compares:

* the driver's CUDA version (``cudaDriverGetVersion``: "the latest version of CUDA
  supported by the driver", 1000 * major + 10 * minor, 0 without a driver);
* cuda-python's CUDA runtime (``cudaRuntimeGetVersion``; both calls work even when the
  driver is too old, which is what lets this guard speak before anything else fails);
* TensorRT's CUDA major, from the installed ``tensorrt-cu12``/``tensorrt-cu13``
  distribution (unknown for an image that brings its own TensorRT, e.g. NGC's).

Only majors are compared: within a major, CUDA's minor version compatibility lets a
newer runtime run on an older driver of the same major. A newer driver runs older
runtimes, so the CUDA 12 build works on CUDA 12 and 13 drivers alike.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from shelf_stream.engine.cuda_mem import check
from shelf_stream.errors import EngineError

log = logging.getLogger(__name__)

#: CUDA majors with a gpu-cuXX extra in pyproject.toml.
EXTRA_CUDA_MAJORS = (12, 13)
#: The first driver branch of each CUDA major (CUDA release notes, "CUDA Toolkit and
#: Minimum Required Driver Version").
MIN_DRIVER_BRANCH = {12: "R525", 13: "R580"}
_TENSORRT_DIST = re.compile(r"^tensorrt[-_]cu(\d+)(?:[-_](?:libs|bindings))?$")

CudaVersion = tuple[int, int]


@dataclass(frozen=True, slots=True)
class CudaVersions:
    """``driver``: the newest CUDA the driver supports (``None``: no driver).
    ``runtime``: the CUDA runtime of cuda-python. ``tensorrt_cuda_major``: the CUDA major
    of the installed TensorRT wheel, ``None`` when no ``tensorrt-cuXX`` wheel says it."""

    driver: CudaVersion | None
    runtime: CudaVersion
    tensorrt_cuda_major: int | None = None

    def describe(self) -> str:
        driver = "none" if self.driver is None else f"{self.driver[0]}.{self.driver[1]}"
        trt = "unknown" if self.tensorrt_cuda_major is None else str(self.tensorrt_cuda_major)
        return (
            f"CUDA driver supports {driver}, cuda-python runtime {self.runtime[0]}."
            f"{self.runtime[1]}, TensorRT built for CUDA {trt}"
        )


def decode_cuda_version(value: int) -> CudaVersion | None:
    """12080 -> (12, 8); 0 (no driver) -> None."""
    if value <= 0:
        return None
    return value // 1000, (value % 1000) // 10


def tensorrt_cuda_major(distribution_names: Iterable[str]) -> int | None:
    """The CUDA major of an installed ``tensorrt-cuXX`` (or its -libs/-bindings) wheel."""
    majors = {
        int(m.group(1))
        for name in distribution_names
        if (m := _TENSORRT_DIST.match(name.lower().replace(".", "-")))
    }
    if len(majors) > 1:
        raise EngineError(
            f"TensorRT wheels for several CUDA majors are installed ({sorted(majors)}); "
            "uninstall all but one: pip uninstall tensorrt-cu12 tensorrt-cu13 ..., then "
            "reinstall shelf-stream[gpu-cu12] or shelf-stream[gpu-cu13]"
        )
    return majors.pop() if majors else None


def _installed_distributions() -> list[str]:
    return [str(d.metadata["Name"] or "") for d in importlib.metadata.distributions()]


def read_versions(
    cudart: Any, distributions: Callable[[], Iterable[str]] = _installed_distributions
) -> CudaVersions:
    """Ask cuda-python and the installed wheels (``distributions`` names them; tests
    pass their own)."""
    driver = check(cudart, cudart.cudaDriverGetVersion(), "cudaDriverGetVersion")
    runtime = check(cudart, cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")
    decoded = decode_cuda_version(int(runtime))
    if decoded is None:
        raise EngineError(f"cuda-python reports CUDA runtime version {runtime}")
    return CudaVersions(
        decode_cuda_version(int(driver)), decoded, tensorrt_cuda_major(distributions())
    )


def _install_advice(driver_major: int, built_for: int) -> str:
    """What to do when a package built for CUDA ``built_for`` meets an older driver."""
    upgrade = (
        f"or upgrade the NVIDIA driver to {MIN_DRIVER_BRANCH[built_for]} or later"
        if built_for in MIN_DRIVER_BRANCH
        else "or upgrade the NVIDIA driver"
    )
    if driver_major in EXTRA_CUDA_MAJORS:
        return (
            f"install the CUDA {driver_major} build (pip uninstall tensorrt-cu{built_for} "
            f"cuda-python cuda-bindings; pip install 'shelf-stream[gpu-cu{driver_major}]') "
            + upgrade
        )
    return (
        f"this driver only supports CUDA {driver_major} and shelf-stream needs CUDA 12 or "
        f"13: upgrade the NVIDIA driver to {MIN_DRIVER_BRANCH[12]} or later"
    )


def compatibility_problems(versions: CudaVersions) -> list[str]:
    """Why this combination cannot run, each with what to do; empty when it can."""
    if versions.driver is None:
        return [
            "no NVIDIA driver answers (cudaDriverGetVersion says 0): check `nvidia-smi`, "
            "and for containers --gpus all"
        ]
    driver_major, driver_minor = versions.driver
    runtime_major, runtime_minor = versions.runtime
    problems = []
    if runtime_major > driver_major:
        problems.append(
            f"cuda-python is built for CUDA {runtime_major}.{runtime_minor} but the driver "
            f"supports CUDA {driver_major}.{driver_minor} at most (every CUDA call would fail "
            f"with cudaErrorInsufficientDriver): {_install_advice(driver_major, runtime_major)}"
        )
    trt_major = versions.tensorrt_cuda_major
    if trt_major is not None and trt_major > driver_major:
        problems.append(
            f"TensorRT is the CUDA {trt_major} build but the driver supports CUDA "
            f"{driver_major}.{driver_minor} at most: {_install_advice(driver_major, trt_major)}"
        )
    if trt_major is not None and trt_major != versions.runtime[0]:
        problems.append(
            f"TensorRT is the CUDA {trt_major} build but cuda-python is built for CUDA "
            f"{versions.runtime[0]}: install both from one extra, "
            f"pip install 'shelf-stream[gpu-cu{min(trt_major, versions.runtime[0])}]'"
        )
    return problems


def check_cuda_compatibility(versions: CudaVersions) -> None:
    """``EngineError`` listing every mismatch and what to install instead."""
    problems = compatibility_problems(versions)
    if problems:
        raise EngineError(
            f"the GPU stack does not fit ({versions.describe()}): " + "; ".join(problems)
        )
    log.info("%s", versions.describe())


def ensure_compatible(cudart: Any) -> CudaVersions:
    """Read this machine's versions and check them (the TensorRT backend calls this
    before its first allocation)."""
    versions = read_versions(cudart)
    check_cuda_compatibility(versions)
    return versions


# ------------------------------------------------------------- installed packages


def _major_of(distribution: str) -> int | None:
    try:
        return int(importlib.metadata.version(distribution).split(".", 1)[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


def installed_problems(
    cuda_major: int,
    distributions: Callable[[], Iterable[str]] = _installed_distributions,
    major_of: Callable[[str], int | None] = _major_of,
) -> list[str]:
    """Why the installed packages are not the CUDA ``cuda_major`` GPU stack (no GPU or
    driver needed: an image build runs this). cuda-python (its ``cuda-bindings``) must be
    that major, and so must a ``tensorrt-cuXX`` wheel if one is installed."""
    problems = []
    bindings = major_of("cuda-bindings") or major_of("cuda-python")
    if bindings is None:
        problems.append("cuda-python is not installed")
    elif bindings != cuda_major:
        problems.append(f"cuda-python is the CUDA {bindings} build, not CUDA {cuda_major}")
    trt = tensorrt_cuda_major(distributions())
    if trt is not None and trt != cuda_major:
        problems.append(f"TensorRT is the tensorrt-cu{trt} wheel, not CUDA {cuda_major}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """``python -m shelf_stream.engine.cuda_compat``: check this machine's GPU stack (needs
    the driver), or with ``--installed-for-cuda N`` only the installed packages."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--installed-for-cuda", type=int, metavar="MAJOR")
    args = parser.parse_args(argv)
    if args.installed_for_cuda is not None:
        problems = installed_problems(args.installed_for_cuda)
        for problem in problems:
            print(f"cuda_compat: {problem}")
        return 1 if problems else 0
    from shelf_stream.engine.cuda_mem import load_cudart

    try:
        print(ensure_compatible(load_cudart()).describe())
    except EngineError as exc:
        print(f"cuda_compat: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
