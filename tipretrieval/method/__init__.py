"""The method: Tip-Adapter's math over plain arrays and FAISS, knowing nothing of stores or
caches on disk.

Owns the affinity kernels and class weights (`affinity`), key indices (`index`), the adapter
and its logits (`adapter`), the official alpha/beta search (`tune`), Tip-Adapter-F training
(`finetune`) and GDA, training-free Gaussian discriminant analysis (`gda`).
May import: the contracts (`errors`, `rows`) and `util`; never `store`, `encode` or `cache`.
"""
