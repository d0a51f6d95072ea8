"""MobileNetV2 and MobileNetV3-small, torchvision's architectures and module names
(torchvision.models.mobilenetv2, .mobilenetv3), so torchvision state dicts load."""

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .common import Conv2dNormActivation, SqueezeExcitation, _make_divisible, init_torchvision

# --- MobileNetV2 ------------------------------------------------------------------------------

_ConvBNReLU6 = partial(Conv2dNormActivation, activation_layer=nn.ReLU6)


class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            layers.append(_ConvBNReLU6(inp, hidden, kernel_size=1))
        layers += [_ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes=1000, width_mult=1.0, dropout=0.2):
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features = [_ConvBNReLU6(3, cin, stride=2)]
        for t, c, n, s in self.SETTINGS:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(_ConvBNReLU6(cin, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout),
                                        nn.Linear(self.last_channel, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(num_classes=1000):
    """torchvision's mobilenet_v2 architecture (width 1.0), torchvision's initialisation."""
    return MobileNetV2(num_classes)


# --- MobileNetV3 ------------------------------------------------------------------------------

class InvertedResidualConfig:
    def __init__(self, input_channels, kernel, expanded_channels, out_channels, use_se,
                 activation, stride, dilation, width_mult):
        adjust = lambda c: _make_divisible(c * width_mult, 8)  # noqa: E731
        self.input_channels = adjust(input_channels)
        self.kernel = kernel
        self.expanded_channels = adjust(expanded_channels)
        self.out_channels = adjust(out_channels)
        self.use_se = use_se
        self.use_hs = activation == "HS"
        self.stride = stride
        self.dilation = dilation


class InvertedResidualV3(nn.Module):
    """torchvision's mobilenetv3.InvertedResidual: expand 1x1, depthwise kxk, optional
    squeeze-excitation (hardsigmoid gate), project 1x1; ReLU or hardswish."""

    def __init__(self, cnf, norm_layer):
        super().__init__()
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        act = nn.Hardswish if cnf.use_hs else nn.ReLU
        layers = []
        if cnf.expanded_channels != cnf.input_channels:
            layers.append(Conv2dNormActivation(cnf.input_channels, cnf.expanded_channels, 1,
                                               norm_layer=norm_layer, activation_layer=act))
        stride = 1 if cnf.dilation > 1 else cnf.stride
        layers.append(Conv2dNormActivation(cnf.expanded_channels, cnf.expanded_channels,
                                           cnf.kernel, stride, groups=cnf.expanded_channels,
                                           dilation=cnf.dilation, norm_layer=norm_layer,
                                           activation_layer=act))
        if cnf.use_se:
            squeeze = _make_divisible(cnf.expanded_channels // 4, 8)
            layers.append(SqueezeExcitation(cnf.expanded_channels, squeeze,
                                            scale_activation=nn.Hardsigmoid))
        layers.append(Conv2dNormActivation(cnf.expanded_channels, cnf.out_channels, 1,
                                           norm_layer=norm_layer, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = cnf.out_channels
        self._is_cn = cnf.stride > 1

    def forward(self, x):
        result = self.block(x)
        if self.use_res_connect:
            result += x
        return result


class MobileNetV3(nn.Module):
    def __init__(self, inverted_residual_setting, last_channel, num_classes=1000, dropout=0.2):
        super().__init__()
        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
        first = inverted_residual_setting[0].input_channels
        layers = [Conv2dNormActivation(3, first, 3, 2, norm_layer=norm_layer,
                                       activation_layer=nn.Hardswish)]
        layers += [InvertedResidualV3(cnf, norm_layer) for cnf in inverted_residual_setting]
        last_in = inverted_residual_setting[-1].out_channels
        layers.append(Conv2dNormActivation(last_in, 6 * last_in, 1, norm_layer=norm_layer,
                                           activation_layer=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(6 * last_in, last_channel),
                                        nn.Hardswish(inplace=True),
                                        nn.Dropout(p=dropout, inplace=True),
                                        nn.Linear(last_channel, num_classes))
        init_torchvision(self, linear="normal")

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v3_small(num_classes=1000, width_mult=1.0, dilated=False):
    """torchvision's mobilenet_v3_small (``dilated``: the last stage dilated, output
    stride 16, as torchvision's segmentation backbones use it)."""
    conf = partial(InvertedResidualConfig, width_mult=width_mult)
    d = 2 if dilated else 1
    setting = [
        conf(16, 3, 16, 16, True, "RE", 2, 1),
        conf(16, 3, 72, 24, False, "RE", 2, 1),
        conf(24, 3, 88, 24, False, "RE", 1, 1),
        conf(24, 5, 96, 40, True, "HS", 2, 1),
        conf(40, 5, 240, 40, True, "HS", 1, 1),
        conf(40, 5, 240, 40, True, "HS", 1, 1),
        conf(40, 5, 120, 48, True, "HS", 1, 1),
        conf(48, 5, 144, 48, True, "HS", 1, 1),
        conf(48, 5, 288, 96, True, "HS", 2, d),
        conf(96, 5, 576, 96, True, "HS", 1, d),
        conf(96, 5, 576, 96, True, "HS", 1, d),
    ]
    return MobileNetV3(setting, _make_divisible(1024 * width_mult, 8), num_classes)
