"""The FlashVLM token selector: configuration, round schedule, reference and static forms."""

from flashvlm_export.selector.config import SelectorConfig
from flashvlm_export.selector.reference import ReferenceTrace, reference_select, reference_select_batch
from flashvlm_export.selector.schedule import RoundSchedule, round_schedule
from flashvlm_export.selector.static import StaticSelector

__all__ = [
    "ReferenceTrace",
    "RoundSchedule",
    "SelectorConfig",
    "StaticSelector",
    "reference_select",
    "reference_select_batch",
    "round_schedule",
]
