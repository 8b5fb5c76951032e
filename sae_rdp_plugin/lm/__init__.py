"""Language models offline: ``models`` (Gemma-3-270M / SmolLM2 from package-registry files, hub models),
``corpus`` (a real-English corpus from packages, deduplicated, with a held-out split), ``activations``
(a resumable on-disk cache of hook activations).
"""
