"""Profiles: what changes between the offline ``demo`` run and the ``paper`` run.

A profile changes data sources, backbone and budget, never the code path. Here live only the
settings every method shares; per-method budgets of a profile are data, in
``benchmarks/<paper>.yaml`` and ``params.yaml``.
"""

from __future__ import annotations

from nfbench.errors import UserError

PROFILES: dict[str, dict[str, object]] = {
    # offline: no hub download is possible, so every backbone becomes the bundled Lite0
    "demo": {"backbone": "efficientnet_lite0"},
    # CI's tiny budget: the same offline sources as demo
    "smoke": {"backbone": "efficientnet_lite0"},
    # the papers' own backbones and budgets: each method's config defaults
    "paper": {},
}


def profile_overrides(profile: str, config_fields: set[str]) -> dict[str, object]:
    """The profile's shared settings that apply to a config with ``config_fields``."""
    if profile not in PROFILES:
        raise UserError(f"unknown profile {profile!r}; available: {', '.join(PROFILES)}")
    return {k: v for k, v in PROFILES[profile].items() if k in config_fields}
