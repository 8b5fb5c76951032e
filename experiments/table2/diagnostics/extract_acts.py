"""Extract Gemma-3-270M blocks.9.hook_resid_post activations on CPU for l1_massive_dim.py.

GGUF model truncated to its first 10 blocks (hf_model(n_layers=10), float32); a forward hook on decoder layer 9
(= TransformerLens blocks.9.hook_resid_post; output_hidden_states[10] of the truncated model is the *final-normed*
stream, so it is NOT used); the first row also runs the full head to check that. BOS (2) and pad (0) positions
dropped. Rows: N_TRAIN random train rows and N_HELDOUT random held-out rows of .carry/corpus_table2_gemma3/tokens.npz
(numpy seed 0). Writes /tmp/diag/acts.pt. Usage: .venv/bin/python experiments/table2/diagnostics/extract_acts.py 160 40
"""

import sys
import time

import numpy as np
import torch

from sae_rdp_plugin.lm.models import hf_model

torch.set_num_threads(1)

n_tr, n_ho = int(sys.argv[1]), int(sys.argv[2])
z = np.load(".carry/corpus_table2_gemma3/tokens.npz")
tr, ho = z["train"], z["heldout"]
print(tr.shape, ho.shape, flush=True)
rng = np.random.default_rng(0)
rows = {"train": tr[rng.choice(len(tr), n_tr, replace=False)], "heldout": ho[rng.choice(len(ho), n_ho, replace=False)]}
t0 = time.time()
hf, tok = hf_model("gemma3-270m", n_layers=10, dtype="float32")
print("loaded", time.time() - t0, type(hf).__name__, len(hf.model.layers), flush=True)
pad = getattr(tok, "pad_token_id", None)
print("pad", pad, "bos", tok.bos_token_id)
cap = {}


def hook(m, i, o):
    cap["x"] = (o[0] if isinstance(o, tuple) else o).detach()


hf.model.layers[9].register_forward_hook(hook)
out = {}
check = None
for split, R in rows.items():
    acts = []
    for j, r in enumerate(R):
        ids = torch.tensor(r[None].astype(np.int64))
        with torch.no_grad():
            o = (hf if check is None else hf.model)(input_ids=ids, output_hidden_states=(check is None))
        x = cap["x"][0]
        if check is None:
            hs = o.hidden_states
            check = {
                "n_hidden": len(hs),
                "hook_vs_hs10_maxabs": float((hs[10][0] - x).abs().max()) if len(hs) > 10 else None,
                "hook_vs_hs9_maxabs": float((hs[9][0] - x).abs().max()),
            }
            print("check", check, flush=True)
        keep = torch.tensor((r != 2) & (r != (pad if pad is not None else -1)))
        acts.append(x[keep].float())
        if j % 10 == 0:
            print(split, j, time.time() - t0, flush=True)
    out[split] = torch.cat(acts)
out["check"] = check
torch.save(out, "/tmp/diag/acts.pt")
print("done", {k: v.shape for k, v in out.items() if torch.is_tensor(v)}, time.time() - t0)
