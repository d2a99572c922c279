"""python -m flashvlm_export.cli: the flashvlm-export command."""

from flashvlm_export.cli import entry

entry()
