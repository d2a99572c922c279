"""flashvlm-export eval: answer quality against the budget on a local benchmark (docs/EVAL.md)."""
