"""An independent NumPy model of the SWD-NAS equations (SPEC §1-2), written from the
paper and the spec, for the layer tests to compare against. Channels-last."""

from __future__ import annotations

import numpy as np

BN_EPS = 1e-5


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def mlp(v, w1, b1, w2, b2):
    """Eq. 5: W2 ReLU(W1 v + b1) + b2 (row vectors)."""
    h = v @ w1 + (0 if b1 is None else b1)
    return np.maximum(h, 0) @ w2 + (0 if b2 is None else b2)


def channel_attention(x, weights, pooling):
    """Eq. 6 (and LA's SE form): sigmoid of the summed MLP outputs, shape (b, 1, 1, c)."""
    w1, b1, w2, b2 = weights if len(weights) == 4 else (weights[0], None, weights[1], None)
    logits = 0.0
    if "avg" in pooling:
        logits = logits + mlp(x.mean(axis=(1, 2)), w1, b1, w2, b2)
    if "max" in pooling:
        logits = logits + mlp(x.max(axis=(1, 2)), w1, b1, w2, b2)
    return sigmoid(logits)[:, None, None, :]


def select_channels(x, attention, k):
    """Algorithm 2 with masks: the c/k channels of largest batch-summed attention, in
    channel order."""
    c = x.shape[-1]
    score = attention.reshape(-1, c).sum(axis=0)
    mask = np.zeros(c, dtype=bool)
    mask[np.argsort(-score, kind="stable")[: c // k]] = True
    indices = np.flatnonzero(mask)
    return x[..., indices], indices


def same_padding(size, kernel, stride):
    """TensorFlow's 'same' padding (before, after) for one spatial axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def depthwise_conv(x, kernel, stride=1, dilation=1):
    """Depthwise conv, 'same' padding; kernel (kh, kw, c, 1) as Keras stores it."""
    kh, kw = kernel.shape[:2]
    span_h, span_w = dilation * (kh - 1) + 1, dilation * (kw - 1) + 1
    b, h, w, c = x.shape
    ph, pw = same_padding(h, span_h, stride), same_padding(w, span_w, stride)
    xp = np.pad(x, ((0, 0), ph, pw, (0, 0)))
    oh, ow = -(-h // stride), -(-w // stride)
    out = np.zeros((b, oh, ow, c))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i * dilation: i * dilation + (oh - 1) * stride + 1: stride,
                       j * dilation: j * dilation + (ow - 1) * stride + 1: stride, :]
            out += patch * kernel[i, j, :, 0]
    return out


def pointwise_conv(x, kernel, stride=1):
    """1x1 conv; kernel (1, 1, cin, cout). With stride 2 and 'same' padding a 1x1 conv
    samples the grid from 0."""
    return x[:, ::stride, ::stride, :] @ kernel[0, 0]


def batch_norm_inference(x, gamma=None, beta=None, mean=None, var=None):
    """BN with moving statistics (fresh layers: mean 0, var 1)."""
    mean = 0.0 if mean is None else mean
    var = 1.0 if var is None else var
    y = (x - mean) / np.sqrt(var + BN_EPS)
    return y * (1.0 if gamma is None else gamma) + (0.0 if beta is None else beta)


def pool(x, kind, stride=1, size=3):
    """3x3 pools, 'same' padding; the average excludes padded positions."""
    b, h, w, c = x.shape
    ph, pw = same_padding(h, size, stride), same_padding(w, size, stride)
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, ((0, 0), ph, pw, (0, 0)), constant_values=fill)
    ones = np.pad(np.ones((1, h, w, 1)), ((0, 0), ph, pw, (0, 0)))
    oh, ow = -(-h // stride), -(-w // stride)
    out = np.zeros((b, oh, ow, c))
    count = np.zeros((1, oh, ow, 1))
    acc = np.full((b, oh, ow, c), -np.inf)
    for i in range(size):
        for j in range(size):
            sl = (slice(None), slice(i, i + (oh - 1) * stride + 1, stride),
                  slice(j, j + (ow - 1) * stride + 1, stride), slice(None))
            if kind == "max":
                acc = np.maximum(acc, xp[sl])
            else:
                out += xp[sl]
                count += ones[sl]
    return acc if kind == "max" else out / count


def relu(x):
    return np.maximum(x, 0)


def dil_conv(x, depthwise, pointwise, stride, dilation):
    """DARTS dil_conv / one sep_conv block, BN in inference with fresh statistics."""
    y = depthwise_conv(relu(x), depthwise, stride, dilation)
    return batch_norm_inference(pointwise_conv(y, pointwise))


def factorized_reduce(x, kernel_1, kernel_2):
    x = relu(x)
    shifted = np.pad(x[:, 1:, 1:, :], ((0, 0), (0, 1), (0, 1), (0, 0)))
    y = np.concatenate([pointwise_conv(x, kernel_1, 2), pointwise_conv(shifted, kernel_2, 2)],
                       axis=-1)
    return batch_norm_inference(y)


def swd_edge(x, ua_weights, la_weights, op_fns, k, stride=1, ua_pooling="avg+max",
             la_pooling="avg"):
    """SPEC §2 end to end: returns (output, atten)."""
    i_mix = channel_attention(x, ua_weights, ua_pooling)
    scaled = x * i_mix
    selected, indices = select_channels(scaled, i_mix, k)
    features = [fn(selected) for fn in op_fns]
    f_in = np.concatenate(features, axis=-1)
    f_att = channel_attention(f_in, la_weights, la_pooling)
    f_out = f_in * f_att
    n, ck = len(op_fns), selected.shape[-1]
    mixed = sum(f_out[..., i * ck:(i + 1) * ck] for i in range(n))
    atten = np.array([f_att[..., i * ck:(i + 1) * ck].sum(axis=-1).mean() for i in range(n)])
    base = scaled if stride == 1 else max_pool_2x2(scaled)
    out = base.copy()
    out[..., indices] = mixed
    return out, atten


def max_pool_2x2(x):
    b, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-np.inf)
    return xp.reshape(b, (h + 1) // 2, 2, (w + 1) // 2, 2, c).max(axis=(2, 4))


def normalize_edge_weights(weights):
    """Eq. 11."""
    weights = np.asarray(weights, dtype=np.float64)
    return weights / weights.sum(axis=-1, keepdims=True)
