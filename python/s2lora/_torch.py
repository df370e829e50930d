"""s2lora.attention: S²-Attn on PyTorch tensors through libs2lora, as a torch.autograd.Function.

Tensors go to the library as pointers and strides (no copies); the kernels run on PyTorch's
current stream of the tensors' device; the outputs, the LSE and the backward's workspace come
from PyTorch's caching allocator. The kernels are made for a spec composed from the call's
arguments (_layout.attention_call_yaml); each context keeps the attention handle of every
spec it has seen, by the composed text and by the spec's hash, so a call after the first costs
a dictionary look-up.
"""
import ctypes

import torch

from . import _lib, errors
from ._context import context, Spec
from ._layout import attention_call_yaml, attention_operand, is_packed, SHIFT_MODES

_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16"}
SPEC_NAME = "<s2lora.attention arguments>"


def _invalid(msg):
    return errors.InvalidArgumentError(msg, errors.ERR_INVALID)


class Attention:
    """An s2lora_attn handle (kernels loaded on the context's device) and its spec's info."""

    def __init__(self, ctx, spec):
        self.ctx = ctx
        self.info = spec.info()
        self.handle = ctypes.c_void_p()
        with ctx.lock:
            ctx.check(ctx.lib.s2lora_attn_create(ctx.handle, spec.handle,
                                                 ctypes.byref(self.handle)),
                      f"spec {self.info.name}, {self.info.hash[:12]}")

    def free(self):
        if self.handle:
            self.ctx.lib.s2lora_attn_free(self.handle)
            self.handle = ctypes.c_void_p()


def attention_handle(device, yaml_text, options=None):
    """The attention handle for composed spec text on a device (created on first use)."""
    ctx = context(device, options)
    with ctx.lock:
        a = ctx.attn_by_text.get(yaml_text)
        if a is not None:
            return a
        with Spec(ctx, yaml_text, name=SPEC_NAME) as spec:
            h = spec.info().hash
            a = ctx.attn_by_hash.get(h)
            if a is None:
                a = Attention(ctx, spec)
                ctx.attn_by_hash[h] = a
        ctx.attn_by_text[yaml_text] = a
        return a


def _ptr(t):
    return ctypes.c_void_p(t.data_ptr()) if t is not None and t.numel() else ctypes.c_void_p()


def _stream(device):
    return ctypes.c_void_p(torch.cuda.current_stream(device).cuda_stream)


class _Call:
    """What one call passes to the library besides tensors: the handle and the geometry."""
    __slots__ = ("attn", "tokens", "batch", "max_seqlen", "cu_host", "ops", "shapes")


def _args(call, q, k, v, o, lse, cu_seqlens):
    a = _lib.AttnArgs()
    a.tokens, a.batch, a.max_seqlen = call.tokens, call.batch, call.max_seqlen
    if cu_seqlens is not None:
        a.cu_seqlens = ctypes.cast(cu_seqlens.data_ptr(), ctypes.POINTER(ctypes.c_int32))
        if call.cu_host is not None:
            a.cu_seqlens_host = ctypes.cast(call.cu_host.data_ptr(),
                                            ctypes.POINTER(ctypes.c_int32))
    a.q, a.k, a.v, a.o = _ptr(q), _ptr(k), _ptr(v), _ptr(o)
    a.lse = ctypes.cast(_ptr(lse), ctypes.POINTER(ctypes.c_float))
    qo, ko, vo = call.ops
    a.q_stride_token, a.q_stride_head = qo.stride_token, qo.stride_head
    a.k_stride_token, a.k_stride_head = ko.stride_token, ko.stride_head
    a.v_stride_token, a.v_stride_head = vo.stride_token, vo.stride_head
    a.o_stride_token, a.o_stride_head = o.stride(0), o.stride(1)
    return a


def _explain(e, call, tensors):
    """A library refusal of an argument, with the Python shapes and strides beside it."""
    if not isinstance(e, errors.InvalidArgumentError):
        return e
    desc = "; ".join(f"{n}: shape {list(t.shape)}, strides {list(t.stride())}"
                     for n, t in tensors)
    return errors.InvalidArgumentError(
        f"s2lora.attention: {e.message} ({desc}). s2lora reads q, k, v where a QKV projection "
        f"wrote them, packed [tokens, heads, head_dim] or [batch, seq, heads, head_dim]; it does "
        f"not copy: pass .contiguous() tensors if yours are views of something else",
        e.status)


class S2AttnFunction(torch.autograd.Function):
    """forward(q, k, v, cu_seqlens, call) -> o; backward -> dq, dk, dv."""

    @staticmethod
    def forward(fctx, q, k, v, cu_seqlens, call):
        T, H, d = call.tokens, call.ops[0].heads, call.ops[0].d
        o = torch.empty((T, H, d), dtype=q.dtype, device=q.device)
        lse = torch.empty((H, T), dtype=torch.float32, device=q.device)
        args = _args(call, q, k, v, o, lse, cu_seqlens)
        ctx = call.attn.ctx
        with torch.cuda.device(q.device), ctx.lock:
            st = ctx.lib.s2lora_attn_forward(call.attn.handle, ctypes.byref(args),
                                             _stream(q.device))
            try:
                ctx.check(st)
            except errors.S2loraError as e:
                raise _explain(e, call, (("q", q), ("k", k), ("v", v)))
        fctx.call = call
        fctx.save_for_backward(q, k, v, o, lse, cu_seqlens)
        return o.view(call.shapes[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(fctx, dout):
        q, k, v, o, lse, cu_seqlens = fctx.saved_tensors
        call = fctx.call
        T = call.tokens
        ctx = call.attn.ctx
        # The gradient arrives in whatever layout autograd made; the kernels read it packed.
        dout = dout.reshape(o.shape)
        if not is_packed(dout.shape, dout.stride()):
            dout = dout.contiguous()
        qo, ko, vo = call.ops
        dq = torch.empty((T, qo.heads, qo.d), dtype=q.dtype, device=q.device)
        dk = torch.empty((T, ko.heads, ko.d), dtype=k.dtype, device=k.device)
        dv = torch.empty((T, vo.heads, vo.d), dtype=v.dtype, device=v.device)
        args = _args(call, q, k, v, o, lse, cu_seqlens)
        g = _lib.AttnGrads()
        g.dout, g.dq, g.dk, g.dv = _ptr(dout), _ptr(dq), _ptr(dk), _ptr(dv)
        g.dout_stride_token, g.dout_stride_head = dout.stride(0), dout.stride(1)
        g.dq_stride_token, g.dq_stride_head = dq.stride(0), dq.stride(1)
        g.dk_stride_token, g.dk_stride_head = dk.stride(0), dk.stride(1)
        g.dv_stride_token, g.dv_stride_head = dv.stride(0), dv.stride(1)
        with torch.cuda.device(q.device), ctx.lock:
            nbytes = ctx.lib.s2lora_attn_workspace_bytes(call.attn.handle, T)
            ws = torch.empty(nbytes, dtype=torch.uint8, device=q.device)
            g.workspace, g.workspace_bytes = _ptr(ws), nbytes
            st = ctx.lib.s2lora_attn_backward(call.attn.handle, ctypes.byref(args),
                                              ctypes.byref(g), _stream(q.device))
            ctx.check(st)
        qs, ks, vs = call.shapes
        return dq.view(qs), dk.view(ks), dv.view(vs), None, None


def _check_tensor(name, t, device=None, dtype=None):
    if not isinstance(t, torch.Tensor):
        raise _invalid(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cuda":
        raise _invalid(f"{name} is on {t.device}: s2lora runs on CUDA tensors")
    if t.dtype not in _DTYPES:
        raise _invalid(f"{name} is {t.dtype}: s2lora's kernels take torch.bfloat16 or "
                       f"torch.float16")
    if device is not None and t.device != device:
        raise _invalid(f"{name} is on {t.device}, q on {device}: all on one device")
    if dtype is not None and t.dtype != dtype:
        raise _invalid(f"{name} is {t.dtype}, q {dtype}: q, k and v share one dtype")


def attention(q, k, v, *, group_size, shift=None, shift_mode="split", cu_seqlens=None,
              max_seqlen=None, softmax_scale=None, options=None):
    """S²-Attn (LongLoRA's shifted sparse attention; DESIGN.md section 1), differentiable.

    q [T, H, d] or [B, S, H, d]; k, v [T, Hkv, d] or [B, S, Hkv, d] with Hkv dividing H (GQA:
    query head h reads kv head h / (H / Hkv)); torch.bfloat16 or torch.float16, CUDA, one
    device. Tensors are read where they are, packed as a projection writes them (also the
    transposed [B, H, S, d] views transformers makes of [B, S, H, d]); other strides are
    refused with a ValueError naming the tensor, never copied behind your back.

    group_size: G, tokens a group; shift: S (None: G // 2) for heads H/2..H-1; shift_mode:
    "split" (LongLoRA's flash-attn path) or "roll" (the paper's pseudocode); softmax_scale:
    None for 1/sqrt(d). cu_seqlens: int32 CUDA tensor [B + 1] of a packed varlen batch of
    [T, heads, d] tensors (groups restart at each sequence); max_seqlen its longest sequence
    (None: read from cu_seqlens, which synchronises, and the library then checks
    cu_seqlens against it). options: s2lora.ContextOptions for the device's context.

    Returns o with q's shape. The backward returns dq, dk, dv (dk, dv summed over the query
    heads that share a kv head)."""
    _check_tensor("q", q)
    _check_tensor("k", k, q.device, q.dtype)
    _check_tensor("v", v, q.device, q.dtype)
    if shift_mode not in SHIFT_MODES:
        raise _invalid(f"shift_mode '{shift_mode}': valid {', '.join(SHIFT_MODES)}")
    if not q.dim() == k.dim() == v.dim():
        raise _invalid(f"q, k, v have {q.dim()}, {k.dim()}, {v.dim()} dimensions: give all as "
                       f"[tokens, heads, d] or all as [batch, seq, heads, d]")
    ops = tuple(attention_operand(n, t.shape, t.stride()) for n, t in (("q", q), ("k", k),
                                                                         ("v", v)))
    qo, ko, vo = ops
    if tuple(k.shape) != tuple(v.shape):
        raise _invalid(f"k {list(k.shape)} and v {list(v.shape)} differ in shape")
    if q.shape[:-2] != k.shape[:-2]:
        raise _invalid(f"q {list(q.shape)} and k {list(k.shape)} differ in their token "
                       f"dimensions")
    if ko.d != qo.d:
        raise _invalid(f"q's head_dim {qo.d} and k's {ko.d} differ")
    if ko.heads < 1 or qo.heads % ko.heads:
        raise _invalid(f"k and v have {ko.heads} heads, which does not divide q's {qo.heads} "
                       f"(GQA needs num_kv_heads dividing num_heads)")
    if qo.tokens < 1:
        raise _invalid(f"q {list(q.shape)} holds no tokens")
    if qo.tokens > 2**31 - 1:
        raise _invalid(f"q {list(q.shape)} holds {qo.tokens} tokens; at most 2^31 - 1 a call")

    call = _Call()
    call.ops, call.tokens, call.cu_host = ops, qo.tokens, None
    call.shapes = (tuple(q.shape), tuple(k.shape), tuple(v.shape))
    if cu_seqlens is None:
        if max_seqlen is not None:
            raise _invalid("max_seqlen is for a varlen batch: give cu_seqlens with it")
        call.batch, call.max_seqlen = qo.batch, qo.seq
    else:
        if q.dim() != 3:
            raise _invalid(f"cu_seqlens packs sequences along one token dimension: q, k, v "
                           f"must be [tokens, heads, d], got q {list(q.shape)}")
        if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dtype != torch.int32 \
                or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 \
                or cu_seqlens.device != q.device or cu_seqlens.stride(0) != 1:
            raise _invalid(f"cu_seqlens must be a contiguous int32 tensor [batch + 1] on "
                           f"{q.device}, got "
                           f"{getattr(cu_seqlens, 'dtype', type(cu_seqlens).__name__)} "
                           f"{list(getattr(cu_seqlens, 'shape', []))} on "
                           f"{getattr(cu_seqlens, 'device', '?')}")
        call.batch = cu_seqlens.numel() - 1
        if max_seqlen is None:
            host = cu_seqlens.cpu()
            call.cu_host = host  # the library checks it against tokens and max_seqlen
            lens = host[1:] - host[:-1]
            max_seqlen = int(lens.max())
        if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int) or max_seqlen < 1:
            raise _invalid(f"max_seqlen {max_seqlen!r}: need a positive int")
        call.max_seqlen = max_seqlen

    text = attention_call_yaml(
        num_heads=qo.heads, num_kv_heads=ko.heads, head_dim=qo.d, max_seqlen=call.max_seqlen,
        group_size=group_size, shift=shift, shift_mode=shift_mode, softmax_scale=softmax_scale,
        dtype=_DTYPES[q.dtype])
    call.attn = attention_handle(q.device.index if q.device.index is not None
                                 else torch.cuda.current_device(), text, options)
    return S2AttnFunction.apply(q, k, v, cu_seqlens, call)
