#!/usr/bin/env python3
"""A twin of the trainer outside it: does a small LLaMA-style byte model, written here in JAX
(no s2lora code; CPU is enough), learn bench/paper_claim.py's dense recall at all, and how fast?
The model is the trainer's kind (RMSNorm, RoPE as Hugging Face rotates it, SwiGLU, untied head,
normal(0, 0.02) init, byte vocabulary of 264), trained from scratch on dense-recall documents of
--ctx tokens (--share of them; the rest passkey documents) with AdamW (betas 0.9/0.999, eps 1e-8,
weight decay 0.01), --lr after 100 warm-up steps on a cosine to 0, --clip the global gradient
norm (0: none, as the trainer), --batch documents a step. Every --every steps it scores 32
held-out dense-recall documents: digit accuracy (argmax given the true prefix), the first
digit of each recall alone, and the mean NLL of the recalled digits (ln 10 = 2.303 at chance).

  pip install "jax[cpu]" optax
  python3 bench/paper_claim_twin.py --steps 4000 --heads 2            # the trainer's settings
  python3 bench/paper_claim_twin.py --steps 4000 --heads 4 --clip 1   # 4 heads of 32
  python3 bench/paper_claim_twin.py --steps 2000 --batch 32 --heads 2 --extend 1024
  python3 bench/paper_claim_twin.py --steps 2000 --batch 32 --heads 2 --extend 1024 --rope-factor 4

--rope-factor F trains with positions divided by F (linear RoPE scaling, as the trainer's
rope_factor: paper-claim.sh's S2_PC_PRE_ROPE=ext is 4). --extend N, after training, scores
held-out dense-recall documents of N tokens with full attention, no fine-tuning, once with the
positions interpolated to the trained range (divided by F x N / ctx: what the extension starts
from) and once at the training factor (extrapolated), by the recall's distance: whether the
extension's RoPE alone takes the recall away.

It is what the trainer's phase-1 failure is held against (bench/RESULTS.md, "The paper's
claim"): the same task and optimizer in an independent implementation.
"""
import argparse
import math
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import paper_claim as pc  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

ap = argparse.ArgumentParser(description="a JAX twin of the trainer on the dense-recall task")
ap.add_argument("--ctx", type=int, default=256, help="document length in tokens")
ap.add_argument("--d", type=int, default=128, help="hidden size")
ap.add_argument("--heads", type=int, default=4)
ap.add_argument("--layers", type=int, default=2)
ap.add_argument("--steps", type=int, default=3000)
ap.add_argument("--batch", type=int, default=8, help="documents a step")
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--final-lr", type=float, default=0.0, help="where the cosine ends")
ap.add_argument("--clip", type=float, default=0.0, help="global gradient norm; 0: none")
ap.add_argument("--share", type=float, default=1.0, help="dense-recall share of the documents")
ap.add_argument("--every", type=int, default=250, help="steps between evaluations")
ap.add_argument("--seed", type=int, default=1)
ap.add_argument("--rope-factor", type=float, default=1.0,
                help="positions divided by this while training (linear RoPE scaling)")
ap.add_argument("--extend", type=int, default=0,
                help="after training, score dense recall at this length (a multiple of --ctx)")
a = ap.parse_args()
if a.extend and (a.extend < a.ctx or a.extend % a.ctx):
    ap.error(f"--extend {a.extend}: a multiple of --ctx {a.ctx} (e.g. {4 * a.ctx})")
if a.steps <= 100:
    ap.error(f"--steps {a.steps}: more than the 100 warm-up steps")
if a.rope_factor <= 0:
    ap.error(f"--rope-factor {a.rope_factor}: a positive factor (1: none)")
V, C, D, H, L = pc.VOCAB, a.ctx, a.d, a.heads, a.layers
HD = D // H
INTER = (D * 8 // 3 + 15) // 16 * 16  # the specs' rule: ~8/3 hidden, a multiple of 16


def document(rng, share, ctx=None):
    """One document's tokens (BOS ... EOS, ctx of them, default --ctx) and its recalls
    (kv_document's)."""
    ctx = ctx or C
    if rng.random() < share:
        text, answers = pc.kv_document(ctx, rng)
    else:
        d = pc.passkey_doc(ctx, rng, rng.randint(0, pc.filler_room(ctx)), None)
        text, answers = d["text"], []
    toks = np.frombuffer(bytes(pc.doc_tokens(text)), dtype=np.uint16).astype(np.int32)
    return toks, answers


def init(key):
    keys = iter(jax.random.split(key, 8 + 9 * L))

    def normal(*shape):
        return 0.02 * jax.random.normal(next(keys), shape, jnp.float32)
    p = {"emb": normal(V, D), "head": normal(D, V), "norm": jnp.ones(D), "layers": []}
    for _ in range(L):
        p["layers"].append({"n1": jnp.ones(D), "n2": jnp.ones(D), "wq": normal(D, D),
                            "wk": normal(D, D), "wv": normal(D, D), "wo": normal(D, D),
                            "wg": normal(D, INTER), "wu": normal(D, INTER),
                            "wd": normal(INTER, D)})
    return p


def rmsnorm(x, w):
    return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-5) * w


def rope_tables(n, factor):
    """cos and sin [n, HD] of positions 0..n-1 divided by factor (linear RoPE scaling)."""
    ang = np.outer(np.arange(n) / factor, 1.0 / (10000 ** (np.arange(0, HD, 2) / HD)))
    return (jnp.asarray(np.concatenate([np.cos(ang)] * 2, -1)),
            jnp.asarray(np.concatenate([np.sin(ang)] * 2, -1)))


COS, SIN = rope_tables(C, a.rope_factor)


def rope(x, cos, sin):  # [T, H, HD], the halves rotated as Hugging Face's rotate_half
    t = x.shape[0]
    rot = jnp.concatenate([-x[..., HD // 2:], x[..., :HD // 2]], -1)
    return x * cos[:t, None] + rot * sin[:t, None]


def forward(p, toks, cos=None, sin=None):  # toks [T] -> logits [T, V]
    t = toks.shape[0]
    cos, sin = (COS, SIN) if cos is None else (cos, sin)
    causal = jnp.tril(jnp.ones((t, t), bool))
    x = p["emb"][toks]
    for lw in p["layers"]:
        h = rmsnorm(x, lw["n1"])
        q = rope((h @ lw["wq"]).reshape(t, H, HD), cos, sin)
        k = rope((h @ lw["wk"]).reshape(t, H, HD), cos, sin)
        v = (h @ lw["wv"]).reshape(t, H, HD)
        s = jnp.where(causal, jnp.einsum("qhd,khd->hqk", q, k) / math.sqrt(HD), -1e30)
        x = x + jnp.einsum("hqk,khd->qhd", jax.nn.softmax(s, -1), v).reshape(t, D) @ lw["wo"]
        h = rmsnorm(x, lw["n2"])
        x = x + (jax.nn.silu(h @ lw["wg"]) * (h @ lw["wu"])) @ lw["wd"]
    return rmsnorm(x, p["norm"]) @ p["head"]


def batch_logits(p, toks):  # [B, T + 1] -> logits of the first T
    return jax.vmap(lambda t: forward(p, t[:-1]))(toks)


def loss_fn(p, toks):
    logits = batch_logits(p, toks)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, toks[:, 1:]))


schedule = optax.warmup_cosine_decay_schedule(0.0, a.lr, 100, a.steps, a.final_lr)
adamw = optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)
opt = optax.chain(optax.clip_by_global_norm(a.clip), adamw) if a.clip > 0 else adamw


@jax.jit
def step(p, state, toks):
    loss, grads = jax.value_and_grad(loss_fn)(p, toks)
    updates, state = opt.update(grads, state, p)
    return optax.apply_updates(p, updates), state, loss


held = [document(random.Random(f"held-out {i}"), 1.0) for i in range(32)]
held_toks = jnp.asarray(np.stack([t for t, _ in held]))
score_logits = jax.jit(batch_logits)


def evaluate(p):
    """(digit accuracy, first-digit accuracy, answer NLL) over the held-out recalls."""
    logits = np.asarray(score_logits(p, held_toks), dtype=np.float64)
    hits = first = n_first = n = 0
    nll = 0.0
    for b, (_, answers) in enumerate(held):
        for i, (pos, digit, _) in enumerate(answers):
            row = logits[b, pos - 1]  # the logits that predict the token at pos
            want = digit + ord("0") + pc.BYTE_OFFSET
            hit = int(np.argmax(row) == want)
            hits, n = hits + hit, n + 1
            nll += row.max() + math.log(np.exp(row - row.max()).sum()) - row[want]
            if i % pc.KV_DIGITS == 0:
                first, n_first = first + hit, n_first + 1
    return hits / n, first / n_first, nll / n


# the distance buckets of evaluate_extended, and the far ones together (paper_claim.kv_groups)
BUCKETS, FAR = pc.parse_buckets("0,64,128,256,512"), 512


def evaluate_extended(p, n, factor):
    """Dense recall on 16 held-out documents of n tokens with positions divided by factor:
    digit accuracy by distance bucket, answer NLL, mean NLL of every token."""
    docs = [document(random.Random(f"extended {i}"), 1.0, n) for i in range(16)]
    cos, sin = rope_tables(n, factor)
    run = jax.jit(jax.vmap(lambda t: forward(p, t[:-1], cos, sin)))
    toks = jnp.asarray(np.stack([t for t, _ in docs]))
    logits = np.asarray(run(toks), dtype=np.float64)
    lse = logits.max(-1) + np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1))
    tok = np.asarray(toks)[:, 1:]
    all_nll = float(np.mean(lse - np.take_along_axis(logits, tok[..., None], -1)[..., 0]))
    hits, cnt, nll = {}, {}, 0.0
    for b, (_, answers) in enumerate(docs):
        for pos, digit, dist in answers:
            want = digit + ord("0") + pc.BYTE_OFFSET
            for g in pc.kv_groups(BUCKETS, FAR, dist):
                hits[g] = hits.get(g, 0) + int(np.argmax(logits[b, pos - 1]) == want)
                cnt[g] = cnt.get(g, 0) + 1
            nll += lse[b, pos - 1] - logits[b, pos - 1, want]
    groups = [pc.bucket_name(lo, hi) for lo, hi in BUCKETS] + [f"{FAR}+"]
    acc = " ".join(f"{g}: {hits[g] / cnt[g]:.3f} ({cnt[g]})" for g in groups if g in cnt)
    return acc, nll / cnt["all"], all_nll


def main():
    rng = random.Random(a.seed)
    p = init(jax.random.PRNGKey(a.seed))
    state = opt.init(p)
    t0, ema = time.time(), None
    for it in range(1, a.steps + 1):
        toks = jnp.asarray(np.stack([document(rng, a.share)[0] for _ in range(a.batch)]))
        p, state, loss = step(p, state, toks)
        ema = float(loss) if ema is None else 0.98 * ema + 0.02 * float(loss)
        if it % a.every == 0 or it == a.steps:
            acc, first, nll = evaluate(p)
            print(f"step {it} loss_ema {ema:.3f} digit_acc {acc:.3f} first_digit {first:.3f} "
                  f"answer_nll {nll:.3f} {time.time() - t0:.0f}s", flush=True)
    if a.extend:
        f = a.rope_factor
        for what, n, factor in ((f"at {C}, as trained", C, f),
                                (f"at {a.extend}, interpolated x{a.extend // C}", a.extend,
                                 f * a.extend / C),
                                (f"at {a.extend}, as trained (extrapolated)", a.extend, f)):
            acc, nll, all_nll = evaluate_extended(p, n, factor)
            print(f"extend {what} (positions / {factor:g}): digit_acc by distance {acc}; "
                  f"answer_nll {nll:.3f}; all-token nll {all_nll:.3f}", flush=True)


if __name__ == "__main__":
    main()
