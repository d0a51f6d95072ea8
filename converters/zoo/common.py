"""Building blocks the zoo's models share, with torchvision's module names
(``torchvision.ops.misc``), so that torchvision state dicts load."""

import torch
from torch import nn


def _make_divisible(v, divisor=8, min_value=None):
    """torchvision's channel rounding: to a multiple of ``divisor``, never below 90%."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class Conv2dNormActivation(nn.Sequential):
    """conv (no bias) -> BatchNorm -> activation: children 0, 1, 2 as in torchvision.

    ``activation_layer`` None leaves the activation out (projection convs); the padding
    keeps the size at stride 1: ``(kernel_size - 1) // 2 * dilation``.
    """

    def __init__(self, cin, cout, kernel_size=3, stride=1, groups=1, norm_layer=nn.BatchNorm2d,
                 activation_layer=nn.ReLU, dilation=1):
        layers = [nn.Conv2d(cin, cout, kernel_size, stride, (kernel_size - 1) // 2 * dilation,
                            dilation=dilation, groups=groups, bias=False),
                  norm_layer(cout)]
        if activation_layer is not None:
            layers.append(activation_layer(inplace=True))
        super().__init__(*layers)
        self.out_channels = cout


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation: a global branch (mean over H, W -> 1x1 convs)
    whose per-channel scale multiplies the spatial map."""

    def __init__(self, input_channels, squeeze_channels, activation=nn.ReLU,
                 scale_activation=nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def _scale(self, x):
        scale = self.avgpool(x)
        scale = self.activation(self.fc1(scale))
        return self.scale_activation(self.fc2(scale))

    def forward(self, x):
        return self._scale(x) * x


class StochasticDepth(nn.Module):
    """torchvision.ops.StochasticDepth, ``mode="row"``: the identity in eval mode."""

    def __init__(self, p, mode="row"):
        super().__init__()
        self.p = p
        self.mode = mode

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        noise = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype,
                            device=x.device).bernoulli_(keep)
        return x * noise.div_(keep) if keep > 0.0 else x * noise


def init_torchvision(model, linear="normal"):
    """torchvision's initialisation of its classification nets: convs kaiming-normal
    (fan_out), BN ones/zeros, linears normal(0, 0.01) or uniform(+-1/sqrt(out))."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear == "normal":
                nn.init.normal_(m.weight, 0, 0.01)
            else:
                r = 1.0 / m.out_features ** 0.5
                nn.init.uniform_(m.weight, -r, r)
            nn.init.zeros_(m.bias)
    return model
