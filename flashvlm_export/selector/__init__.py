"""The FlashVLM token selector: configuration, round schedule, reference and static forms.

Names are imported on first use, so `selector.config` (the CLI's defaults) loads without torch.
"""

from importlib import import_module

_HOMES = {
    "SelectorConfig": "config",
    "ReferenceTrace": "reference",
    "reference_select": "reference",
    "reference_select_batch": "reference",
    "RoundSchedule": "schedule",
    "round_schedule": "schedule",
    "StaticSelector": "static",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
