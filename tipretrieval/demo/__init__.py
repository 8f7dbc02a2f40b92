"""The demo: CLIP-like synthetic data (`synthetic`) and the whole pipeline run on it (`run`).

`synthetic` imports only the contracts and `store`, so tests and benchmarks can use it cheaply;
`run` may import everything but `cli`.
"""
