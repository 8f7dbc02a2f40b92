"""tipretrieval: Tip-Adapter few-shot CLIP classification at production scale."""
