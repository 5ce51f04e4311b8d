"""Image references and platforms, as the worker, the manager and the scheduler all read them (no I/O): which
registry an image comes from (whose credentials a pull needs), a node's architecture in Docker's words (`uname -m`
x86_64 is Docker's linux/amd64), and the one sentence that says an image has no variant for a node's platform.

That sentence is written by the worker (the reason of the task it failed) and read back by the manager, which
remembers per image reference which architectures it lacks so that the scheduler avoids them: `no_variant` makes
it, `lacking_arch` finds the architecture in it again, and nothing else may spell it.
"""

from __future__ import annotations

import re

DOCKER_HUB = "docker.io"

# `uname -m` (the worker's arch label) → Docker's platform; Docker's architecture names map to themselves.
PLATFORMS = {
    "x86_64": "linux/amd64",
    "amd64": "linux/amd64",
    "aarch64": "linux/arm64",
    "arm64": "linux/arm64",
    "armv7l": "linux/arm/v7",
    "armhf": "linux/arm/v7",
    "arm": "linux/arm/v7",
    "armv6l": "linux/arm/v6",
    "i686": "linux/386",
    "386": "linux/386",
    "ppc64le": "linux/ppc64le",
    "s390x": "linux/s390x",
    "riscv64": "linux/riscv64",
}
_NO_VARIANT = re.compile(r"image \S+ has no (linux/[a-z0-9_]+(?:/v\d)?) variant")


def registry_host(image: str) -> str:
    """The registry an image reference names (`HOST[:PORT]/path:tag`), Docker Hub when its first part is no host:
    as Docker reads it, a first part with a dot or a colon, or `localhost`, is a host."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first.lower()
    return DOCKER_HUB


def platform(arch: str) -> str:
    """A node's architecture (`uname -m` or Docker's name) as Docker's platform: aarch64 → linux/arm64."""
    arch = (arch or "").lower()
    return PLATFORMS.get(arch, f"linux/{arch}" if arch else "linux/unknown")


def image_platform(os_name: str, arch: str, variant: str = "") -> str:
    """The platform an image's config declares (Os, Architecture, Variant), as Docker writes it."""
    if arch == "arm" and not variant:
        variant = "v7"
    return "/".join(p for p in ((os_name or "linux").lower(), (arch or "unknown").lower(), variant) if p)


def same_platform(node_arch: str, image: str) -> bool:
    """Whether an image of platform `image` (linux/arm/v7) runs on a node of architecture `node_arch` (armv7l)."""
    want = platform(node_arch)
    if image == want:
        return True
    # An arm image without a variant runs on any arm node; v6 runs on v7.
    return want.startswith("linux/arm/") and image in ("linux/arm", "linux/arm/v6")


def no_variant(image: str, node_arch: str, found: str, node: str) -> str:
    """The reason of a task whose image has no variant for its node: "image busybox has no linux/arm64 variant
    (it is linux/amd64) on node pi1"."""
    return (
        f"image {image} has no {platform(node_arch)} variant ({found}) on node {node}: build or push one for "
        f"{platform(node_arch)} (docker buildx --platform), or keep the task off such nodes (--constraint arch!=...)"
    )


def lacking_arch(reason: str) -> str | None:
    """The platform a task's reason says its image lacks (`no_variant`'s words), or None."""
    match = _NO_VARIANT.search(reason or "")
    return match.group(1) if match else None
