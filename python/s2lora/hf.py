"""s2lora as a transformers attention implementation: register_transformers() makes
attn_implementation="s2lora" (or another name) available to every model that dispatches through
transformers' attention interface (LLaMA, Mistral, Qwen2 and the like).

What runs: S²-Attn with LongLoRA's settings (G = 1/4 of the sequence, shift G/2, split mode)
while the module trains, full causal attention (the same kernels with one group) in eval mode,
both through s2lora.attention on the [B, S, H, d] memory the projections wrote (transformers'
[B, H, S, d] query is a transposed view of it; a layout that is not is copied once and counted
in COPIES). What is refused, with a message: attention masks other than plain causal (padding,
packed sequences, sliding windows, bidirectional), queries against a KV cache, attention
dropout, and other score modifiers (soft-capping, sinks, position bias).

transformers 4.48 and 4.49 keep attention functions in modeling_utils.ALL_ATTENTION_FUNCTIONS;
4.50 and later (5.x included) in AttentionInterface, and from 4.53 masks in
masking_utils.AttentionMaskInterface, where the name is registered too: transformers then asks
s2lora for the mask, which is None for plain causal attention and a refusal otherwise (without
it, transformers would drop a padding mask for an implementation it does not know).
"""
import threading

import torch

from . import errors
from ._layout import (group_for_call, hf_bhsd_is_packed_bshd,
                      mask_interface_refusal, resolve_group_settings)
from ._torch import attention

COPIES = {"q": 0, "k": 0, "v": 0}  # tensors copied because their layout was not [B, S, H, d]
CALLS = {"s2": 0, "full": 0}       # calls that ran S²-Attn, and full causal attention

# Keyword arguments that change the scores: refused unless None.
_REFUSED_KWARGS = ("sliding_window", "softcap", "s_aux", "sinks", "position_bias", "head_mask")
_CONFIG_KEYS = {"group_size": "s2lora_group_size", "group_ratio": "s2lora_group_ratio",
                "shift": "s2lora_shift", "shift_mode": "s2lora_shift_mode"}


def _refuse(msg):
    raise errors.InvalidArgumentError(f"attn_implementation s2lora: {msg}", errors.ERR_INVALID)


_checked_lock = threading.Lock()
_checked_mask = {"key": None}


def check_plain_causal_mask(mask, q_len):
    """Refuses a materialised mask that is not plain causal over q_len keys. transformers 4.x
    builds a 4-D mask for implementations it does not know ([B, 1, S, S + 1] float: 0 where a
    key is seen, the dtype's minimum where not); 5.x hands over a 4-D mask a caller gave.
    Checked in row blocks (no second N x N tensor) once per mask tensor and version."""
    if mask.dim() == 2:  # a [B, S] padding mask
        if mask.shape[-1] < q_len or not bool((mask[:, :q_len] != 0).all()):
            _refuse("the attention_mask marks padding tokens; s2lora's S²-Attn takes batches "
                    "without padding")
        return
    if mask.dim() != 4 or mask.shape[-2] != q_len or mask.shape[-1] < q_len:
        _refuse(f"an attention mask of shape {list(mask.shape)} for {q_len} queries: only "
                f"plain causal masks over the same {q_len} keys can be honoured")
    key = (mask.data_ptr(), tuple(mask.shape), tuple(mask.stride()), mask._version, q_len)
    with _checked_lock:
        if _checked_mask["key"] == key:
            return
    m = mask[..., :q_len]
    rows = max(1, (1 << 24) // max(1, q_len * m.shape[0] * m.shape[1]))
    cols = torch.arange(q_len, device=m.device)
    for r0 in range(0, q_len, rows):
        r1 = min(q_len, r0 + rows)
        blk = m[:, :, r0:r1, :]
        seen = blk if blk.dtype == torch.bool else blk == 0
        if blk.dtype != torch.bool and not bool(((blk == 0) | (blk == torch.finfo(blk.dtype).min)
                                                  | (blk == float("-inf"))).all()):
            _refuse("the attention mask adds values other than 0 and -inf (a bias): s2lora "
                    "takes plain causal attention")
        want = cols[None, :] <= torch.arange(r0, r1, device=m.device)[:, None]
        if not bool((seen == want).all()):
            _refuse("the attention mask is not plain causal (padding, packed sequences or a "
                    "window); s2lora's S²-Attn takes whole, unpadded sequences")
    with _checked_lock:
        _checked_mask["key"] = key


def as_bshd(name, t):
    """[B, H, S, d] -> the [B, S, H, d] the library reads: a view when t is one (the usual
    case), else a copy, counted in COPIES."""
    if hf_bhsd_is_packed_bshd(tuple(t.shape), tuple(t.stride())):
        return t.transpose(1, 2)
    COPIES[name] += 1
    return t.transpose(1, 2).contiguous()


def make_attention_function(*, group_size=None, group_ratio=None, shift=None, shift_mode=None,
                            full_attention_in_eval=True, full_attention=False, options=None):
    """The function registered with transformers:
    (module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs) ->
    (attn_output [B, S, H, d], None), query [B, H, S, d], key and value [B, Hkv, S, d]."""
    registered = {"group_size": group_size, "group_ratio": group_ratio, "shift": shift,
                  "shift_mode": shift_mode}
    resolve_group_settings(registered, {})  # refuse bad registered values now

    def s2lora_attention_forward(module, query, key, value, attention_mask, scaling=None,
                                 dropout=0.0, **kwargs):
        if dropout and dropout > 0:
            _refuse(f"attention dropout {dropout}: s2lora's kernels have none; set the model "
                    f"config's attention_dropout to 0")
        for k in _REFUSED_KWARGS:
            if kwargs.get(k) is not None:
                _refuse(f"{k}={kwargs[k]!r}: s2lora takes plain (S²-)causal attention, without "
                        f"{k.replace('_', ' ')}")
        if kwargs.get("is_causal") is False or getattr(module, "is_causal", True) is False:
            _refuse("a non-causal (bidirectional) attention; s2lora's is causal")
        b, h, s, d = query.shape
        if key.shape[2] != s:
            _refuse(f"{s} queries against {key.shape[2]} keys (a KV cache, as in generation); "
                    f"s2lora attends a whole sequence to itself: generate with "
                    f"attn_implementation='sdpa'")
        if attention_mask is not None:
            check_plain_causal_mask(attention_mask, s)
        cfg = getattr(module, "config", None)
        from_cfg = {k: getattr(cfg, a, None) for k, a in _CONFIG_KEYS.items()}
        st = resolve_group_settings(registered, from_cfg)
        full = full_attention or (full_attention_in_eval and not module.training)
        g, sh = group_for_call(s, group_size=st["group_size"], group_ratio=st["group_ratio"],
                               shift=st["shift"], full=full)
        CALLS["full" if full else "s2"] += 1
        out = attention(as_bshd("q", query), as_bshd("k", key), as_bshd("v", value),
                        group_size=g, shift=sh, shift_mode=st["shift_mode"],
                        softmax_scale=scaling, options=options)
        return out, None

    return s2lora_attention_forward


def _mask_function(**kw):
    """transformers' mask interface (masking_utils, 4.53+): None for plain causal attention
    over the whole sequence without padding; otherwise the refusal, before any N x N mask is
    made."""
    from transformers import masking_utils
    am = kw.get("attention_mask")
    padding = am is not None and not bool(am.all())
    why = mask_interface_refusal(
        q_length=int(kw.get("q_length", 0)), kv_length=int(kw.get("kv_length", 0)),
        q_offset=int(kw.get("q_offset", 0) or 0), kv_offset=int(kw.get("kv_offset", 0) or 0),
        plain_causal=kw.get("mask_function") is masking_utils.causal_mask_function,
        padding=padding)
    if why:
        _refuse(why)
    return None


def _registries():
    """(register attention function, register mask function or None) for the installed
    transformers; refuses versions before 4.48 clearly."""
    try:
        import transformers
    except ImportError as e:
        raise errors.S2loraError(f"register_transformers needs transformers (4.48 or newer): "
                                 f"{e}") from None
    version = getattr(transformers, "__version__", "?")
    try:
        from transformers import AttentionInterface
        reg_attn = AttentionInterface.register
    except ImportError:
        try:
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        except ImportError:
            raise errors.S2loraError(
                f"transformers {version} has neither AttentionInterface (4.50+) nor "
                f"modeling_utils.ALL_ATTENTION_FUNCTIONS (4.48, 4.49): s2lora needs 4.48 or "
                f"newer") from None
        if not isinstance(ALL_ATTENTION_FUNCTIONS, dict):
            raise errors.S2loraError(f"transformers {version}: ALL_ATTENTION_FUNCTIONS is a "
                                     f"{type(ALL_ATTENTION_FUNCTIONS).__name__}, not the dict "
                                     f"of 4.48 and 4.49")

        def reg_attn(name, fn):
            ALL_ATTENTION_FUNCTIONS[name] = fn
    try:
        from transformers import masking_utils
        reg_mask = masking_utils.AttentionMaskInterface.register
        masking_utils.causal_mask_function  # what _mask_function compares with
    except (ImportError, AttributeError):
        reg_mask = None  # before 4.53: the model builds a 4-D mask, checked per call
    return reg_attn, reg_mask


def register_transformers(name="s2lora", *, group_size=None, group_ratio=None, shift=None,
                          shift_mode=None, full_attention_in_eval=True, full_attention=False,
                          options=None):
    """Registers S²-Attn as transformers attention implementation `name`; then
    `AutoModelForCausalLM.from_pretrained(..., attn_implementation="s2lora")` (or
    model.set_attn_implementation / config._attn_implementation) uses it.

    G and the shift: group_size (tokens) or group_ratio (of each call's sequence length, as
    LongLoRA's int(q_len * group_size_ratio)), and shift (None: G // 2); shift_mode "split"
    (LongLoRA's flash-attn path) or "roll" (its no-flash path and the paper's pseudocode).
    Not given here, they come from the model config's s2lora_group_size, s2lora_group_ratio,
    s2lora_shift and s2lora_shift_mode attributes, else LongLoRA's (1/4, G/2, split).
    full_attention_in_eval: full causal attention when the module is in eval mode (LongLoRA
    evaluates so); full_attention: always. Returns name."""
    if not isinstance(name, str) or not name:
        raise errors.InvalidArgumentError(f"name {name!r}: need a non-empty string",
                                          errors.ERR_INVALID)
    fn = make_attention_function(group_size=group_size, group_ratio=group_ratio, shift=shift,
                                 shift_mode=shift_mode,
                                 full_attention_in_eval=full_attention_in_eval,
                                 full_attention=full_attention, options=options)
    reg_attn, reg_mask = _registries()
    reg_attn(name, fn)
    if reg_mask is not None:
        reg_mask(name, _mask_function)
    return name
