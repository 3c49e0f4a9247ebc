"""ART's equations written out plainly, against the modules that implement them.

Each function named ``plain_*`` below is written from the paper's equations (Sec. III) as the design
notes settle them, with its own loops, products and softmaxes: no artlib code, no
nn.MultiheadAttention, no nn.TransformerEncoderLayer, no F.cross_entropy. It is fed a copy of the
module's own weights, and the module's values and gradients (inputs and every parameter) must agree
with it in float64 (the semantic bank at its own precision: see BANK_DTYPE); the float32 head must
agree within the tolerance helper's rule.

    RSSA      Eq. 1-3    test_rssa_*
    ARTHead   Eq. 9-18   test_head_*         (Eq. 2-3 through RSSA, Eq. 5-8 through the MTC loss)
    L_sema    Eq. 13-17  test_sema_*         (by hand on 2 classes, 2 videos, C_t = 3; and plainly)
    L_MTC     Eq. 5-8    test_mtc_*          (loops over t, i, j at general T, K)

Legend: B videos, T frames, L tokens per frame, C backbone width, d latent width, K queries,
N_cls classes, N_prom prompts, C_t text width. Choices the paper leaves open and the design notes
fix, taken here as settled: pre-norm layers (LayerNorm eps 1e-5, exact GELU); the decoder normalizes
the memory X^_t once and the responses once at the end; multi-head attention scales by 1/sqrt(d_h);
the top-K classes come from S (not S^a) and use no label; L_sema's cosines carry a learnable logit
scale exp(s), capped at 100; cross-entropies are means (over videos, and over the N_cls rows of
Eq. 16).
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import assert_close

from artlib import RSSA, ARTHead, MTCLoss, SemanticBank

F64 = torch.float64
COS_EPS = 1e-8  # the design notes' eps on the norms of every cosine


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: a second thread only adds synchronization (on a busy 2-core machine a small
    matmul then takes milliseconds instead of microseconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------ plain building blocks
def linear(x, w, b=None):
    y = x @ w.T
    return y if b is None else y + b


def layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)  # biased variance, as LayerNorm
    return (x - mu) / torch.sqrt(var + eps) * w + b


def gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def softmax(x, dim=-1):
    e = torch.exp(x - x.amax(dim, keepdim=True).detach())
    return e / e.sum(dim, keepdim=True)


def cross_entropy(logits, labels):
    """-1/B sum_b log softmax(logits_b)[y_b] (Eq. 10, 11, 14, 16)."""
    lse = torch.log(torch.exp(logits - logits.amax(-1, keepdim=True).detach()).sum(-1))
    lse = lse + logits.amax(-1).detach()
    picked = torch.stack([logits[i, int(y)] for i, y in enumerate(labels)])
    return (lse - picked).mean()


def cos(a, b):
    """Cosine similarity with eps on each norm (a zero vector has cosine 0)."""
    na = torch.sqrt((a * a).sum(-1)).clamp_min(COS_EPS)
    nb = torch.sqrt((b * b).sum(-1)).clamp_min(COS_EPS)
    return (a * b).sum(-1) / (na * nb)


def mha(q_in, kv_in, p, pre, heads):
    """Multi-head attention, Eq. 3's MCA: per head h, softmax over the L keys of
    (Q W^Q_h)(X W^K_h)^T / sqrt(d_h), times X W^V_h; heads concatenated, then the output projection.
    q_in (M, d), kv_in (L, d) -> out (M, d), maps (heads, M, L)."""
    d = q_in.shape[-1]
    dh = d // heads
    w_q, w_k, w_v = p[pre + "in_proj_weight"].split(d)
    b_q, b_k, b_v = p[pre + "in_proj_bias"].split(d)
    q, k, v = linear(q_in, w_q, b_q), linear(kv_in, w_k, b_k), linear(kv_in, w_v, b_v)
    outs, maps = [], []
    for h in range(heads):
        cols = slice(h * dh, (h + 1) * dh)
        a = softmax(q[:, cols] @ k[:, cols].T / math.sqrt(dh), dim=-1)  # (M, L), over L (= WH)
        outs.append(a @ v[:, cols])
        maps.append(a)
    out = linear(torch.cat(outs, -1), p[pre + "out_proj.weight"], p[pre + "out_proj.bias"])
    return out, torch.stack(maps)


def ffn(x, p, w1, w2):
    return linear(
        gelu(linear(x, p[w1 + ".weight"], p[w1 + ".bias"])), p[w2 + ".weight"], p[w2 + ".bias"]
    )


def plain_rssa(p, x, sem, heads, se_layers, act_layers):
    """Eq. 1-3, one frame at a time. x (B,T,L,d), sem = S^topk (B,K,d) -> R (B,T,K,d), and the last
    decoder layer's maps (B,T,heads,K,L). ``p`` maps RSSA's parameter names to tensors."""
    b, t, l, _ = x.shape
    rows, all_maps = [], []
    for bi in range(b):
        row, row_maps = [], []
        for ti in range(t):
            z = torch.cat([x[bi, ti], sem[bi]], 0)  # Eq. 1: concat(X_t, S^topk), (L + K, d)
            for i in range(se_layers):  # MSA: pre-norm transformer layers
                pre = f"se.layers.{i}."
                h = layer_norm(z, p[pre + "norm1.weight"], p[pre + "norm1.bias"])
                z = z + mha(h, h, p, pre + "self_attn.", heads)[0]
                h = layer_norm(z, p[pre + "norm2.weight"], p[pre + "norm2.bias"])
                z = z + ffn(h, p, pre + "linear1", pre + "linear2")
            x_hat, s_hat = z[:l], z[l:]
            q = p["prompts"][ti] + s_hat  # Eq. 2: Q_t = P_t + S^_t
            memory = layer_norm(x_hat, p["memory_norm.weight"], p["memory_norm.bias"])
            for j in range(act_layers):  # Eq. 3: R_t = MCA(Q_t, X^_t) + Q_t, then the FFN
                pre = f"layers.{j}."
                h = layer_norm(q, p[pre + "norm_q.weight"], p[pre + "norm_q.bias"])
                out, maps = mha(h, memory, p, pre + "attn.", heads)
                q = q + out
                h = layer_norm(q, p[pre + "norm_ffn.weight"], p[pre + "norm_ffn.bias"])
                q = q + ffn(h, p, pre + "ffn.0", pre + "ffn.3")
            row.append(layer_norm(q, p["out_norm.weight"], p["out_norm.bias"]))
            row_maps.append(maps)
        rows.append(torch.stack(row))
        all_maps.append(torch.stack(row_maps))
    return torch.stack(rows), torch.stack(all_maps)


def plain_mtc(r, lam, temporal, weights):
    """Eq. 5-8 as the design notes write them, by loops; every term averaged over B.
    r (B,T,K,d) -> (total, spatial, temporal, tracklet)."""
    b, t, k, _ = r.shape
    zero = r.new_zeros(())
    spatial, temp, track = [], [], []
    for bi in range(b):
        s = zero  # Eq. 5: repel the K responses of a frame
        for ti in range(t):
            for i in range(k):
                for j in range(k):
                    if i != j:
                        s = s + cos(r[bi, ti, i], r[bi, ti, j])
        spatial.append(s / (t * k * (k - 1)) if k > 1 else zero)
        c = [cos(r[bi, ti, i], r[bi, ti + 1, i]) for i in range(k) for ti in range(t - 1)]
        if t < 2:  # Eq. 6: attract a query's responses in adjacent frames, up to lam
            temp.append(zero)
        elif temporal == "hinge":
            temp.append(sum(torch.relu(lam - ci) for ci in c) / ((t - 1) * k))
        else:
            temp.append(lam - sum(c) / ((t - 1) * k))
        vec = [torch.cat([r[bi, ti, i] for ti in range(t)]) for i in range(k)]  # vec(Tr_i), T*d
        s = zero  # Eq. 7: repel whole tracklets
        for i in range(k):
            for j in range(k):
                if i != j:
                    s = s + cos(vec[i], vec[j])
        track.append(s / (k * (k - 1)) if k > 1 else zero)
    spatial, temp, track = (torch.stack(v).mean() for v in (spatial, temp, track))
    w_s, w_t, w_tr = weights
    return w_s * spatial + w_t * temp + w_tr * track, spatial, temp, track  # Eq. 8


def plain_aggregate(r, s, mode, tau):
    """Eq. 9 (saliency): S^temp_t = 1/K sum_i softmax_t(<s_i, r_tk> / tau),
    Tr_k^agg = 1/T sum_t r_tk S^temp_t; or the ablation's mean/sum; or every Tr_k laid end to end."""
    b, t, k, _ = r.shape
    out = []
    for bi in range(b):
        per_k = []
        for kk in range(k):
            tr = r[bi, :, kk]  # Tr_k (T, d), Eq. 4
            if mode == "saliency":
                w = sum(softmax(tr @ s[bi, i] / tau, dim=0) for i in range(k)) / k  # (T,)
                per_k.append((tr * w[:, None]).sum(0) / t)
            elif mode == "mean":
                per_k.append(tr.mean(0))
            elif mode == "sum":
                per_k.append(tr.sum(0))
            else:  # "sequence"
                per_k.append(tr.reshape(-1))
        out.append(per_k)
    return out  # [B][K] vectors


def plain_video_consistency(v, agent, labels, scale):
    """Eq. 13-14: S_cls[b, c] = scale * max_j cos(v_b, S^a[j, c]); cross-entropy with y_b."""
    n_prom, n_cls, _ = agent.shape
    scores = torch.stack(
        [
            torch.stack(
                [
                    torch.stack([cos(v[bi], agent[j, c]) for j in range(n_prom)]).max()
                    for c in range(n_cls)
                ]
            )
            for bi in range(v.shape[0])
        ]
    )
    return cross_entropy(scale * scores, labels)


def plain_prototype_consistency(protos, agent, scale):
    """Eq. 15-16: S_prot[c, c'] = scale * 1/N_prom sum_j cos(MLP(W)_c, S^a[j, c']); cross-entropy
    of each row c against class c (the identity), averaged over the N_cls rows."""
    n_prom, n_cls, _ = agent.shape
    sim = torch.stack(
        [
            torch.stack(
                [
                    sum(cos(protos[c], agent[j, c2]) for j in range(n_prom)) / n_prom
                    for c2 in range(n_cls)
                ]
            )
            for c in range(n_cls)
        ]
    )
    return cross_entropy(scale * sim, torch.arange(n_cls))


def plain_head(p, s_bank, tokens, cls, labels, cfg):
    """Steps 1-12 of the design notes (Fig. 3), Eq. 1-18. ``p`` maps ARTHead's parameter names to
    tensors, ``s_bank`` is the buffer S (N_prom, N_cls, C_t). Returns (logits, losses)."""
    k = cfg["num_queries"]
    x = linear(tokens, p["token_proj.weight"], p["token_proj.bias"])  # step 1: C -> d
    video_emb = linear(cls, p["video_proj.weight"], p["video_proj.bias"])  # proj_v(x_cls), C_t
    class_emb = s_bank.mean(0).to(cls.dtype)  # mean over prompts of S (at S's precision)
    with torch.no_grad():  # step 3: top-K classes by cosine, no label, no gradient
        score = torch.stack([cos(video_emb, c_emb) for c_emb in class_emb], -1)  # (B, N_cls)
        idx = torch.argsort(score, dim=-1, descending=True, stable=True)[:, :k]  # (B, K)
    s_topk = linear(class_emb[idx], p["text_proj.weight"], p["text_proj.bias"])  # (B, K, d)
    rssa_p = {n[len("rssa.") :]: v for n, v in p.items() if n.startswith("rssa.")}
    se_layers = cfg["se_layers"] if cfg["use_se"] else 0  # "no SE": X^ = X, S^_t = S^topk
    r, _ = plain_rssa(rssa_p, x, s_topk, cfg["heads"], se_layers, cfg["act_layers"])
    agg = plain_aggregate(r, s_topk, cfg["aggregation"], cfg["ta_temperature"])  # Eq. 9
    fused = torch.stack([torch.cat([cls[bi], *agg[bi]]) for bi in range(len(agg))])
    logits = linear(fused, p["head_con.weight"], p["head_con.bias"])  # Eq. 11
    if labels is None:
        return logits, None
    losses = {}
    losses["v"] = cross_entropy(linear(cls, p["head_v.weight"], p["head_v.bias"]), labels)  # Eq. 10
    losses["con"] = cross_entropy(logits, labels)  # Eq. 11
    mtc = plain_mtc(r, cfg["lam"], cfg["temporal"], cfg["mtc_weights"])  # Eq. 5-8
    losses["mtc"] = mtc[0]
    losses.update(mtc_spatial=mtc[1], mtc_temporal=mtc[2], mtc_tracklet=mtc[3])
    scale = torch.exp(p["logit_scale"]).clamp(max=100.0)
    sema = cls.new_zeros(())  # Eq. 17: L_sema = L_video + L_prot
    if cfg["sema_video"]:
        sema = sema + plain_video_consistency(video_emb, p["bank.agent"], labels, scale)
    if cfg["sema_prot"]:
        w = p["prototypes"]  # W (N_cls, D) -> MLP(W) (N_cls, C_t)
        hidden = gelu(linear(w, p["proto_mlp.0.weight"], p["proto_mlp.0.bias"]))
        protos = linear(hidden, p["proto_mlp.2.weight"], p["proto_mlp.2.bias"])
        sema = sema + plain_prototype_consistency(protos, p["bank.agent"], scale)
    losses["sema"] = sema
    losses["total"] = (  # Eq. 18
        losses["v"] + losses["con"] + cfg["gamma_mtc"] * losses["mtc"] + cfg["gamma_sema"] * sema
    )
    return logits, losses


# ------------------------------------------------------------------------------------------ helpers
def copied_params(module, dtype=F64):
    """An independent copy of every parameter, as leaves that collect their own gradients."""
    return {n: v.detach().clone().to(dtype).requires_grad_() for n, v in module.named_parameters()}


def compare_grads(module, params, inputs, label, lowp=None, **tol):
    """The module's .grad of every parameter, and of the inputs [(name, module_leaf, plain_leaf,
    lowp_leaf or None)], against the plain copies' (``lowp``: the plain copies at the module's
    precision, the tolerance helper's baseline)."""
    for name, mine, ref, low in inputs:
        low = None if low is None else low.grad
        assert_close(mine.grad, ref.grad, lowp_ref=low, name=f"{label}: d/d{name}", **tol)
    for name, v in module.named_parameters():
        if params[name].grad is None:  # a switched-off term: the equations give it no gradient
            assert v.grad is None or not v.grad.any(), f"{label}: {name} got a gradient"
            continue
        assert v.grad is not None, f"{label}: {name} got no gradient"
        low = None if lowp is None else lowp[name].grad
        assert_close(v.grad, params[name].grad, lowp_ref=low, name=f"{label}: d/d{name}", **tol)


# --------------------------------------------------------------------------------------- RSSA, Eq. 1-3
RSSA_CASES = [  # (K, use_se, attn_dropout): attn_dropout > 0 swaps in nn.MultiheadAttention (eval)
    (1, True, 0.0),
    (3, True, 0.0),
    (2, False, 0.0),
    (2, True, 0.1),
]


@pytest.mark.parametrize("k,use_se,attn_dropout", RSSA_CASES)
def test_rssa_matches_plain_equations(k, use_se, attn_dropout):
    b, t, l, d, heads, se_layers, act_layers = 2, 3, 5, 8, 2, 2, 2
    m = RSSA(d, heads, k, t, se_layers, act_layers, attn_dropout=attn_dropout, use_se=use_se)
    m = m.to(F64)
    if attn_dropout > 0:
        m.eval()  # dropout off: the nn.MultiheadAttention path, values and gradients
    with torch.no_grad():  # non-trivial LayerNorm affines and prompts
        for name, v in m.named_parameters():
            if "norm" in name or name == "prompts":
                v.add_(0.3 * torch.randn_like(v))
    p = copied_params(m)
    x = torch.randn(b, t, l, d, dtype=F64, requires_grad=True)
    s = torch.randn(b, k, d, dtype=F64, requires_grad=True)
    x2, s2 = (v.detach().clone().requires_grad_() for v in (x, s))

    r, maps = m(x, s, return_attention=True)
    r_ref, maps_ref = plain_rssa(p, x2, s2, heads, se_layers if use_se else 0, act_layers)
    assert_close(r, r_ref, name="R (Eq. 3)")
    assert_close(maps, maps_ref, name="last decoder layer's maps")

    g = torch.randn_like(r)
    (r * g).sum().backward()
    (r_ref * g).sum().backward()
    compare_grads(m, p, [("x", x, x2, None), ("semantics", s, s2, None)], "RSSA")
    assert all(v.grad is not None for v in p.values())  # every parameter reaches R

    m.eval()  # values with autograd off (PyTorch may take its fused inference path)
    with torch.no_grad():
        assert_close(m(x, s), r_ref, name="R, eval under no_grad")


def test_rssa_prompts_are_per_frame():
    """Eq. 2: frame t's queries use P_t only: changing P_1 moves frame 1's responses alone."""
    m = RSSA(8, 2, 2, 3, 1, 1).to(F64)
    x, s = torch.randn(1, 3, 4, 8, dtype=F64), torch.randn(1, 2, 8, dtype=F64)
    before = m(x, s)
    with torch.no_grad():
        m.prompts[1] += torch.randn(2, 8, dtype=F64)  # (a constant shift would vanish in LN)
    after = m(x, s)
    assert_close(after[:, [0, 2]], before[:, [0, 2]], name="frames 0 and 2")
    assert (after[:, 1] - before[:, 1]).abs().max() > 1e-3


# --------------------------------------------------------------------------------- ARTHead, Eq. 9-18
HEAD_BASE = dict(
    num_queries=2, num_frames=3, heads=4, se_layers=1, act_layers=2, ffn_ratio=2.0,
    gamma_mtc=5.0, gamma_sema=5.0, lam=0.6, temporal="hinge", mtc_weights=(1.0, 1.0, 1.0),
    aggregation="saliency", ta_temperature=1.0, sema_video=True, sema_prot=True, use_se=True,
)  # fmt: skip
HEAD_CASES = {
    "paper": {},
    "linear-tau-weights": dict(temporal="linear", ta_temperature=2.0, mtc_weights=(0.5, 2.0, 0.0)),
    "noSE-mean-K3": dict(use_se=False, aggregation="mean", num_queries=3, sema_prot=False),
    "sequence-noVideo": dict(aggregation="sequence", sema_video=False, gamma_sema=1.5),
}
IN_DIM, N_CLS, N_PROM, C_T, DIM, PROTO_DIM, L_TOK, B = 12, 5, 3, 8, 16, 6, 5, 3
# The bank's precision in the float64 head test: SemanticBank computes at the precision of its
# inputs and bank (float32 at least), so a float64 head is float64 throughout.
BANK_DTYPE = torch.float64


def make_head(dtype, dropout, **overrides):
    cfg = {**HEAD_BASE, **overrides}
    bank = SemanticBank(torch.randn(N_PROM, N_CLS, C_T))
    head = ARTHead(IN_DIM, N_CLS, bank, dim=DIM, dropout=dropout, proto_dim=PROTO_DIM, **cfg)
    with torch.no_grad():  # S^a != S, so that reading the wrong bank shows; affines, prompts, W
        head.bank.agent.add_(0.5 * torch.randn_like(head.bank.agent))
        for name, v in head.named_parameters():
            if "norm" in name or name.endswith("prompts"):
                v.add_(0.3 * torch.randn_like(v))
        head.prototypes.mul_(30.0)
    return head.to(dtype), cfg


def head_inputs(cfg):
    tokens = torch.randn(B, cfg["num_frames"], L_TOK, IN_DIM, dtype=F64)
    return tokens, torch.randn(B, IN_DIM, dtype=F64), torch.tensor([0, 4, 2])


def leaves(*tensors, dtype=F64):
    return [t.detach().clone().to(dtype).requires_grad_() for t in tensors]


def check_head(case, mode, bank_dtype):
    """Eq. 9-18 in float64, values and the gradients of every input and parameter. Train mode with
    dropout 0; eval mode with the paper's dropout 0.5, which eval() switches off."""
    head, cfg = make_head(F64, dropout=0.0 if mode == "train" else 0.5, **HEAD_CASES[case])
    head.bank.to(bank_dtype)
    head.train(mode == "train")
    # L_sema (and the gradients that flow through it) carries the bank's rounding
    sema_tol = {} if bank_dtype == F64 else dict(atol=1e-6, rtol=1e-5)
    p = copied_params(head)
    tokens, cls, labels = head_inputs(cfg)
    tok1, cls1, tok2, cls2 = leaves(tokens, cls, tokens, cls)

    logits_ref, ref = plain_head(p, head.bank.S.detach().clone(), tok2, cls2, labels, cfg)
    logits, losses = head(tok1, cls1, labels)
    assert_close(logits, logits_ref, name="logits (Eq. 11)")
    for key, value in ref.items():
        tol = sema_tol if key in ("sema", "total") else {}
        assert_close(losses[key], value, name=f"L_{key}", **tol)
    with torch.no_grad():  # inference: head_con's logits alone
        assert_close(head(tok1, cls1), logits_ref, name="logits, no labels")

    # gradients in two passes: everything but L_sema at float64's tolerance, then L_sema's
    g = cfg["gamma_sema"]
    parts = [
        ("L - g2 L_sema", losses["total"] - g * losses["sema"], ref["total"] - g * ref["sema"], {}),
        ("L_sema", losses["sema"], ref["sema"], sema_tol),
    ]
    for label, mine, theirs, tol in parts:
        for t in (tok1, cls1, tok2, cls2, *p.values(), *head.parameters()):
            t.grad = None
        if mine.requires_grad:  # L_sema with both terms off is a constant 0
            mine.backward(retain_graph=True)
            theirs.backward(retain_graph=True)
        inputs = [("tokens", tok1, tok2, None), ("cls", cls1, cls2, None)]
        if label == "L_sema":  # no gradient reaches the tokens through L_sema
            assert tok1.grad is None and tok2.grad is None
            inputs = inputs[1:] if cls2.grad is not None else []
        compare_grads(head, p, inputs, f"ARTHead {label}", **tol)


@pytest.mark.parametrize("case", list(HEAD_CASES))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_head_matches_plain_equations(case, mode):
    check_head(case, mode, BANK_DTYPE)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_head_float32_matches_plain_equations(mode):
    """The head as users run it (float32) against the float64 equations: values and gradients within
    twice the error that the same plain equations make in float32 (the tolerance helper's rule)."""
    head, cfg = make_head(torch.float32, dropout=0.0 if mode == "train" else 0.5)
    head.train(mode == "train")
    p64, p32 = copied_params(head, F64), copied_params(head, torch.float32)
    tokens, cls, labels = head_inputs(cfg)
    tok1, cls1, tok3, cls3 = leaves(tokens, cls, tokens, cls, dtype=torch.float32)
    tok2, cls2 = leaves(tokens, cls)
    s_bank = head.bank.S.detach().clone()

    logits_ref, ref = plain_head(p64, s_bank, tok2, cls2, labels, cfg)
    logits_low, low = plain_head(p32, s_bank, tok3, cls3, labels, cfg)
    logits, losses = head(tok1, cls1, labels)
    assert_close(logits, logits_ref, lowp_ref=logits_low, name="logits (Eq. 11)")
    for key, value in ref.items():
        assert_close(losses[key], value, lowp_ref=low[key], name=f"L_{key}")
    losses["total"].backward()
    ref["total"].backward()
    low["total"].backward()
    inputs = [("tokens", tok1, tok2, tok3), ("cls", cls1, cls2, cls3)]
    compare_grads(head, p64, inputs, "ARTHead float32", lowp=p32)


# ----------------------------------------------------------------------------- L_sema, Eq. 13-17
def _hand_bank():
    """N_prom = 2, N_cls = 2, C_t = 3. S^a[j, c]:
    prompt 0: class 0 = (1, 0, 0), class 1 = (0, 1, 0); prompt 1: class 0 = (1, 1, 0),
    class 1 = (0, 0, 3)."""
    s = torch.tensor(
        [[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 3.0]]], dtype=F64
    )
    return SemanticBank(s).to(BANK_DTYPE)


# relative error allowed against the hand values: the bank's rounding (float32: ~1e-7 per cosine)
HAND_REL = 1e-12 if BANK_DTYPE == F64 else 1e-6


def test_sema_video_by_hand():
    """Eq. 13-14 on two videos v_0 = (1, 0, 0) (label 0), v_1 = (0, 2, 0) (label 1), scale 2.

    cosines with S^a[j, c]:    class 0 (j = 0, 1)    class 1 (j = 0, 1)
        v_0                    1, 1/sqrt2            0, 0
        v_1                    0, 1/sqrt2            1, 0
    winner over prompts: S_cls(v_0) = (1, 0), S_cls(v_1) = (1/sqrt2, 1) (a mean would give
    (1/(2 sqrt2), 1/2)). With scale 2:
        L_0 = log(e^2 + e^0) - 2 = log(1 + e^-2)
        L_1 = log(e^sqrt2 + e^2) - 2 = log(1 + e^(sqrt2 - 2))
    L_video = (0.12693 + 0.44255) / 2 ~= 0.28474; dL/dscale = mean_b (softmax . S_cls - S_cls[y]).
    """
    bank = _hand_bank()
    v = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=BANK_DTYPE)
    scale = torch.tensor(2.0, dtype=BANK_DTYPE, requires_grad=True)
    loss = bank.video_consistency_loss(v, torch.tensor([0, 1]), scale)
    r2 = 1 / math.sqrt(2)
    expect = (math.log1p(math.exp(-2)) + math.log1p(math.exp(r2 * 2 - 2))) / 2
    assert loss.item() == pytest.approx(expect, rel=HAND_REL, abs=0)
    assert loss.item() == pytest.approx(0.28474, abs=1e-5)
    loss.backward()
    p0 = 1 / (1 + math.exp(-2))  # v_0: softmax(2, 0)[0]
    q0 = 1 / (1 + math.exp(2 - 2 * r2))  # v_1: softmax(sqrt2, 2)[0]
    d_scale = ((p0 * 1 - 1) + (q0 * r2 + (1 - q0) * 1 - 1)) / 2
    assert scale.grad.item() == pytest.approx(d_scale, rel=HAND_REL, abs=0)


def test_sema_prot_by_hand():
    """Eq. 15-16 with MLP(W) = m_0 = (1, 0, 0), m_1 = (0, 1, 1), scale 2.

    S_prot[c, c'] = 1/2 sum_j cos(m_c, S^a[j, c']):
        c = 0:  c' = 0: (1 + 1/sqrt2) / 2       c' = 1: (0 + 0) / 2 = 0
        c = 1:  c' = 0: (0 + 1/2) / 2 = 1/4    c' = 1: (1/sqrt2 + 1/sqrt2) / 2 = 1/sqrt2
    Row c against target c, times 2, averaged over the 2 rows:
        L_prot = [log(1 + e^(-2 a)) + log(1 + e^(2 (1/4 - 1/sqrt2)))] / 2,  a = (1 + 1/sqrt2) / 2
    ~= (0.16669 + 0.33707) / 2 ~= 0.25188.
    """
    bank = _hand_bank()
    m = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], dtype=BANK_DTYPE)
    scale = torch.tensor(2.0, dtype=BANK_DTYPE)
    loss = bank.prototype_consistency_loss(m, scale)
    r2 = 1 / math.sqrt(2)
    a = (1 + r2) / 2
    expect = (math.log1p(math.exp(-2 * a)) + math.log1p(math.exp(2 * (0.25 - r2)))) / 2
    assert loss.item() == pytest.approx(expect, rel=HAND_REL, abs=0)
    assert loss.item() == pytest.approx(0.25188, abs=1e-5)


def test_sema_terms_match_plain_equations():
    """Eq. 13-16 on random numbers, values and gradients (v, S^a, MLP(W), the scale) against the
    loops above (in float64, and at the bank's precision as the tolerance's baseline); S^a is the
    only bank tensor that gets a gradient."""
    bank = SemanticBank(torch.randn(3, 4, 6)).to(BANK_DTYPE)
    with torch.no_grad():
        bank.agent.add_(torch.randn_like(bank.agent))
    v, protos = torch.randn(5, 6), torch.randn(4, 6)
    scale = torch.tensor(3.0)
    labels = torch.tensor([0, 3, 1, 1, 2])
    mine = [bank.agent, *leaves(v, protos, scale, dtype=BANK_DTYPE)]
    ref = leaves(bank.agent, v, protos, scale)
    low = leaves(bank.agent, v, protos, scale, dtype=BANK_DTYPE) if BANK_DTYPE != F64 else None

    loss = bank.video_consistency_loss(mine[1], labels, mine[3])
    loss = loss + 0.7 * bank.prototype_consistency_loss(mine[2], mine[3])
    values = []
    for agent, v_emb, w, s in [ref] + ([low] if low else []):
        value = plain_video_consistency(v_emb, agent, labels, s)
        value = value + 0.7 * plain_prototype_consistency(w, agent, s)
        value.backward()
        values.append(value)
    loss.backward()
    assert_close(loss, values[0], lowp_ref=values[1] if low else None, name="L_video + 0.7 L_prot")
    for i, name in enumerate(("S^a", "video_emb", "MLP(W)", "scale")):
        base = low[i].grad if low else None
        assert_close(mine[i].grad, ref[i].grad, lowp_ref=base, name=f"d/d{name}")
    assert bank.S.grad is None and not bank.S.requires_grad


# ------------------------------------------------------------------------------- L_MTC, Eq. 5-8
@pytest.mark.parametrize(
    "shape,lam,temporal,weights",
    [
        ((2, 4, 3, 5), 0.6, "hinge", (1.0, 1.0, 1.0)),
        ((3, 5, 2, 4), 0.2, "linear", (0.5, 2.0, 1.5)),
        ((2, 3, 1, 4), 0.9, "hinge", (1.0, 1.0, 1.0)),  # K = 1: spatial and tracklet are 0
    ],
)
def test_mtc_matches_plain_equations(shape, lam, temporal, weights):
    """General T and K (the hand cases in test_nn are T = K = 2): values and dR against loops."""
    r = torch.randn(*shape, dtype=F64)
    r[..., 0] += 1.0  # a shared direction: cosines spread over (-1, 1), some hinges active
    r1, r2 = r.clone().requires_grad_(), r.clone().requires_grad_()
    total, terms = MTCLoss(lam, temporal, weights)(r1, return_terms=True)
    ref = plain_mtc(r2, lam, temporal, weights)
    assert_close(total, ref[0], name="L_MTC (Eq. 8)")
    for key, value in zip(("spatial", "temporal", "tracklet"), ref[1:]):
        assert_close(terms[key], value, name=f"L_{key}")
    g = torch.randn(4, dtype=F64)
    (torch.stack([total, *terms.values()]) * g).sum().backward()
    (torch.stack(list(ref)) * g).sum().backward()
    assert_close(r1.grad, r2.grad, name="dR")
