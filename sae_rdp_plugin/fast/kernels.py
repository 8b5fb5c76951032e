"""Triton kernels for the fast TopK step (sae_rdp_plugin.fast.step): the sparse decoder, its
per-entry gradient, and one fused "sparse weight gradient + gradient clipping + Adam" pass that never
materialises the dense [d_sae, d_in] weight gradients.

Notation (one batch of B rows; the sparse codes hold entries e = (b_e, j_e, a_e))::

    decode:       out_b     = bias + sum_{e in row b} a_e W[j_e]                 (W: [d_sae, d], fp32 or bf16)
    rowdot:       g_e       = r_{b_e} . W[j_e]                                   (dL/da_e for dL/dout = r)
    sparse grad:  G[j]      = sum_{e: j_e = j} c_e S[b_e] (+ X[j])               (S: r or u rows; X: optional dense)
    pass 1:       sq        = sum_j ||G[j]||^2                                   (per-program partial sums)
    pass 2:       g = clip * G[j];  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
                  p -= step_size * m / (sqrt(v) / bc2_sqrt + eps)                (torch's fused Adam, exactly)
                  optionally: norm[j] = ||p_new[j]||  and  lp[j] = lowp(scale[j] * p_new[j])

The latent-major CSR (entries sorted by latent, crow offsets) lets one program own BJ latents and loop
over their entries, so each weight row is read and written once per pass: the dense gradient buffers,
their zero-fill, the separate gradient-norm pass and the bf16 copy of the encoder are gone. Weight and
Adam-state tiles are addressed through (row, column) strides, so SAELens's [d_in, d_sae] W_enc layout
is updated in place without a transpose.

The kernels run on CUDA, and on CPU under Triton's interpreter (``TRITON_INTERPRET=1``), which is how
the tests check them against the PyTorch reference path. :func:`available` says whether they can run
for a tensor's device.
"""

from __future__ import annotations

import os

import torch

from sae_rdp_plugin.fast.rows import RowsAt, rows_at

try:  # Triton is optional: the fast step falls back to PyTorch kernels without it
    import triton
    import triton.language as tl

    _HAVE_TRITON = True
except Exception:  # noqa: BLE001  (ImportError, or a broken install)
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]
    _HAVE_TRITON = False

__all__ = [
    "available",
    "decode",
    "rowdot",
    "hot_rows",
    "hot_select",
    "RowsAt",
    "rows_at",
    "sparse_grad",
    "sparse_grad_sq",
    "sparse_grad_adam",
]


def available(device: torch.device | str) -> bool:
    """True when the kernels can run on ``device``: CUDA with Triton, or CPU under Triton's interpreter."""
    if not _HAVE_TRITON:
        return False
    dev = torch.device(device)
    if dev.type == "cuda":
        return True
    return dev.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1"


if _HAVE_TRITON:

    @triton.jit
    def _decode_kernel(
        W, stride_w, idx, val, off, bias, out, d, HAS_BIAS: tl.constexpr, BE: tl.constexpr, BD: tl.constexpr
    ):
        # one program per row b; loop over d in chunks, and over the row's entries in tiles of BE
        b = tl.program_id(0)
        start = tl.load(off + b)
        end = tl.load(off + b + 1)
        orow = out + b.to(tl.int64) * d
        for d0 in range(0, d, BD):
            cols = d0 + tl.arange(0, BD)
            cm = cols < d
            acc = tl.zeros([BD], dtype=tl.float32)
            for e0 in range(start, end, BE):
                e = e0 + tl.arange(0, BE)
                em = e < end
                j = tl.load(idx + e, mask=em, other=0).to(tl.int64)
                a = tl.load(val + e, mask=em, other=0.0)
                w = tl.load(W + j[:, None] * stride_w + cols[None, :], mask=em[:, None] & cm[None, :], other=0.0)
                acc += tl.sum(w.to(tl.float32) * a[:, None], axis=0)
            if HAS_BIAS:
                acc += tl.load(bias + cols, mask=cm, other=0.0)
            tl.store(orow + cols, acc, mask=cm)

    @triton.jit
    def _rowdot_kernel(W, stride_w, idx, off, r, out, d, BE: tl.constexpr, BD: tl.constexpr):
        b = tl.program_id(0)
        start = tl.load(off + b)
        end = tl.load(off + b + 1)
        rrow = r + b.to(tl.int64) * d
        for e0 in range(start, end, BE):
            e = e0 + tl.arange(0, BE)
            em = e < end
            j = tl.load(idx + e, mask=em, other=0).to(tl.int64)
            acc = tl.zeros([BE], dtype=tl.float32)
            for d0 in range(0, d, BD):
                cols = d0 + tl.arange(0, BD)
                cm = cols < d
                rv = tl.load(rrow + cols, mask=cm, other=0.0).to(tl.float32)
                w = tl.load(W + j[:, None] * stride_w + cols[None, :], mask=em[:, None] & cm[None, :], other=0.0)
                acc += tl.sum(w.to(tl.float32) * rv[None, :], axis=1)
            tl.store(out + e, acc, mask=em)

    @triton.jit
    def _sparse_adam_kernel(
        crow,
        tok,
        coef,
        S,
        n_rows,
        d,
        X,
        sx_j,
        sx_d,
        P,
        M,
        V,
        sp_j,
        sp_d,
        hp,
        beta1,
        beta2,
        eps,
        SQ,
        NORM,
        SCALE,
        LP,
        SLOT,
        GH,
        MODE: tl.constexpr,
        HAS_X: tl.constexpr,
        WRITE_NORM: tl.constexpr,
        HAS_SCALE: tl.constexpr,
        WRITE_LP: tl.constexpr,
        HAS_HOT: tl.constexpr,
        XSLOT,
        X_MAPPED: tl.constexpr,
        BJ: tl.constexpr,
        BD: tl.constexpr,
    ):
        pid = tl.program_id(0)
        jj = pid * BJ + tl.arange(0, BJ)
        jm = jj < n_rows
        start = tl.load(crow + jj, mask=jm, other=0)
        cnt = tl.load(crow + jj + 1, mask=jm, other=0) - start
        if HAS_HOT:  # rows with many entries come precomputed (GH[slot]) instead of a long gather loop
            slot = tl.load(SLOT + jj, mask=jm, other=-1)
            hot = slot >= 0
            cnt = tl.where(hot, 0, cnt)
            slot64 = tl.where(hot, slot, 0).to(tl.int64)
        maxc = tl.max(cnt, axis=0)
        jj64 = jj.to(tl.int64)
        if X_MAPPED:  # X given at some rows only (RowsAt): row j's extra gradient is X[xslot[j]], or none
            xslot = tl.load(XSLOT + jj, mask=jm, other=-1)
            xhas = xslot >= 0
            xrow64 = tl.where(xhas, xslot, 0).to(tl.int64)
        else:
            xhas = jm
            xrow64 = jj64
        sq = tl.zeros([BJ], dtype=tl.float32)
        nsq = tl.zeros([BJ], dtype=tl.float32)
        if MODE == 1:
            step_size = tl.load(hp)
            bc2s = tl.load(hp + 1)
            clip = tl.load(hp + 2)
        if HAS_SCALE:
            sc = tl.load(SCALE + jj, mask=jm, other=1.0)
        for d0 in range(0, d, BD):
            dd = d0 + tl.arange(0, BD)
            dm = dd < d
            m2 = jm[:, None] & dm[None, :]
            acc = tl.zeros([BJ, BD], dtype=tl.float32)
            for t in range(0, maxc):
                em = jm & (t < cnt)
                e = start + t
                tb = tl.load(tok + e, mask=em, other=0).to(tl.int64)
                c = tl.load(coef + e, mask=em, other=0.0)
                s = tl.load(S + tb[:, None] * d + dd[None, :], mask=em[:, None] & dm[None, :], other=0.0)
                acc += c[:, None] * s.to(tl.float32)
            if HAS_X:
                xm = xhas[:, None] & dm[None, :]
                acc += tl.load(X + xrow64[:, None] * sx_j + dd[None, :] * sx_d, mask=xm, other=0.0).to(tl.float32)
            if HAS_HOT:
                acc += tl.load(GH + slot64[:, None] * d + dd[None, :], mask=hot[:, None] & dm[None, :], other=0.0)
            if MODE == 0:
                sq += tl.sum(acc * acc, axis=1)
            elif MODE == 2:  # write G itself into P
                tl.store(P + jj64[:, None] * sp_j + dd[None, :] * sp_d, acc, mask=m2)
            else:
                g = acc * clip
                po = jj64[:, None] * sp_j + dd[None, :] * sp_d
                p = tl.load(P + po, mask=m2, other=0.0)
                m = tl.load(M + po, mask=m2, other=0.0)
                v = tl.load(V + po, mask=m2, other=0.0)
                m = beta1 * m + (1.0 - beta1) * g
                v = beta2 * v + (1.0 - beta2) * g * g
                p = p - step_size * m / (tl.sqrt(v) / bc2s + eps)
                tl.store(P + po, p, mask=m2)
                tl.store(M + po, m, mask=m2)
                tl.store(V + po, v, mask=m2)
                if WRITE_NORM:
                    nsq += tl.sum(p * p, axis=1)
                if WRITE_LP:
                    q = p
                    if HAS_SCALE:
                        q = p * sc[:, None]
                    tl.store(LP + jj64[:, None] * d + dd[None, :], q.to(LP.dtype.element_ty), mask=m2)
        if MODE == 0:
            tl.store(SQ + pid, tl.sum(sq, axis=0))
        if WRITE_NORM:
            tl.store(NORM + jj, tl.sqrt(nsq), mask=jm)


# ------------------------------------------------------------------------------------ wrappers
# block sizes and warps per program: the fastest tiles of benchmarks/training_speed/tune_fast_kernels.py on
# Hopper at (2304, 65536, 64); set_blocks() overrides them
_DEC_BE, _DEC_BD, _DEC_W = 64, 64, 4
_DOT_BE, _DOT_BD, _DOT_W = 32, 128, 4
_ADAM_BJ, _ADAM_BD, _ADAM_W = 8, 256, 4  # latent-major parameters ([d_sae, d_in] rows contiguous)
_ADAMT_BJ, _ADAMT_BD, _ADAMT_W = 128, 16, 4  # SAELens's W_enc layout ([d_in, d_sae]: latents contiguous)
# Triton 3.6's layout pass fails to compile some tile shapes of the fused Adam kernel on Hopper
# ("PassManager::run failed", e.g. BJ*BD = 2048 with BJ in {32, 64}); these shapes compile there and are
# tried in order when the configured shape does not compile
_ADAM_FALLBACKS = {False: [(16, 128, 4), (8, 256, 4), (4, 256, 4)], True: [(128, 16, 4), (16, 128, 4), (128, 32, 4)]}
_ADAM_BAD: set = set()


_BLOCK_GROUPS = {  # kernel group -> the module globals holding its (block, block, warps)
    "DEC": ("_DEC_BE", "_DEC_BD", "_DEC_W"),
    "DOT": ("_DOT_BE", "_DOT_BD", "_DOT_W"),
    "ADAM": ("_ADAM_BJ", "_ADAM_BD", "_ADAM_W"),
    "ADAMT": ("_ADAMT_BJ", "_ADAMT_BD", "_ADAMT_W"),
}


def get_blocks(group: str) -> tuple[int, int, int]:
    """(block, block, warps) of a kernel group: DEC, DOT, ADAM (latent-major) or ADAMT (SAELens layout)."""
    g = globals()
    return tuple(int(g[name]) for name in _BLOCK_GROUPS[group])  # type: ignore[return-value]


def set_blocks(group: str, blocks: tuple[int, int, int] | list[int]) -> None:
    """Override a kernel group's (block, block, warps) (tuning: benchmarks/training_speed/tune_fast_kernels.py)."""
    if group not in _BLOCK_GROUPS or len(blocks) != 3:
        raise ValueError(
            f"set_blocks: group must be one of {sorted(_BLOCK_GROUPS)} and blocks 3 ints, got {group!r}, {blocks!r}"
        )
    g = globals()
    for name, v in zip(_BLOCK_GROUPS[group], blocks):
        g[name] = int(v)


def decode(
    W: torch.Tensor, idx: torch.Tensor, vals: torch.Tensor, offsets: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """out[b] = bias + sum_{e in offsets[b]:offsets[b+1]} vals[e] W[idx[e]] as float32 [B, d]
    (``offsets``: B+1 row offsets; W rows contiguous)."""
    B = offsets.numel() - 1
    d = W.shape[1]
    out = torch.empty(B, d, device=W.device, dtype=torch.float32)
    if B == 0:
        return out
    _decode_kernel[(B,)](
        W,
        W.stride(0),
        idx,
        vals.float().contiguous(),
        offsets,
        bias if bias is not None else out,
        out,
        d,
        HAS_BIAS=bias is not None,
        BE=_DEC_BE,
        BD=_DEC_BD,
        num_warps=_DEC_W,
    )
    return out


def rowdot(W: torch.Tensor, idx: torch.Tensor, offsets: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """g[e] = r[b(e)] . W[idx[e]] (float32, one per entry)."""
    B = offsets.numel() - 1
    out = torch.empty(idx.numel(), device=W.device, dtype=torch.float32)
    if B == 0 or idx.numel() == 0:
        return out.zero_()
    _rowdot_kernel[(B,)](
        W, W.stride(0), idx, offsets, r.contiguous(), out, W.shape[1], BE=_DOT_BE, BD=_DOT_BD, num_warps=_DOT_W
    )
    return out


def _launch(
    crow,
    tok,
    coef,
    S,
    P,
    X,
    mode,
    *,
    M=None,
    V=None,
    hp=None,
    betas=(0.9, 0.999),
    eps=1e-8,
    norm_out=None,
    scale=None,
    lp_out=None,
    hot=None,
):
    n_rows, d = crow.numel() - 1, S.shape[1]
    xslot = None
    if isinstance(X, RowsAt):
        xslot, X = X.slot, X.rows
    # tile shape by layout: latents contiguous (SAELens's W_enc) -> wide in j; else wide in d
    lay = X if mode == 0 and X is not None else P
    transposed = lay.stride(0) == 1 and lay.stride(1) != 1
    first = (_ADAMT_BJ, _ADAMT_BD, _ADAMT_W) if transposed else (_ADAM_BJ, _ADAM_BD, _ADAM_W)
    flags = (
        mode,
        X is not None,
        norm_out is not None,
        scale is not None,
        lp_out is not None,
        transposed,
        hot is not None,
        xslot is not None,
    )
    dummy = coef
    sx = X.stride() if X is not None else (0, 0)
    err: Exception | None = None
    for BJ, BD, NW in [first] + [c for c in _ADAM_FALLBACKS[transposed] if c != first]:
        if (flags, BJ, BD, NW) in _ADAM_BAD:
            continue
        grid = (triton.cdiv(n_rows, BJ),)
        sq = torch.empty(grid[0], device=S.device, dtype=torch.float32) if mode == 0 else None
        try:
            _sparse_adam_kernel[grid](
                crow,
                tok,
                coef,
                S,
                n_rows,
                d,
                X if X is not None else dummy,
                sx[0],
                sx[1],
                P,
                M if M is not None else P,
                V if V is not None else P,
                P.stride(0),
                P.stride(1),
                hp if hp is not None else dummy,
                float(betas[0]),
                float(betas[1]),
                float(eps),
                sq if sq is not None else dummy,
                norm_out if norm_out is not None else dummy,
                scale if scale is not None else dummy,
                lp_out if lp_out is not None else dummy,
                hot[0] if hot is not None else dummy,
                hot[1] if hot is not None else dummy,
                MODE=mode,
                HAS_X=X is not None,
                WRITE_NORM=norm_out is not None,
                HAS_SCALE=scale is not None,
                WRITE_LP=lp_out is not None,
                HAS_HOT=hot is not None,
                XSLOT=xslot if xslot is not None else dummy,
                X_MAPPED=xslot is not None,
                BJ=BJ,
                BD=BD,
                num_warps=NW,
            )
            return sq
        except RuntimeError as e:  # a tile shape that does not compile here: next one
            if "PassManager" not in str(e) and "compil" not in str(e).lower():
                raise
            _ADAM_BAD.add((flags, BJ, BD, NW))
            err = e
    raise RuntimeError(f"fused sparse Adam kernel: no tile shape compiled ({err})")


def sparse_grad_sq(
    crow: torch.Tensor,
    tok: torch.Tensor,
    coef: torch.Tensor,
    S: torch.Tensor,
    X: torch.Tensor | RowsAt | None = None,
    hot: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """sum_j ||G[j]||^2 for G[j] = sum_{e in crow[j]:crow[j+1]} coef[e] S[tok[e]] (+ X[j]) (a 0-d float32
    tensor; no host sync). ``S`` [B, d] contiguous; ``X``: a [n_rows, d] view with any strides, or a
    :class:`RowsAt` (zero except at its rows)."""
    n_rows = crow.numel() - 1
    if n_rows == 0:
        return torch.zeros((), device=S.device)
    # P is only used for its strides in mode 0: pass X or S-shaped placeholder
    P = X.rows if isinstance(X, RowsAt) else X if X is not None else S
    return _launch(crow, tok, coef, S, P, X, 0, hot=hot).sum()


def sparse_grad_adam(
    crow: torch.Tensor,
    tok: torch.Tensor,
    coef: torch.Tensor,
    S: torch.Tensor,
    P: torch.Tensor,
    M: torch.Tensor,
    V: torch.Tensor,
    hp: torch.Tensor,
    *,
    betas: tuple[float, float],
    eps: float,
    X: torch.Tensor | RowsAt | None = None,
    norm_out: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    lp_out: torch.Tensor | None = None,
    hot: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """One Adam step of the [n_rows, d] parameter view ``P`` (state ``M``, ``V`` with the same strides)
    with gradient clip * G (G as in :func:`sparse_grad_sq`); ``hp`` = [lr / bc1, sqrt(bc2), clip] on the
    device. Optionally writes ``norm_out[j] = ||P_new[j]||`` and ``lp_out[j] = (scale[j] * P_new[j])``
    in lp_out's dtype (lp_out: contiguous [n_rows, d])."""
    if P.stride() != M.stride() or P.stride() != V.stride():
        raise ValueError("sparse_grad_adam: parameter and Adam state must share strides")
    _launch(
        crow,
        tok,
        coef,
        S,
        P,
        X,
        1,
        M=M,
        V=V,
        hp=hp,
        betas=betas,
        eps=eps,
        norm_out=norm_out,
        scale=scale,
        lp_out=lp_out,
        hot=hot,
    )


def sparse_grad(
    crow: torch.Tensor,
    tok: torch.Tensor,
    coef: torch.Tensor,
    S: torch.Tensor,
    X: torch.Tensor | RowsAt | None = None,
    hot: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """G (float32 [n_rows, d], contiguous) materialised by the fused kernel (the gradient rows of
    :func:`sparse_grad_adam`, written instead of applied). Used by the step for SAELens's W_enc layout
    (see FastTopKTrainer._fused_step), by tests and by the on-device gradient checks."""
    n_rows, d = crow.numel() - 1, S.shape[1]
    P = torch.empty(n_rows, d, device=S.device, dtype=torch.float32)
    if n_rows:
        _launch(crow, tok, coef, S, P, X, 2, hot=hot)
    return P


#: how :func:`hot_select` picks the busiest rows: "sort" (one radix sort of the int32 counts, multi-block) or "topk"
#: (torch.topk, which runs a single row's selection in one thread block: slow at d_sae entries)
HOT_SELECT = "sort"


def hot_select(counts: torch.Tensor, H: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of H largest entries of the 1-D ``counts`` (any H among ties; unordered for "topk",
    descending for "sort"), by :data:`HOT_SELECT`. Static shapes, no host sync."""
    if HOT_SELECT == "topk":
        return counts.topk(H, sorted=False)
    cv, ci = torch.sort(counts.to(torch.int32), descending=True)  # counts <= batch size: int32 halves the passes
    return cv[:H].to(counts.dtype), ci[:H]


def hot_rows(
    crow: torch.Tensor,
    idx: torch.Tensor,
    rows: torch.Tensor,
    coefs: list[torch.Tensor],
    sources: list[torch.Tensor],
    max_hot: int = 256,
    min_count: int = 64,
    unique: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Rows of the latent-major CSR with many entries (a latent that fires on most tokens, common on real
    activations) would make one program loop over thousands of entries while the others idle. The up to
    ``max_hot`` rows with the most entries, if above ``min_count``, are computed here instead as one small
    dense product per gradient: GH = C S with C [max_hot, B] the coefficients of those rows' entries
    (static shapes, no host sync). Returns (slot [n_rows]: row of GH or -1, [GH for each (coef, S)]);
    ``coefs`` are per entry in the original (unsorted) entry order, ``rows`` the entries' batch rows.
    ``unique=True`` promises that no (latent, batch row) pair repeats (true of TopK/BatchTopK codes: a token
    selects a latent once): C is then filled by a plain scatter instead of a sort-based accumulate."""
    n_rows = crow.numel() - 1
    H = min(max_hot, n_rows)
    counts = crow[1:] - crow[:-1]
    cv, ci = hot_select(counts, H)
    slot = torch.full((n_rows,), -1, device=crow.device, dtype=torch.int64)
    slot[ci] = torch.where(cv > min_count, torch.arange(H, device=crow.device), -1)
    se = slot[idx]
    se = torch.where(se < 0, H, se)  # entries of other rows go to a discarded row H
    B = sources[0].shape[0]
    out = []
    for coef, S in zip(coefs, sources):
        C = torch.zeros(H + 1, B, device=S.device, dtype=S.dtype)
        # unique pairs: a plain scatter is exact (colliding writes only hit the discarded row H)
        C.index_put_((se, rows), coef.to(S.dtype), accumulate=not unique)
        out.append((C[:H] @ S).float())
    return slot, out
