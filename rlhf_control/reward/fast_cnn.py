"""The faster path through the paper's Atari CNN: the same network, the same parameters, fewer passes.

:class:`~rlhf_control.reward.nets.CNNReward`'s own ``forward`` is the plain path: it scales the
pixels by 1/255 and uses ``nn.Dropout``. :func:`member_forward` computes the same function of the
same parameters (and updates the same batch-norm statistics) with these changes, measured on a
2-core CPU by ``scripts/bench_reward.py`` (one 64-pair batch, 3,200 frame stacks, one thread):

- The 1/255 pixel scale goes into the first convolution's weights (``conv(x/255, W) = conv(x, W/255)``)
  instead of a pass over 90M input values (about 0.17 s of 1.9 s per batch).
- Dropout with p = 0.5 (the paper's) draws one random bit per unit (8 per random byte, mapped through
  a 256 x 8 table to the mask values 0 and 2) instead of ``bernoulli_``, which draws a float per unit
  (0.45 s per batch on the first layer's 35M units). The mask is still Bernoulli(1/2) per unit, times
  1/(1-p), from torch's generator, so training stays seeded; other rates use ``F.dropout``.
- In evaluation (no grad), a batch of pixels is converted to float once for all members
  (:func:`ensemble_forward`) rather than once per member.
- Less is kept for backward (1,071 MB per 64-pair batch before): the uint8 pixels instead of their
  float copy (converted again for the first layer's weight gradient), and each leaky ReLU + dropout
  pair keeps its output and its random bytes, not the leaky output and a float mask.
- A training step's peak memory is lower (the reward worker's, at the paper's window: README, Atari
  memory): the first convolution converts ``PIXEL_CHUNK`` stacks to float at a time in the forward
  too, and in training each batch norm + leaky ReLU + p=0.5 dropout triple is one autograd step
  (:class:`_NormLeakyBitDropout`) whose backward works in pieces and holds only batch norm's input,
  the incoming gradient and the outgoing one of a layer at once.

Layouts stay channels-last (the input ``(N, H, W, C)`` permuted), the fastest convolution path here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from rlhf_control.reward.nets import CNNReward

_BIT_TABLES: dict[torch.device, torch.Tensor] = {}


def _bit_table(device: torch.device) -> torch.Tensor:
    """``(256, 8)`` float32: row b holds the 8 bits of b (low first) times 2, the p=0.5 mask values."""
    table = _BIT_TABLES.get(device)
    if table is None:
        bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
        table = _BIT_TABLES[device] = (bits.float() * 2.0).to(device)
    return table


def _memory_order_view(flat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``flat`` (numel values in ``like``'s memory order) viewed with ``like``'s shape and strides."""
    if like.dim() == 4 and not like.is_contiguous() and like.is_contiguous(memory_format=torch.channels_last):
        n, c, h, w = like.shape
        return flat.view(n, h, w, c).permute(0, 3, 1, 2)
    return flat.view(like.shape)


def bit_dropout_mask(like: torch.Tensor) -> torch.Tensor:
    """A p=0.5 dropout mask for ``like``: each value independently 0 or 2 with probability 1/2, laid
    out like ``like`` (channels-last stays channels-last), drawn from torch's default generator."""
    n = like.numel()
    random_bytes = torch.empty((n + 7) // 8, dtype=torch.uint8, device=like.device).random_()
    flat = _bit_table(like.device).index_select(0, random_bytes.int()).view(-1)[:n]
    return _memory_order_view(flat.to(like.dtype), like)


class _LeakyBitDropout(torch.autograd.Function):
    """``leaky_relu(x, slope) * mask`` with the p=0.5 bit mask, keeping for backward only the output
    (the next convolution keeps it anyway) and the random bytes: not the leaky output and the float
    mask (2 x 138 MB per 64-pair batch on the first layer). Where the mask is 0 the gradient is 0;
    elsewhere ``out > 0`` exactly where ``x > 0``, so the output gives the leaky ReLU's slope."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, slope: float) -> torch.Tensor:  # noqa: ANN001
        # In place, as nn.LeakyReLU(inplace=True) does: x comes from batch norm or a convolution, neither
        # of which keeps its output (autograd's version check would refuse the backward otherwise).
        n = x.numel()
        random_bytes = torch.empty((n + 7) // 8, dtype=torch.uint8, device=x.device).random_()
        out = F.leaky_relu_(x, slope).mul_(_mask_from_bytes(random_bytes, x))
        ctx.mark_dirty(out)
        ctx.slope = slope
        ctx.save_for_backward(out, random_bytes)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        out, random_bytes = ctx.saved_tensors
        g = _mask_from_bytes(random_bytes, out).mul_(grad)
        # One pass, in place: g where out > 0, else g * slope (the leaky ReLU's backward from its output).
        return torch.ops.aten.leaky_relu_backward.grad_input(g, out, ctx.slope, True, grad_input=g), None


def _mask_from_bytes(random_bytes: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    flat = _bit_table(like.device).index_select(0, random_bytes.int()).view(-1)[: like.numel()]
    return _memory_order_view(flat.to(like.dtype), like)


NORM_CHUNK_BYTES = 4 * 2**20  # float values per piece of the fused batch norm's passes (4 MB)


class _Pieces:
    """Sample ranges of ``x (N, C, H, W)`` of about ``NORM_CHUNK_BYTES``, each starting at a multiple of
    8 samples (so a piece's dropout bits start on a whole random byte: the batch is outermost in
    memory), and ``n_bufs`` scratch buffers of one piece, reused by every piece: a new buffer per
    piece costs its page faults again each time."""

    def __init__(self, x: torch.Tensor, n_bufs: int) -> None:
        self.per = x[0].numel()
        step = max(8, NORM_CHUNK_BYTES // max(1, self.per * x.element_size()) // 8 * 8)
        self.ranges = [(a, min(a + step, len(x))) for a in range(0, len(x), step)]
        like = x[: min(step, len(x))]
        self.bufs = [torch.empty_like(like) for _ in range(n_bufs)]
        n_bytes = (len(like) * self.per + 7) // 8
        self._idx = torch.empty(n_bytes, dtype=torch.int32, device=x.device)
        self._bits = torch.empty((n_bytes, 8), dtype=x.dtype, device=x.device)
        self._table = _bit_table(x.device).to(x.dtype)

    def mask(self, random_bytes: torch.Tensor, x: torch.Tensor, a: int, b: int) -> torch.Tensor:
        """The dropout mask (0 or 2) of samples ``a:b`` of ``x``, laid out like them (in a scratch buffer)."""
        n = (b - a) * self.per
        nb = (n + 7) // 8
        idx = self._idx[:nb]
        idx.copy_(random_bytes[a * self.per // 8 : a * self.per // 8 + nb])
        bits = self._bits[:nb]
        torch.index_select(self._table, 0, idx, out=bits)
        return _memory_order_view(bits.view(-1)[:n], x[a:b])


class _NormLeakyBitDropout(torch.autograd.Function):
    """Batch norm (training: batch statistics, running statistics updated once) -> leaky ReLU -> the
    p=0.5 bit dropout, keeping for backward only batch norm's input, its batch mean and 1/std and the
    random bytes. Its output is kept by the next convolution, and is not needed here: backward
    recomputes the normalised values piece by piece (``NORM_CHUNK_BYTES``) and writes the input's
    gradient into one buffer, so a step holds the input, the incoming gradient and the outgoing one
    (3 x 138 MB on a 64-pair batch's first layer) where batch norm's and the leaky ReLU's own
    backward passes also held the output and a second gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,  # noqa: ANN001
                bn: nn.BatchNorm2d, slope: float) -> torch.Tensor:
        factor = bn.momentum
        if bn.num_batches_tracked is not None:  # what nn.BatchNorm2d.forward does in training
            bn.num_batches_tracked.add_(1)
            if factor is None:
                factor = 1.0 / float(bn.num_batches_tracked)
        out, mean, invstd = torch.ops.aten.native_batch_norm(x, weight, bias, bn.running_mean, bn.running_var,
                                                             True, factor or 0.0, bn.eps)
        random_bytes = torch.empty((out.numel() + 7) // 8, dtype=torch.uint8, device=out.device).random_()
        pieces = _Pieces(out, 0)
        for a, b in pieces.ranges:
            F.leaky_relu_(out[a:b], slope).mul_(pieces.mask(random_bytes, out, a, b))
        ctx.slope = slope
        ctx.save_for_backward(x, weight, bias, mean, invstd, random_bytes)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple:  # noqa: ANN001
        x, weight, bias, mean, invstd, random_bytes = ctx.saved_tensors
        c = (1, -1, 1, 1)
        scale = (weight * invstd).view(c)
        shift = (bias - mean * weight * invstd).view(c)
        mean4 = mean.view(c)
        gx = torch.empty_like(x)
        sum_dy = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
        sum_dy_xc = torch.zeros_like(sum_dy)
        pieces = _Pieces(x, 1)
        for a, b in pieces.ranges:  # dy, the gradient at batch norm's output, into gx; its two sums
            xa, ya, g = x[a:b], pieces.bufs[0][: b - a], gx[a:b]
            dy = pieces.mask(random_bytes, x, a, b).mul_(grad[a:b])
            torch.addcmul(shift, xa, scale, out=ya)  # batch norm's output again
            torch.ops.aten.leaky_relu_backward.grad_input(dy, ya, ctx.slope, False, grad_input=g)
            sum_dy += g.sum(dim=(0, 2, 3))
            sum_dy_xc += torch.sub(xa, mean4, out=ya).mul_(g).sum(dim=(0, 2, 3))
        m = x.numel() // x.shape[1]
        istd = invstd.double()
        mean_dy = (sum_dy / m).to(x.dtype).view(c)
        k = (sum_dy_xc / m * istd * istd).to(x.dtype).view(c)
        for a, b in pieces.ranges:  # dx = w / std * (dy - mean(dy) - (x - mean) * mean(dy * xhat) / std)
            ya = pieces.bufs[0][: b - a]
            torch.sub(x[a:b], mean4, out=ya).mul_(k).add_(mean_dy)
            gx[a:b].sub_(ya).mul_(scale)
        grad_w = (sum_dy_xc * istd).to(weight.dtype)
        return gx, grad_w, sum_dy.to(bias.dtype), None, None


def float32_convolutions(device: torch.device) -> None:
    """On a CUDA device, convolutions in full float32 for this process: cuDNN's default, TF32 (10-bit
    mantissas in the products), made the first layer's gradients differ from the CPU's by more than
    1% of their largest value on an H200 (tests/test_device.py). The reward CNN's arithmetic is
    small beside its data movement, so exactness costs little; the agent's convolutions follow."""
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False


PIXEL_CHUNK = 800  # frame stacks made float at a time for the first conv (90 MB)


class _PixelConv(torch.autograd.Function):
    """The first convolution on uint8 pixels ``(N, H, W, C)``: converts them to float ``PIXEL_CHUNK``
    stacks at a time for the forward, and again for the weights' gradient, keeping the uint8 batch
    (90 MB per 64-pair batch) for backward rather than its float copy (361 MB). No gradient flows to
    the pixels."""

    @staticmethod
    def forward(ctx, obs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,  # noqa: ANN001
                conv: nn.Conv2d) -> torch.Tensor:
        ctx.conv, ctx.has_bias = conv, bias is not None
        ctx.save_for_backward(obs, weight)
        # In pieces: the float copy of the whole batch (361 MB per 64-pair batch) was the step's peak.
        out = None
        for a in range(0, len(obs), PIXEL_CHUNK):
            y = F.conv2d(pixels_to_float(obs[a : a + PIXEL_CHUNK]), weight, bias, conv.stride, conv.padding,
                         conv.dilation, conv.groups)
            if out is None:
                if len(y) == len(obs):
                    return y
                last = y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
                out = torch.empty((len(obs), *y.shape[1:]), dtype=y.dtype, device=y.device,
                                  memory_format=torch.channels_last if last else torch.contiguous_format)
            out[a : a + len(y)] = y
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple:  # noqa: ANN001
        obs, weight = ctx.saved_tensors
        c = ctx.conv
        grad_w = grad_b = None
        for a in range(0, len(obs), PIXEL_CHUNK):
            _, gw, gb = torch.ops.aten.convolution_backward(
                grad[a : a + PIXEL_CHUNK], pixels_to_float(obs[a : a + PIXEL_CHUNK]), weight,
                [weight.shape[0]] if ctx.has_bias else None, list(c.stride), list(c.padding), list(c.dilation),
                False, [0, 0], c.groups, [False, True, ctx.has_bias])
            grad_w = gw if grad_w is None else grad_w.add_(gw)
            grad_b = gb if grad_b is None else grad_b.add_(gb)
        return None, grad_w, grad_b, None


def fast_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout(x, p, training)`` in distribution; p = 0.5 takes :func:`bit_dropout_mask`."""
    if not training or p == 0.0:
        return x
    if p != 0.5:
        return F.dropout(x, p, True)
    return x * bit_dropout_mask(x)


Dropout = Callable[[torch.Tensor, float, bool], torch.Tensor]


def _features(net: CNNReward, x: torch.Tensor, dropout: Dropout | None) -> torch.Tensor:
    """Conv stack on pixels -> flat features ``(N, F)``. ``x``: unscaled float ``(N, C, H, W)`` (0..255),
    or the uint8 ``(N, H, W, C)`` batch itself when training (kept as uint8 for backward).
    ``dropout`` None: the p=0.5 bit masks, fused with the leaky ReLU before them when training."""
    layers = list(net.conv)
    i = 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if i == 0 and isinstance(layer, nn.Conv2d):
            # conv(x / 255, W) + b == conv(x, W / 255) + b: the scale costs 784 multiplications here.
            w = layer.weight * (1.0 / 255.0)
            if x.dtype == torch.uint8:
                x = _PixelConv.apply(x, w, layer.bias, layer)
            else:
                x = F.conv2d(x, w, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
        elif dropout is None and _fusable_norm(layer, nxt, layers[i + 2] if i + 2 < len(layers) else None):
            x = _NormLeakyBitDropout.apply(x, layer.weight, layer.bias, layer, nxt.negative_slope)
            i += 2  # the leaky ReLU and the dropout are done
        elif (dropout is None and isinstance(layer, nn.LeakyReLU) and isinstance(nxt, nn.Dropout) and nxt.p == 0.5
              and nxt.training and torch.is_grad_enabled()):
            x = _LeakyBitDropout.apply(x, layer.negative_slope)
            i += 1  # the dropout is done
        elif isinstance(layer, nn.Dropout):
            x = (dropout or fast_dropout)(x, layer.p, layer.training)
        else:
            x = layer(x)
        i += 1
    return x.flatten(1)


def _fusable_norm(bn: nn.Module, leaky: nn.Module | None, drop: nn.Module | None) -> bool:
    """Whether ``bn, leaky, drop`` is batch norm in training -> leaky ReLU -> p=0.5 dropout with grad on."""
    return (isinstance(bn, nn.BatchNorm2d) and bn.training and bn.affine and bn.track_running_stats
            and isinstance(leaky, nn.LeakyReLU) and isinstance(drop, nn.Dropout) and drop.p == 0.5
            and drop.training and torch.is_grad_enabled())


def _head(net: CNNReward, feats: torch.Tensor, acts: torch.Tensor | None) -> torch.Tensor:
    if net.act_dim:
        if acts is None or acts.shape != (feats.shape[0], net.act_dim):
            got = None if acts is None else tuple(acts.shape)
            raise ValueError(f"CNNReward acts shape {got} not allowed; expected ({feats.shape[0]}, {net.act_dim})")
        feats = torch.cat([feats, acts.to(feats.dtype)], dim=1)
    return net.head(feats).squeeze(-1)


def pixels_to_float(obs: torch.Tensor) -> torch.Tensor:
    """``obs: (N, H, W, C)`` (uint8 or float, 0..255) -> float32 ``(N, C, H, W)``, channels-last in memory."""
    if obs.ndim != 4:
        raise ValueError(f"CNN input shape {tuple(obs.shape)} not allowed; expected (N, H, W, C)")
    return obs.permute(0, 3, 1, 2).to(torch.float32)


def member_forward(net: CNNReward, obs: torch.Tensor, acts: torch.Tensor | None = None,
                   dropout: Dropout | None = None) -> torch.Tensor:
    """What ``net(obs, acts)`` computes (train or eval mode as set), by the faster path: ``(N,)``.
    ``dropout``: the conv layers' dropout, ``(x, p, training) -> x`` (default: the bit masks)."""
    if obs.ndim != 4 or tuple(obs.shape[1:]) != net.obs_shape:
        raise ValueError(f"CNNReward obs shape {tuple(obs.shape)} not allowed; expected (N, *{net.obs_shape})")
    keep_uint8 = obs.dtype == torch.uint8 and torch.is_grad_enabled() and net.conv[0].weight.requires_grad
    return _head(net, _features(net, obs if keep_uint8 else pixels_to_float(obs), dropout), acts)


def ensemble_forward(nets: nn.ModuleList, obs: torch.Tensor, acts: torch.Tensor | None = None) -> torch.Tensor:
    """``(K, N)`` outputs of every member on one batch, its pixels converted to float once (in train
    mode each member draws its own dropout masks, as it would on its own)."""
    if tuple(obs.shape[1:]) != nets[0].obs_shape:
        raise ValueError(f"CNNReward obs shape {tuple(obs.shape)} not allowed; expected (N, *{nets[0].obs_shape})")
    x = pixels_to_float(obs)
    return torch.stack([_head(net, _features(net, x, fast_dropout), acts) for net in nets])
