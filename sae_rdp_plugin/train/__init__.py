"""Training SAEs with SAELens's trainer and the plugin's architectures and step.

``config`` (the one :class:`~sae_rdp_plugin.train.config.TrainConfig`), ``synthetic`` (synthetic training
activations), ``saelens`` (training on synthetic or language-model activations through SAELens),
``distributed`` (the torch.distributed process group and partitioning), ``ddp`` (one SAE data-parallel over
ranks), ``grid`` (a grid of SAELens SAEs spread over ranks).
"""
