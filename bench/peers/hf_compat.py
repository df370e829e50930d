"""What the peer scripts need from transformers across its 4.x and 5.x spellings.

transformers 5 keeps RoPE settings in config.rope_parameters ({"rope_type", "factor",
"rope_theta"}); 4.x in rope_scaling ({"type", "factor"}) beside rope_theta. llama_config()
builds a LlamaConfig with linear position interpolation by `factor` in whichever spelling the
installed version reads, and checks that the config kept it: a peer without the scaling would
compare against a different function.
"""
import transformers
from transformers import LlamaConfig


def llama_config(*, factor, theta=10000.0, **shape):
    major = int(transformers.__version__.split(".")[0])
    if major >= 5:
        rp = {"rope_type": "linear" if factor != 1 else "default", "rope_theta": float(theta)}
        if factor != 1:
            rp["factor"] = float(factor)
        cfg = LlamaConfig(rope_parameters=rp, **shape)
        kept = getattr(cfg, "rope_parameters", None) or {}
    else:
        scaling = {"type": "linear", "factor": float(factor)} if factor != 1 else None
        cfg = LlamaConfig(rope_theta=float(theta), rope_scaling=scaling, **shape)
        kept = getattr(cfg, "rope_scaling", None) or {}
    if factor != 1 and float(kept.get("factor", 1.0)) != float(factor):
        raise SystemExit(f"transformers {transformers.__version__}: LlamaConfig dropped the linear "
                         f"RoPE factor {factor} (kept {kept}); the peer would not match")
    return cfg
