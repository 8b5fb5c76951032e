"""The one rule for the SAE every SAEBench eval of table2 receives: SAEBench's own loader
(``sae_bench.sae_bench_utils.general_utils.load_and_format_sae``) calls ``sae.fold_W_dec_norm()`` on an SAELens
SAE it loads by name, catching NotImplementedError, but on an SAE object (what the stages pass) it only warns
when the decoder rows are not unit norm. SAEBench assumes unit rows (absorption's probe projection is
``encode(x) * cos(probe, W_dec)``; sparse probing picks latents by activation statistics), so the stages fold
here what SAEBench would have folded. The fold scales each latent by its decoder norm and leaves
``decode(encode(x))`` unchanged; for a TopK SAE with ``rescale_acts_by_decoder_norm`` it leaves ``encode(x)``
unchanged too (its encode already multiplies by the norms); SAELens refuses it (NotImplementedError) for a TopK
SAE without that option, whose top-k selection it would change: that SAE is passed on as it is."""

from __future__ import annotations

from typing import Any


def fold_for_saebench(sae: Any) -> dict[str, Any]:
    """Fold ``sae``'s decoder norms into its encoder in place where SAELens allows it, as SAEBench's loader does for
    an SAE loaded by name. Returns the record the stages keep per SAE: ``folded``, the decoder row norms before
    (``W_dec_norm`` [min, max]) and, when SAELens refused, ``why`` (its message's first line)."""
    import torch

    with torch.no_grad():
        n = sae.W_dec.norm(dim=-1)
        rec: dict[str, Any] = {"W_dec_norm": [float(f"{n.min().item():.6g}"), float(f"{n.max().item():.6g}")]}
    try:
        sae.fold_W_dec_norm()
    except NotImplementedError as e:
        return {"folded": False, **rec, "why": str(e).strip().splitlines()[0]}
    return {"folded": True, **rec}
