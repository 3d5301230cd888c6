"""Ready-made study specs and reports (CoDA vs Qwen3)."""
