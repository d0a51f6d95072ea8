"""ResNet-18 (torchvision.models.resnet), and its dilated form as a dense-prediction
backbone (``replace_stride_with_dilation``, as torchvision's segmentation models use)."""

import torch
from torch import nn


def _conv3x3(cin, cout, stride=1, dilation=1):
    return nn.Conv2d(cin, cout, 3, stride, dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, cout, stride=1, downsample=None, dilation=1):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride, dilation)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(cout, cout, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """torchvision's ResNet with BasicBlocks. ``widths``: the four stages' channels;
    ``replace_stride_with_dilation``: per stage 2..4, dilate instead of striding (output
    stride 16 or 8); ``num_classes`` None keeps the features only (no pool, no fc)."""

    def __init__(self, layers=(2, 2, 2, 2), num_classes=1000, widths=(64, 128, 256, 512),
                 replace_stride_with_dilation=(False, False, False)):
        super().__init__()
        self.inplanes = widths[0]
        self.dilation = 1
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(widths[0], layers[0])
        self.layer2 = self._make_layer(widths[1], layers[1], 2, replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(widths[2], layers[2], 2, replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(widths[3], layers[3], 2, replace_stride_with_dilation[2])
        self.num_classes = num_classes
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes, blocks, stride=1, dilate=False):
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample, previous_dilation)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x):
        x = self.features(x)
        if self.num_classes is None:
            return x
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes=1000):
    """torchvision's resnet18 architecture, torchvision's initialisation."""
    return ResNet((2, 2, 2, 2), num_classes)
