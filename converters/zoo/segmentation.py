"""Dense-prediction models: a classic U-Net, an FCN that upsamples with transposed
convolutions, and a DeepLabV3 segmenter (torchvision.models.segmentation.deeplabv3's
head and module names, on a small dilated ResNet backbone)."""

import torch
import torch.nn.functional as F
from torch import nn

from .common import Conv2dNormActivation
from .resnet import ResNet

# --- U-Net ------------------------------------------------------------------------------------


class DoubleConv(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class Up(nn.Module):
    def __init__(self, cin, cskip, cout):
        super().__init__()
        self.conv = DoubleConv(cin + cskip, cout)

    def forward(self, x, skip):
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """Input height and width must be divisible by 2 ** (len(widths) - 1)."""

    def __init__(self, in_ch=3, out_ch=2, widths=(32, 64, 128, 256)):
        super().__init__()
        self.inc = DoubleConv(in_ch, widths[0])
        self.down = nn.ModuleList(DoubleConv(a, b) for a, b in zip(widths, widths[1:]))
        self.up = nn.ModuleList(Up(b, a, a) for a, b in zip(widths, widths[1:]))
        self.head = nn.Conv2d(widths[0], out_ch, 1)

    def forward(self, x):
        skips = [self.inc(x)]
        for down in self.down:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        x = skips.pop()
        for up in reversed(self.up):
            x = up(x, skips.pop())
        return self.head(x)


def unet(in_ch=3, out_ch=2, widths=(32, 64, 128, 256)):
    return UNet(in_ch, out_ch, tuple(widths))


# --- FCN with transposed convolutions ---------------------------------------------------------

class FCN(nn.Module):
    """FCN-8s style: an encoder of stride-2 stages, class scores at every stage, and a
    decoder that doubles the resolution with ConvTranspose2d(k=4, s=2, p=1) and adds the
    next finer stage's scores (skip adds), up to the input resolution.

    Input height and width must be divisible by 2 ** len(widths).
    """

    def __init__(self, num_classes=21, widths=(32, 64, 128, 256)):
        super().__init__()
        stages, cin = [], 3
        for w in widths:
            stages.append(nn.Sequential(Conv2dNormActivation(cin, w, 3, 2),
                                        Conv2dNormActivation(w, w, 3)))
            cin = w
        self.stages = nn.ModuleList(stages)
        # the "fully connected" layers of FCN, as convolutions on the coarsest map
        self.context = nn.Sequential(Conv2dNormActivation(cin, 2 * cin, 3),
                                     Conv2dNormActivation(2 * cin, 2 * cin, 1))
        self.score = nn.Conv2d(2 * cin, num_classes, 1)
        self.score_skip = nn.ModuleList(nn.Conv2d(w, num_classes, 1) for w in widths[:-1])
        self.upscore = nn.ModuleList(
            nn.ConvTranspose2d(num_classes, num_classes, 4, 2, 1, bias=False)
            for _ in widths)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        s = self.score(self.context(x))
        for up, skip, f in zip(self.upscore, reversed(self.score_skip), reversed(feats[:-1])):
            s = up(s) + skip(f)
        return self.upscore[-1](s)


def fcn(num_classes=21, widths=(32, 64, 128)):
    """An FCN at output stride 8 (three stride-2 stages, 360x480 works)."""
    return FCN(num_classes, tuple(widths))


# --- DeepLabV3 --------------------------------------------------------------------------------

class ASPPConv(nn.Sequential):
    def __init__(self, cin, cout, dilation):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class ASPPPooling(nn.Sequential):
    """The image-pooling branch: global mean -> 1x1 conv -> BN -> ReLU, broadcast back
    to the map's size by bilinear upsampling."""

    def __init__(self, cin, cout):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, x):
        size = x.shape[-2:]
        for mod in self:
            x = mod(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    def __init__(self, cin, atrous_rates, cout=256):
        super().__init__()
        modules = [nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout),
                                 nn.ReLU())]
        modules += [ASPPConv(cin, cout, rate) for rate in atrous_rates]
        modules.append(ASPPPooling(cin, cout))
        self.convs = nn.ModuleList(modules)
        self.project = nn.Sequential(nn.Conv2d(len(self.convs) * cout, cout, 1, bias=False),
                                     nn.BatchNorm2d(cout), nn.ReLU(), nn.Dropout(0.5))

    def forward(self, x):
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class DeepLabHead(nn.Sequential):
    def __init__(self, cin, num_classes, atrous_rates=(12, 24, 36), channels=256):
        super().__init__(ASPP(cin, atrous_rates, channels),
                         nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, num_classes, 1))


class DeepLabV3(nn.Module):
    """Backbone features -> DeepLabHead -> logits bilinearly upsampled to the input size."""

    def __init__(self, backbone, classifier):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier

    def forward(self, x):
        size = x.shape[-2:]
        x = self.classifier(self.backbone(x))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def aspp_rates(output_stride=16, feature_size=None):
    """The paper's atrous rates, (6, 12, 18) at output stride 16 and twice that at 8,
    for ~513-pixel crops (a 33x33 or 65x65 map); with ``feature_size`` (the smaller
    side of the backbone's map) they are scaled to it, never below 1."""
    base = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
    if feature_size is None:
        return base
    ref = 513 // output_stride + 1
    return tuple(max(1, round(r * feature_size / ref)) for r in base)


def deeplabv3(num_classes=21, output_stride=16, atrous_rates=None,
              widths=(32, 64, 128, 256), aspp_channels=128):
    """DeepLabV3 on a ResNet-18-like backbone (BasicBlocks of ``widths``) whose last
    stage (output stride 16) or last two (8) are dilated instead of strided. ASPP's
    rates default to the paper's for the output stride (``aspp_rates``)."""
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
    dilate = (False, output_stride == 8, True)
    backbone = ResNet((2, 2, 2, 2), None, tuple(widths), dilate)
    rates = tuple(atrous_rates or aspp_rates(output_stride))
    return DeepLabV3(backbone, DeepLabHead(widths[-1], num_classes, rates, aspp_channels))
