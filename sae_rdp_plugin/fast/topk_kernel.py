"""Exact per-row TopK in one Triton kernel: ``row_topk(x, k)`` returns the same values as
``x.topk(k, dim=1, sorted=False)`` (unsorted; int64 column indices), without sorting the row.

Algorithm (one program per row; the row is streamed in blocks of ``_BLOCK_16`` / ``_BLOCK_32``
contiguous columns, one coalesced load per block):

0. **Keys.** Each value becomes an order-preserving *signed* int32 key ``K``: the float's bits ``b``
   (bf16/fp16 bits sign-extended to int32) with the magnitude bits inverted when the sign bit is set,
   ``K = b ^ ((b >> 31) & 0x7fffffff)`` for fp32 and ``K = b ^ ((b >> 15) & 0x7fff)`` for 16-bit
   floats (arithmetic shifts). Then ``x < y`` implies ``K(x) < K(y)``; ``-0.0`` gets a key one below
   ``+0.0``, which is harmless (either is a valid pick among equal values).
1. **Lower bound (read 1).** The maxima of ``G = _GROUPS`` column groups (column ``c`` in group
   ``c % G``; an element-wise running max in registers, reduced once), sorted; ``lo`` = the k-th
   largest group maximum (needs ``k <= G``; else ``lo = -inf``). ``k`` groups have an element
   ``>= lo``, so the k-th largest key is ``>= lo``: every top-k element is a *candidate* (``K >= lo``).
   For continuous data about ``k`` (+ a few) elements are candidates.
2. **Compaction (read 2).** The candidates' column indices go to a per-row scratch of ``CAP =
   max(_CAP, 2k)`` int32 slots, in column order (slot = running count + ``tl.cumsum`` within the
   block; no atomics), and are counted.
3. **Selection (candidates only, usually L1/L2 hits).** With ``cnt <= CAP`` candidates: each
   candidate's rank = #(larger keys) + #(equal keys earlier in column order), computed on
   ``[_CB, _CB]`` comparison tiles. The ranks are a permutation of ``0..cnt-1``; the candidate of rank
   ``r < k`` is written to output slot ``r``: exactly ``k`` distinct entries, leftmost among ties.
4. **Fallback (``cnt > CAP``: heavy ties at the top, e.g. integer-valued or constant rows).** Radix
   select over the whole row: per 8-bit digit (2 levels for 16-bit keys, 4 for fp32) one read builds
   the ``tl.histogram`` of the digit over the elements matching the prefix so far, and the suffix sums
   pick the bin of the r-th largest remaining element; this gives the exact k-th key ``T`` and
   ``need`` = how many keys ``== T`` to take. One more read writes the keys ``> T`` and the first
   ``need`` keys ``== T`` (slots from a packed ``tl.cumsum``). Exact, but 3 to 5 reads with
   histograms: several times slower than the main path.

No host synchronisation and no data-dependent shapes (the branch is taken inside the kernel), so the
call can be captured in a CUDA graph. The scratch (``B * CAP`` int32) is allocated per call.

Timings against ``torch.topk``: ``benchmarks/training_speed/bench_row_topk.py`` and its results. One read
of x is the memory floor; the two full reads and the per-program latency of the selection sit above it.

Inputs must be finite: NaN has no place in the key order (a NaN becomes a key above +inf or below
-inf, depending on its sign bit, where ``torch.topk`` ranks every NaN as the largest value). The caller
guarantees finite inputs (SAE pre-activations); nothing checks it.

The kernel runs on CUDA, and on CPU under Triton's interpreter (``TRITON_INTERPRET=1``), which is how
tests/fast/test_topk_kernel.py checks it. :func:`available` says whether it can run for a tensor's device.
"""

from __future__ import annotations

import torch

try:  # Triton is optional
    import triton
    import triton.language as tl

    _HAVE_TRITON = True
except Exception:  # noqa: BLE001  (ImportError, or a broken install)
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]
    _HAVE_TRITON = False

# the same condition as the fused-step kernels: CUDA with Triton, or CPU under Triton's interpreter
from sae_rdp_plugin.fast.kernels import available  # noqa: E402  (after the optional triton import)

__all__ = ["available", "masked_topk", "row_topk", "row_topk_masked_copy", "topk_mask", "TOPK_MASK_MAX_COLS"]

# columns per block (one coalesced 4 KiB load per pass and iteration) and warps per program: the best
# of a sweep on Hopper (BLOCK x warps in {512..8192} x {2, 4, 8, 16}); fewer, smaller programs won
_BLOCK_16 = 2048  # bf16 / fp16
_BLOCK_32 = 1024  # fp32
_NUM_WARPS = 2
# column groups of the lower bound (pass 1; a power of two, capped at the block; used when k <= groups)
_GROUPS = 256
# scratch slots per row for the candidates (at least max(_CAP, 2k)); more candidates -> radix fallback
_CAP = 1024
# candidate tile of the rank selection (a [_CB, _CB] comparison tile)
_CB = 128
# digit widths (bits) of the fallback radix select, most significant first; they sum to the key width
# (tl.histogram costs about (bins / 32) * log2(bins) operations per warp and element group: 256 bins)
_DIGITS_16 = (8, 8, 0, 0)  # bf16 / fp16: 16-bit keys
_DIGITS_32 = (8, 8, 8, 8)  # fp32: 32-bit keys

_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


if _HAVE_TRITON:

    @triton.jit
    def _keys(v, KEY_BITS: tl.constexpr):
        """Order-preserving signed int32 keys of a block of floats (see the module docstring)."""
        if KEY_BITS == 16:
            b = v.to(tl.int16, bitcast=True).to(tl.int32)  # sign-extended
            return b ^ ((b >> 15) & 0x7FFF)
        else:
            b = v.to(tl.int32, bitcast=True)
            return b ^ ((b >> 31) & 0x7FFFFFFF)

    @triton.jit
    def _block_keys(row, cols, cm, MASK, HAS_MASK: tl.constexpr, KEY_BITS: tl.constexpr):
        """(values, keys) of the columns ``cols`` of a row; with ``HAS_MASK`` the columns whose MASK byte is 0 get
        the lowest key of the width (that of a negative NaN, below every finite value's)."""
        v = tl.load(row + cols, mask=cm, other=0.0)
        key = _keys(v, KEY_BITS)
        if HAS_MASK:
            keep = tl.load(MASK + cols, mask=cm, other=0) != 0
            if KEY_BITS == 16:
                key = tl.where(keep, key, -32768)
            else:
                key = tl.where(keep, key, -2147483648)
            v = tl.where(keep, v.to(tl.float32), float("-inf")).to(v.dtype)  # no bf16 constant: interpreter
        return v, key

    @triton.jit
    def _radix_level(
        row,
        n,
        prefix,
        r,
        SHIFT: tl.constexpr,
        BITS: tl.constexpr,
        FIRST: tl.constexpr,
        KEY_BITS: tl.constexpr,
        NBINS: tl.constexpr,
        BLOCK: tl.constexpr,
        MASK,
        HAS_MASK: tl.constexpr,
    ):
        """One level: histogram of the digit ``(K >> SHIFT)`` (BITS wide) over the elements whose
        higher bits equal ``prefix``; returns (new prefix, new rank r within the chosen bin)."""
        hist = tl.zeros([NBINS], dtype=tl.int32)
        for c0 in range(0, n, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            cm = cols < n
            _, key = _block_keys(row, cols, cm, MASK, HAS_MASK, KEY_BITS)
            if FIRST:
                # top digit of a signed key: arithmetic shift, then offset into [0, 2^BITS)
                digit = (key >> SHIFT) + (1 << (BITS - 1))
                m = cm
            else:
                digit = (key >> SHIFT) & ((1 << BITS) - 1)
                m = cm & ((key >> (SHIFT + BITS)) == prefix)
            hist += tl.histogram(digit, NBINS, mask=m)
        bins = tl.arange(0, NBINS)
        suffix = tl.cumsum(hist, 0, reverse=True)  # elements in bins >= b
        sel = tl.sum((suffix >= r).to(tl.int32), 0) - 1  # highest bin whose suffix reaches r
        above = tl.sum(tl.where(bins > sel, hist, 0), 0)
        if FIRST:
            new_prefix = sel - (1 << (BITS - 1))
        else:
            new_prefix = (prefix << BITS) | sel
        return new_prefix, r - above

    @triton.jit
    def _row_topk_kernel(
        X,
        stride_x,
        VAL,
        IDX,
        SCR,
        n,
        k,
        KEY_BITS: tl.constexpr,
        D0: tl.constexpr,
        D1: tl.constexpr,
        D2: tl.constexpr,
        D3: tl.constexpr,
        NBINS: tl.constexpr,
        BLOCK: tl.constexpr,
        G: tl.constexpr,
        USE_BOUND: tl.constexpr,
        CAP: tl.constexpr,
        CB: tl.constexpr,
        KEEP,
        XM,
        POS,
        width,
        COPY: tl.constexpr,
        HAS_POS: tl.constexpr,
    ):
        pid = tl.program_id(0).to(tl.int64)
        row = X + pid * stride_x
        xmrow = XM + pid * width  # COPY: the masked copy's row (contiguous [B, width])
        vrow = VAL + pid * k
        irow = IDX + pid * k
        srow = SCR + pid * CAP
        SENT: tl.constexpr = -2147483648  # below every finite key
        zero = 0 * tl.program_id(0)  # an int32 scalar tensor
        # ---- pass 1: lower bound lo <= (k-th largest key) from the maxima of G column groups
        if USE_BOUND:
            R: tl.constexpr = BLOCK // G
            offs = tl.arange(0, R)[:, None] * G + tl.arange(0, G)[None, :]
            acc = tl.full([R, G], SENT, tl.int32)
            for c0 in range(0, n, BLOCK):
                cols = c0 + offs
                cm = cols < n
                key = _keys(tl.load(row + cols, mask=cm, other=0.0), KEY_BITS)
                acc = tl.maximum(acc, tl.where(cm, key, SENT))
            gmax = tl.max(acc, axis=0)  # [G]: max of the columns c with c % G == g
            srt = tl.sort(gmax)  # ascending
            lo = tl.sum(tl.where(tl.arange(0, G) == G - k, srt, 0), 0)
        else:
            lo = zero + SENT
        # ---- pass 2: compact the candidates (key >= lo) into the row's scratch, in column order
        cnt = zero
        for c0 in range(0, n, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            cm = cols < n
            v = tl.load(row + cols, mask=cm, other=0.0)
            key = _keys(v, KEY_BITS)
            if COPY:  # the row with the columns not kept at -inf, from the same read (no bf16 constant: interpreter)
                kept = tl.load(KEEP + cols, mask=cm, other=0) != 0
                cv = tl.where(kept, v.to(tl.float32), float("-inf")).to(v.dtype)
                if HAS_POS:  # column c goes to column POS[c] of the copy, or nowhere (-1)
                    dst = tl.load(POS + cols, mask=cm, other=-1)
                    tl.store(xmrow + dst, cv, mask=cm & (dst >= 0))
                else:
                    tl.store(xmrow + cols, cv, mask=cm)
            cand = (cm & (key >= lo)).to(tl.int32)
            pos = cnt + tl.cumsum(cand, 0) - 1
            tl.store(srow + pos, cols, mask=(cand > 0) & (pos < CAP))
            cnt += tl.sum(cand, 0)
        tl.debug_barrier()  # the scratch written above is read by other threads of this program
        if cnt <= CAP:
            # ---- exact selection among the candidates: rank = #(larger) + #(equal and earlier);
            # the ranks are a permutation of 0..cnt-1 and the top-k are the ranks < k
            for i0 in range(0, cnt, CB):
                ii = i0 + tl.arange(0, CB)
                im = ii < cnt
                ci = tl.load(srow + ii, mask=im, other=0)
                vi = tl.load(row + ci, mask=im, other=0.0)
                ki = _keys(vi, KEY_BITS)
                rank = tl.zeros([CB], dtype=tl.int32)
                for j0 in range(0, cnt, CB):
                    jj = j0 + tl.arange(0, CB)
                    jm = jj < cnt
                    cj = tl.load(srow + jj, mask=jm, other=0)
                    kj = _keys(tl.load(row + cj, mask=jm, other=0.0), KEY_BITS)
                    beats = (kj[None, :] > ki[:, None]) | ((kj[None, :] == ki[:, None]) & (jj[None, :] < ii[:, None]))
                    rank += tl.sum((beats & jm[None, :]).to(tl.int32), 1)
                w = im & (rank < k)
                tl.store(vrow + rank, vi, mask=w)
                tl.store(irow + rank, ci.to(tl.int64), mask=w)
        else:
            # ---- fallback (more than CAP candidates: heavy ties): radix select over the whole row
            _radix_select(row, n, zero + k, vrow, irow, row, False, KEY_BITS, D0, D1, D2, D3, NBINS, BLOCK)

    @triton.jit
    def _radix_select(
        row,
        n,
        k,
        vrow,
        irow,
        MASK,
        HAS_MASK: tl.constexpr,
        KEY_BITS: tl.constexpr,
        D0: tl.constexpr,
        D1: tl.constexpr,
        D2: tl.constexpr,
        D3: tl.constexpr,
        NBINS: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """Radix select of the exact k-th key of a row (one histogram read per digit: 2 for 16-bit keys, 4 for
        fp32), then one read writing the selection to ``vrow`` / ``irow``."""
        t, r = _radix_level(row, n, 0, k, D1 + D2 + D3, D0, True, KEY_BITS, NBINS, BLOCK, MASK, HAS_MASK)
        t, r = _radix_level(row, n, t, r, D2 + D3, D1, False, KEY_BITS, NBINS, BLOCK, MASK, HAS_MASK)
        if D2 > 0:
            t, r = _radix_level(row, n, t, r, D3, D2, False, KEY_BITS, NBINS, BLOCK, MASK, HAS_MASK)
        if D3 > 0:
            t, r = _radix_level(row, n, t, r, 0, D3, False, KEY_BITS, NBINS, BLOCK, MASK, HAS_MASK)
        _write_selected(row, n, k, t, r, vrow, irow, KEY_BITS, BLOCK, MASK, HAS_MASK)

    @triton.jit
    def _write_selected(
        row,
        n,
        k,
        t,
        need,
        vrow,
        irow,
        KEY_BITS: tl.constexpr,
        BLOCK: tl.constexpr,
        MASK,
        HAS_MASK: tl.constexpr,
    ):
        """Write the elements with key > t (slots 0..k-need-1) and the first ``need`` with key == t
        (slots k-need..k-1), in column order."""
        n_gt_total = k - need
        n_gt = 0 * need
        n_eq = 0 * need
        for c0 in range(0, n, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            cm = cols < n
            v, key = _block_keys(row, cols, cm, MASK, HAS_MASK, KEY_BITS)
            gt = cm & (key > t)
            eq = cm & (key == t)
            packed = gt.to(tl.int32) + (eq.to(tl.int32) << 16)  # BLOCK < 2^15: no carry between halves
            cs = tl.cumsum(packed, 0)
            rank_eq = n_eq + (cs >> 16) - 1
            pos = tl.where(gt, n_gt + (cs & 0xFFFF) - 1, n_gt_total + rank_eq)
            w = gt | (eq & (rank_eq < need))
            tl.store(vrow + pos, v, mask=w)
            tl.store(irow + pos, cols.to(tl.int64), mask=w)
            tot = tl.sum(packed, 0)
            n_gt += tot & 0xFFFF
            n_eq += tot >> 16

    @triton.jit
    def _radix_topk_kernel(
        X,
        stride_x,
        VAL,
        IDX,
        MASK,
        n,
        k,
        HAS_MASK: tl.constexpr,
        KEY_BITS: tl.constexpr,
        D0: tl.constexpr,
        D1: tl.constexpr,
        D2: tl.constexpr,
        D3: tl.constexpr,
        NBINS: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """:func:`_radix_select` on every row: 3 reads of the row for 16-bit keys, 5 for fp32, whatever k
        (``masked_topk``)."""
        pid = tl.program_id(0).to(tl.int64)
        kk = 0 * tl.program_id(0) + k
        _radix_select(
            X + pid * stride_x, n, kk, VAL + pid * k, IDX + pid * k, MASK, HAS_MASK, KEY_BITS, D0, D1, D2, D3, NBINS,
            BLOCK,
        )  # fmt: skip

    @triton.jit(do_not_specialize=["stride_x", "n", "k"])  # one compiled kernel per block and flags
    def _topk_mask_kernel(
        X,
        stride_x,
        COLS,
        KEEP,
        DIV,
        A,
        M,
        n,
        k,
        HAS_COLS: tl.constexpr,
        HAS_KEEP: tl.constexpr,
        HAS_DIV: tl.constexpr,
        OUT_BF16: tl.constexpr,
        KEY_BITS: tl.constexpr,
        ITERS: tl.constexpr,
        LEAN: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """:func:`topk_mask` on one row, its keys held in registers: the k-th largest key T by a binary search
        over the key range (ITERS counting passes over the registers), then one write of the dense selection
        (``LEAN``: its values read again for the selected columns; else the values stay in registers too)."""
        pid = tl.program_id(0).to(tl.int64)
        row = X + pid * stride_x
        c = tl.arange(0, BLOCK)
        cm = c < n
        if HAS_COLS:
            src = tl.load(COLS + c, mask=cm, other=0).to(tl.int32)  # (n_src < 2^31: checked by the caller)
        else:
            src = c
        v = tl.load(row + src, mask=cm, other=0.0)
        key = _keys(v, KEY_BITS)
        keep = cm
        if HAS_KEEP:
            keep = keep & (tl.load(KEEP + src, mask=cm, other=0) != 0)
        SENT: tl.constexpr = -32768 if KEY_BITS == 16 else -2147483648  # below every finite value's key
        key = tl.where(keep, key, SENT)  # from here on a column is kept iff its key > SENT
        # invariant: count(key >= lo) >= k (lo = SENT: all n >= k columns) and count(key >= hi) < k
        lo = (0 * tl.program_id(0)).to(tl.int64) + SENT
        hi = tl.max(key, 0).to(tl.int64) + 1
        for _ in range(ITERS):
            mid = lo + ((hi - lo) >> 1)
            ok = tl.sum((key >= mid.to(tl.int32)).to(tl.int32), 0) >= k
            lo = tl.where(ok, mid, lo)
            hi = tl.where(ok, hi, mid)
        t = lo.to(tl.int32)  # the k-th largest key
        gt = key > t
        eq = key == t
        need = k - tl.sum(gt.to(tl.int32), 0)  # how many keys == t the top k holds: the leftmost ones
        take = (key > SENT) & (gt | (eq & (tl.cumsum(eq.to(tl.int32), 0) <= need)))
        if LEAN:
            # only the keys were live through the search (fewer registers, no spills at wide rows): the
            # selected values and their divisors are read again, for the selected columns only (cache hits)
            if HAS_COLS:
                src = tl.load(COLS + c, mask=take, other=0).to(tl.int32)
            v = tl.load(row + src, mask=take, other=0.0)
        a = v.to(tl.float32)
        if HAS_DIV:
            # IEEE division, as torch's (Triton's "/" on fp32 is the approximate one on CUDA: 1-ulp differences)
            a = tl.math.div_rn(a, tl.load(DIV + src, mask=take, other=1.0))
        a = tl.where(take, a, 0.0)
        if OUT_BF16:
            # round to nearest even by hand (torch's rounding; Triton's interpreter truncates): the carry of
            # the low 16 bits, with ties to the even upper half, then the upper 16 bits
            b = a.to(tl.int32, bitcast=True)
            b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
            tl.store(A + pid * n + c, b.to(tl.int16).to(tl.bfloat16, bitcast=True), mask=cm)
        else:
            tl.store(A + pid * n + c, a, mask=cm)
        tl.store(M + pid * n + c, take.to(tl.int8), mask=cm)


def _prepare(x: torch.Tensor, k: int, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, int]]:
    """Checked input (rows made contiguous), empty outputs ``[B, k]`` (values, int64 indices) and the key
    constexprs of its dtype (key width, radix digits, histogram bins) that both kernels take."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"{name}: x must be a 2-D tensor, got shape {tuple(getattr(x, 'shape', ()))}")
    if x.dtype not in _DTYPES:
        raise ValueError(f"{name}: x.dtype must be bfloat16, float16 or float32, got {x.dtype}")
    B, n = x.shape
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k > n:
        raise ValueError(f"{name}: k must be an int in 1..{n} (x.shape[1]), got {k!r}")
    if n >= 2**31 - 1:
        raise ValueError(f"{name}: rows of {n} columns are too long (int32 column counter)")
    if not _HAVE_TRITON:
        raise RuntimeError(f"{name}: Triton is not installed")
    if x.stride(1) != 1:
        x = x.contiguous()
    vals = torch.empty(B, k, device=x.device, dtype=x.dtype)
    idx = torch.empty(B, k, device=x.device, dtype=torch.int64)
    key_bits, digits = (32, _DIGITS_32) if x.dtype == torch.float32 else (16, _DIGITS_16)
    keys = {"KEY_BITS": key_bits, "D0": digits[0], "D1": digits[1], "D2": digits[2], "D3": digits[3]}
    return x, vals, idx, {**keys, "NBINS": 1 << max(digits)}


def _check_keep(keep: torch.Tensor, n: int, device: torch.device, name: str) -> None:
    """ValueError unless ``keep`` is a 1-D bool tensor of ``n`` entries on ``device`` (a column mask)."""
    ok = isinstance(keep, torch.Tensor) and keep.dtype == torch.bool and keep.shape == (n,) and keep.device == device
    if not ok:
        got = tuple(keep.shape) if isinstance(keep, torch.Tensor) else type(keep).__name__
        raise ValueError(f"{name}: keep must be a 1-D bool tensor of shape ({n},) on {device}, got {got}")


def _default_block(dtype: torch.dtype) -> int:
    """Columns per read of either kernel (the module's block sizes)."""
    return _BLOCK_32 if dtype == torch.float32 else _BLOCK_16


def masked_topk(
    x: torch.Tensor, k: int, keep: torch.Tensor | None = None, *, block: int | None = None, num_warps: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of each row among the columns where ``keep`` (bool ``[x.shape[1]]``) is True, as
    ``x.masked_fill(~keep, -inf).topk(k, dim=1, sorted=False)``: values in ``x.dtype`` (-inf for the columns
    taken beyond the kept ones when a row has fewer than ``k``), int64 column indices, unordered; leftmost
    columns among ties. No mask: every column. Inputs must be finite.

    For large ``k`` (the dead-latent aux loss: k = d_in / 2 of thousands of columns), where :func:`row_topk`'s
    candidate ranking grows as k^2: radix select, one histogram read of the row per 8-bit digit of the key
    (2 for bf16/fp16, 4 for fp32), then one read writing the selection; the mask is applied while reading, so
    no masked copy of ``x`` is made. One program per row, no host synchronisation (graph-capturable).
    ``block``: columns per read (default: the module's block for the dtype), ``num_warps``: per program."""
    x, vals, idx, keys = _prepare(x, k, "masked_topk")
    B, n = x.shape
    if block is not None and (block < 16 or block > 2**14 or block & (block - 1)):
        # tl.arange needs a power of two; the packed counters of _write_selected need BLOCK < 2^15
        raise ValueError(f"masked_topk: block must be a power of two in 16..16384, got {block}")
    if keep is not None:
        _check_keep(keep, n, x.device, "masked_topk")
    if B == 0:
        return vals, idx
    mask = keep.contiguous().view(torch.uint8) if keep is not None else vals  # unused pointer without a mask
    _radix_topk_kernel[(B,)](
        x,
        x.stride(0),
        vals,
        idx,
        mask,
        n,
        k,
        HAS_MASK=keep is not None,
        BLOCK=block or _default_block(x.dtype),
        num_warps=num_warps,
        **keys,
    )
    return vals, idx


def row_topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` of each row of a 2-D bf16/fp16/fp32 tensor: ``(values, indices)`` like
    ``x.topk(k, dim=1, sorted=False)`` (values in ``x.dtype``, int64 column indices, in no particular
    order; among equal values at the threshold the leftmost columns are taken). Inputs must be finite.

    One Triton program per row: a lower bound from column-group maxima, compaction of the candidates
    above it, rank selection among them (radix-select fallback for heavy ties; module docstring);
    no host synchronisation, so the call can be captured in a CUDA graph. Raises ValueError for a
    tensor that is not 2-D, an unsupported dtype, or ``k`` outside ``1 .. x.shape[1]``.
    """
    vals, idx, _ = _row_topk(x, k, None, "row_topk")
    return vals, idx


def row_topk_masked_copy(
    x: torch.Tensor, k: int, keep: torch.Tensor, pos: torch.Tensor | None = None, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`row_topk` of ``x`` and, from the same read of each row, ``x.masked_fill(~keep, -inf)`` (a new
    contiguous tensor; ``keep``: bool ``[x.shape[1]]``). The fast step's dead-latent aux loss takes its top-k
    over such a copy (live latents at -inf) of the pre-activations whose top-k this selects: written here, the
    copy costs one store per element instead of a separate pass that reads the row again (a broadcast
    ``masked_fill``, one of the aux step's larger kernels).

    With ``pos`` (int32 ``[x.shape[1]]``) the copy has ``width`` columns and column ``c`` of ``x`` lands in column
    ``pos[c]`` (none where ``pos[c] < 0``): the caller's gather ``x.masked_fill(~keep, -inf)[:, cols]`` for ``pos``
    the inverse of ``cols`` (distinct columns; every copy column must be some ``pos[c]``, it is not zeroed)."""
    return _row_topk(x, k, keep, "row_topk_masked_copy", pos, width)


def _row_topk(
    x: torch.Tensor,
    k: int,
    keep: torch.Tensor | None,
    name: str,
    pos: torch.Tensor | None = None,
    width: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Launch of :data:`_row_topk_kernel` (with ``keep``: also the masked copy, at ``pos`` if given)."""
    x, vals, idx, keys = _prepare(x, k, name)
    B, n = x.shape
    xm = None
    width = width if pos is not None else n
    if keep is not None:
        _check_keep(keep, n, x.device, name)
        if pos is not None:
            if not isinstance(pos, torch.Tensor) or pos.dtype != torch.int32 or pos.shape != keep.shape:
                raise ValueError(f"{name}: pos must be an int32 tensor shaped like keep")
            if pos.device != x.device:
                raise ValueError(f"{name}: pos must be on {x.device}")
            if isinstance(width, bool) or not isinstance(width, int) or width < 1:
                raise ValueError(f"{name}: width must be a positive int with pos, got {width!r}")
        xm = torch.empty(B, width, device=x.device, dtype=x.dtype)
    if B == 0:
        return vals, idx, xm
    block = _default_block(x.dtype)
    groups = min(_GROUPS, block)
    cap = max(_CAP, 2 * k)
    scratch = torch.empty(B, cap, device=x.device, dtype=torch.int32)
    _row_topk_kernel[(B,)](
        x,
        x.stride(0),
        vals,
        idx,
        scratch,
        n,
        k,
        BLOCK=block,
        G=groups,
        USE_BOUND=k <= groups,
        CAP=cap,
        CB=_CB,
        KEEP=keep.contiguous().view(torch.uint8) if keep is not None else scratch,  # (unused pointer: no copy)
        XM=xm if xm is not None else x,
        POS=pos.contiguous() if pos is not None else scratch,  # (unused pointer without pos)
        width=width,
        COPY=keep is not None,
        HAS_POS=pos is not None,
        num_warps=_NUM_WARPS,
        **keys,
    )
    return vals, idx, xm


#: the widest row :func:`topk_mask` holds in registers (one program per row)
TOPK_MASK_MAX_COLS = 16384
# topk_mask's warps per program (None: block / 1024, in 4..16) and whether only the keys stay in registers
# through the search (the values re-read at the end); benchmarks/training_speed/bench_topk_mask.py sweeps both.
# Keys and values both in registers is the default: at the default warps it was the faster layout at every
# compacted width that script measures (benchmarks/training_speed/aux_rowsat/topk_mask.json)
_TOPK_MASK_WARPS: int | None = None
_TOPK_MASK_LEAN = False


def topk_mask(
    x: torch.Tensor,
    k: int,
    keep: torch.Tensor | None = None,
    cols: torch.Tensor | None = None,
    div: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-``k`` selection of each row as a dense matrix instead of (values, indices): with
    ``S = x[:, cols]`` (``cols``: int64 source columns, default all) and the columns whose source column is
    not in ``keep`` (bool over ``x``'s columns) ranked below every value, returns ``A`` [B, n] (``out_dtype``:
    float32 or bfloat16, rounded to nearest even) with ``A[b, j] = S[b, j] / div[cols[j]]`` where ``j`` is
    among the row's top ``k`` kept columns and 0 elsewhere, and the selection ``M`` [B, n] (bool). Among
    equal values at the threshold the leftmost columns are taken; a row with fewer than ``k`` kept columns
    selects all of them. It equals ``zeros.scatter_(1, i, v / div[cols[i]])`` with
    ``v, i = S.masked_fill(~keep, -inf).topk(k)`` and the non-kept picks dropped: what the dense dead-latent
    aux loss needs, without the indices.

    One Triton program per row with the row in registers (``n <= TOPK_MASK_MAX_COLS``): the k-th largest
    order-preserving key T by bisection over the key range (17 counting passes for 16-bit floats, 33 for
    fp32, all over registers), then ``key > T`` plus the leftmost ``k - #(key > T)`` keys equal to T (a
    cumulative count). One read of the selected columns (and of the k picked values again, which keeps only
    the keys in registers through the search), one write of ``A`` and ``M``; no sorting, no histograms, no
    host synchronisation (graph-capturable). Inputs must be finite."""
    # (k is checked against the selected columns below when cols is given)
    x, _, _, keys = _prepare(x, k if cols is None else 1, "topk_mask")
    B, n_src = x.shape
    n = n_src if cols is None else int(cols.numel())
    if cols is not None:  # its values (in 0..n_src-1) are the caller's to guarantee: checking would sync
        if cols.dim() != 1 or cols.dtype != torch.int64 or cols.device != x.device:
            raise ValueError(f"topk_mask: cols must be a 1-D int64 tensor on {x.device}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k > n:
            raise ValueError(f"topk_mask: k must be an int in 1..{n} (len(cols)), got {k!r}")
    if n > TOPK_MASK_MAX_COLS:
        raise ValueError(f"topk_mask: rows of {n} columns exceed TOPK_MASK_MAX_COLS = {TOPK_MASK_MAX_COLS}")
    for name, t, dt in (("keep", keep, torch.bool), ("div", div, None)):
        if t is not None and (t.shape != (n_src,) or t.device != x.device or (dt is not None and t.dtype != dt)):
            raise ValueError(f"topk_mask: {name} must be a tensor of shape ({n_src},) on {x.device}")
    if out_dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"topk_mask: out_dtype must be torch.float32 or torch.bfloat16, got {out_dtype}")
    A = torch.empty(B, n, device=x.device, dtype=out_dtype)
    M = torch.empty(B, n, device=x.device, dtype=torch.bool)
    if B == 0 or n == 0:
        return A, M
    block = max(128, triton.next_power_of_2(n))  # (few distinct blocks: few compilations)
    _topk_mask_kernel[(B,)](
        x,
        x.stride(0),
        cols if cols is not None else x,
        keep.contiguous().view(torch.uint8) if keep is not None else x,
        div.float().contiguous() if div is not None else x,
        A,
        M.view(torch.int8),
        n,
        k,
        HAS_COLS=cols is not None,
        HAS_KEEP=keep is not None,
        HAS_DIV=div is not None,
        OUT_BF16=out_dtype == torch.bfloat16,
        KEY_BITS=keys["KEY_BITS"],
        ITERS=keys["KEY_BITS"] + 1,
        LEAN=_TOPK_MASK_LEAN,
        BLOCK=block,
        num_warps=_TOPK_MASK_WARPS or max(4, min(16, block // 1024)),
    )
    return A, M
