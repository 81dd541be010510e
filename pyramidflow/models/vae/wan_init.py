"""A pooled-copy start for a residual ``AutoencoderKLWan`` trained from scratch (docs/maths.md 18.5).

From a random start a small Wan VAE learns the backgrounds first and the objects' colour late or
never: the encoder ends in a per-pixel RMS norm (``WanRMS_norm``), which keeps only the direction of
each feature vector, and a network that has put colour into feature *length* loses it there.
:func:`pooled_copy_init` starts the model instead as a working autoencoder of pooled colours, with
colour in feature *direction* from step 0:

* every residual branch ends in zeros (the last conv of each ``WanResidualBlock``, the attention
  output projection, the re-sampling convs), so each block is its shortcut: the identity, or
  ``AvgDown3D`` / ``DupUp3D`` (average pooling / nearest up-sampling) around a change of size;
* ``quant_conv`` and ``post_quant_conv`` are identities;
* the encoder's first conv copies R, G, B into channels 0-2 and puts a constant ``bias_channel`` in
  channel 3 (the decoder's first conv does the same with latent channels 0-2). After the RMS norm the
  feature of channel c is s x_c / |(x, b)|, s = sqrt(width): a constant b > 0 makes the direction carry
  the colour *and* its brightness;
* the two heads (encoder ``conv_out`` rows of the posterior mean 0-2, decoder ``conv_out``) are fitted
  by ridge regression on a batch of clips: the encoder to the causally pooled colours (frame 0 alone,
  then groups of the temporal factor; spatial factor x factor blocks), the decoder to the clips; the
  other posterior-mean rows start small, the log-variance rows at ``logvar`` (a near-deterministic
  posterior whose noise does not drown the signal).

Training then only has to learn the residual detail on top of a blurred copy, as a DC-AE-shortcut VAE
does (docs/vae.md). Shapes: clips (B, 3, T, H, W) in [-1, 1], T = 1 + k * temporal factor.
"""

from __future__ import annotations

import torch
from torch import nn

from pyramidflow.errors import PyramidflowError


def _zero(layer: nn.Module) -> None:
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def _copy_channels(conv: nn.Module, n: int, constant: dict[int, float] | None = None) -> None:
    """Make a (causal) conv copy input channel c to output c < n at the current frame and centre
    pixel (kernel (kt, kh, kw): tap (kt - 1, kh // 2, kw // 2)), with constant output channels."""
    _zero(conv)
    kt, kh, kw = conv.weight.shape[2:]
    with torch.no_grad():
        for c in range(n):
            conv.weight[c, c, kt - 1, kh // 2, kw // 2] = 1.0
        for c, value in (constant or {}).items():
            conv.bias[c] = value


def _head_input(head: nn.Module, run) -> torch.Tensor:
    """What ``head`` receives while ``run()`` executes, joined along time (Wan's frame-chunk loop)."""
    seen: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach()))
    try:
        run()
    finally:
        hook.remove()
    return torch.cat(seen, dim=2)


def _fit_head(head: nn.Module, features: torch.Tensor, target: torch.Tensor, ridge: float) -> None:
    """Ridge fit of ``head``'s first ``target.shape[1]`` output rows, centre tap plus bias.

    features (B, C, T, H, W), target (B, R, T, H, W). Columns are standardised so the penalty
    ``ridge * N`` treats channels alike; constant channels are left out (their weight stays 0).
    """
    c, r = features.shape[1], target.shape[1]
    x = features.movedim(1, -1).reshape(-1, c).double()
    y = target.movedim(1, -1).reshape(-1, r).double()
    mu, sd = x.mean(0), x.std(0)
    keep = torch.nonzero(sd > 1e-6).flatten()
    z = (x[:, keep] - mu[keep]) / sd[keep]
    gram = z.T @ z + ridge * len(z) * torch.eye(len(keep), dtype=z.dtype)
    coef = torch.linalg.solve(gram, z.T @ (y - y.mean(0))) / sd[keep, None]  # (kept, R)
    weight = torch.zeros(c, r, dtype=x.dtype)
    weight[keep] = coef
    bias = y.mean(0) - mu @ weight
    kt, kh, kw = head.weight.shape[2:]
    with torch.no_grad():
        head.weight[:r].zero_()
        head.weight[:r, :, kt - 1, kh // 2, kw // 2] = weight.T.to(head.weight.dtype)
        head.bias[:r] = bias.to(head.bias.dtype)


def causal_pool(video: torch.Tensor, temporal: int, spatial: int) -> torch.Tensor:
    """(B, C, 1 + k*temporal, H, W) -> (B, C, 1 + k, H/spatial, W/spatial): frame 0 alone, then the
    mean of each group of ``temporal`` frames, each over spatial x spatial blocks."""
    first, rest = video[:, :, :1], video[:, :, 1:]
    b, c, t, h, w = rest.shape
    if t % temporal or h % spatial or w % spatial:
        raise PyramidflowError(f"clip of {t + 1}x{h}x{w} does not fit the VAE's factors "
                               f"{temporal} (time) and {spatial} (space)")
    rest = rest.reshape(b, c, t // temporal, temporal, h, w).mean(3)
    return nn.functional.avg_pool3d(torch.cat([first, rest], dim=2), (1, spatial, spatial))


@torch.no_grad()
def pooled_copy_init(vae, clips: torch.Tensor, bias_channel: float = 4.0, logvar: float = -6.0,
                     ridge: float = 1e-3):
    """Re-initialise a residual ``AutoencoderKLWan`` in place as a pooled-colour autoencoder.

    ``clips``: (B, 3, T, H, W) in [-1, 1], a batch of training clips for the two head fits.
    Returns ``vae``.
    """
    from diffusers.models.autoencoders import autoencoder_kl_wan as wan

    cfg = vae.config
    if not cfg.is_residual:
        raise PyramidflowError("the pooled-copy init needs a residual AutoencoderKLWan (is_residual=True, "
                               "model.residual: true): only its re-sampling blocks have pooling shortcuts")
    if cfg.patch_size is not None:
        raise PyramidflowError("the pooled-copy init supports Wan VAEs without patch_size")
    z_dim = int(cfg.z_dim)
    widths = (vae.encoder.conv_in.out_channels, vae.decoder.conv_in.out_channels)
    if z_dim < 3 or min(widths) < 4:
        raise PyramidflowError(f"the pooled-copy init needs at least 3 latent channels and 4 channels in the "
                               f"first and last layers (colour plus a constant), got z_dim {z_dim} and "
                               f"widths {widths}")
    for m in vae.modules():
        if isinstance(m, wan.WanResidualBlock):
            _zero(m.conv2)
            if not isinstance(m.conv_shortcut, nn.Identity):  # width change: pass channels through
                _copy_channels(m.conv_shortcut, min(m.in_dim, m.out_dim))
        elif isinstance(m, wan.WanAttentionBlock):
            _zero(m.proj)
        elif isinstance(m, wan.WanResample) and not isinstance(m.resample, nn.Identity):
            _zero(m.resample[1])  # the first chunk skips time_conv: zero both
            if m.mode == "downsample3d":
                _zero(m.time_conv)
    _copy_channels(vae.quant_conv, vae.quant_conv.out_channels)
    _copy_channels(vae.post_quant_conv, vae.post_quant_conv.out_channels)
    _copy_channels(vae.encoder.conv_in, 3, {3: bias_channel})
    _copy_channels(vae.decoder.conv_in, 3, {3: bias_channel})
    head = vae.encoder.conv_out  # rows: posterior mean (z_dim), then log-variance (z_dim)
    head.weight[:z_dim].mul_(0.1)
    head.bias[:z_dim].zero_()
    head.weight[z_dim:].zero_()
    head.bias[z_dim:].fill_(logvar)
    clips = clips.to(head.weight.device, head.weight.dtype)
    pooled = causal_pool(clips, int(cfg.scale_factor_temporal), int(cfg.scale_factor_spatial))
    _fit_head(head, _head_input(head, lambda: vae.encode(clips)), pooled, ridge)
    mean = vae.encode(clips).latent_dist.mean
    _fit_head(vae.decoder.conv_out, _head_input(vae.decoder.conv_out, lambda: vae.decode(mean)), clips, ridge)
    return vae
