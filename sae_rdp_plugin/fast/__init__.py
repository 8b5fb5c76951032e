"""The fast TopK / BatchTopK training step.

``step`` (sparse decoder and weight gradients, fused Adam; installs itself into SAELens's trainer),
``kernels`` (its Triton kernels), ``topk_kernel`` (exact per-row TopK in Triton).
"""
