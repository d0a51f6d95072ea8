"""EfficientNet-B0 (torchvision.models.efficientnet, module names included): MBConv
blocks with SiLU, squeeze-excitation (sigmoid gate), depthwise 3x3 and 5x5, stride 2."""

import copy
import math
from functools import partial

import torch
from torch import nn

from .common import Conv2dNormActivation, SqueezeExcitation, StochasticDepth, _make_divisible
from .common import init_torchvision


class MBConvConfig:
    def __init__(self, expand_ratio, kernel, stride, input_channels, out_channels, num_layers,
                 width_mult=1.0, depth_mult=1.0):
        self.expand_ratio = expand_ratio
        self.kernel = kernel
        self.stride = stride
        self.input_channels = self.adjust_channels(input_channels, width_mult)
        self.out_channels = self.adjust_channels(out_channels, width_mult)
        self.num_layers = int(math.ceil(num_layers * depth_mult))

    @staticmethod
    def adjust_channels(channels, width_mult):
        return _make_divisible(channels * width_mult, 8)


class MBConv(nn.Module):
    def __init__(self, cnf, stochastic_depth_prob, norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        expanded = MBConvConfig.adjust_channels(cnf.input_channels, cnf.expand_ratio)
        layers = []
        if expanded != cnf.input_channels:
            layers.append(Conv2dNormActivation(cnf.input_channels, expanded, 1,
                                               norm_layer=norm_layer, activation_layer=nn.SiLU))
        layers.append(Conv2dNormActivation(expanded, expanded, cnf.kernel, cnf.stride,
                                           groups=expanded, norm_layer=norm_layer,
                                           activation_layer=nn.SiLU))
        layers.append(SqueezeExcitation(expanded, max(1, cnf.input_channels // 4),
                                        activation=partial(nn.SiLU, inplace=True)))
        layers.append(Conv2dNormActivation(expanded, cnf.out_channels, 1, norm_layer=norm_layer,
                                           activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")
        self.out_channels = cnf.out_channels

    def forward(self, x):
        result = self.block(x)
        if self.use_res_connect:
            result = self.stochastic_depth(result)
            result += x
        return result


# (expand_ratio, kernel, stride, input_channels, out_channels, num_layers): B0's stages
B0_STAGES = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
             (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
             (6, 3, 1, 192, 320, 1))


class EfficientNet(nn.Module):
    def __init__(self, setting, dropout=0.2, stochastic_depth_prob=0.2, num_classes=1000):
        super().__init__()
        layers = [Conv2dNormActivation(3, setting[0].input_channels, 3, 2,
                                       activation_layer=nn.SiLU)]
        total = sum(cnf.num_layers for cnf in setting)
        block_id = 0
        for cnf in setting:
            stage = []
            for _ in range(cnf.num_layers):
                block_cnf = copy.copy(cnf)
                if stage:
                    block_cnf.input_channels = block_cnf.out_channels
                    block_cnf.stride = 1
                stage.append(MBConv(block_cnf, stochastic_depth_prob * block_id / total))
                block_id += 1
            layers.append(nn.Sequential(*stage))
        last_in = setting[-1].out_channels
        layers.append(Conv2dNormActivation(last_in, 4 * last_in, 1, activation_layer=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout, inplace=True),
                                        nn.Linear(4 * last_in, num_classes))
        init_torchvision(self, linear="uniform")

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def efficientnet_b0(num_classes=1000, width_mult=1.0, depth_mult=1.0):
    """torchvision's efficientnet_b0 (width and depth 1.0 by default; smaller multipliers
    give the same block types with fewer channels and blocks, for quick tests)."""
    setting = [MBConvConfig(*s, width_mult=width_mult, depth_mult=depth_mult)
               for s in B0_STAGES]
    return EfficientNet(setting, num_classes=num_classes)
