"""Training SAEs: SAELens's trainer with the plugin's architectures and step.

``saelens`` (synthetic and language-model training through SAELens), ``distributed``
(torch.distributed data-parallel training and sweeps).
"""
