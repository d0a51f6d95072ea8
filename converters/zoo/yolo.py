"""A YOLOv5-style detector (ultralytics' v6.0 layout, module names cv1/cv2/cv3/m/bn/act):
Conv-BN-SiLU, C3 blocks, SPPF (three chained 5x5 max pools), an FPN+PAN neck of nearest
upsampling and concatenation, and three detection outputs, each decoded into boxes
(sigmoid, grid offsets and anchor scaling from constant tensors, a square), returned as a
tuple.

The neck upsamples to the size of the map it is concatenated with, so any input size
works (not only multiples of 32). The anchors are constants of the architecture, and the
decoding grids constants of the input size the model was built for (``img_size``); an
eager forward at another size rebuilds them, as ultralytics does; an export at another
size asks for ``img_size`` instead, since the grids must be constants of the program.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ANCHORS = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))
STRIDES = (8, 16, 32)


class Conv(nn.Module):
    """Conv2d (no bias, 'same' padding) -> BatchNorm -> SiLU."""

    def __init__(self, cin, cout, k=1, s=1, p=None):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2 if p is None else p, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001, momentum=0.03)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, cin, cout, shortcut=True, e=1.0):
        super().__init__()
        hidden = int(cout * e)
        self.cv1 = Conv(cin, hidden, 1)
        self.cv2 = Conv(hidden, cout, 3)
        self.add = shortcut and cin == cout

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with three convolutions: cv3(cat(m(cv1(x)), cv2(x)))."""

    def __init__(self, cin, cout, n=1, shortcut=True, e=0.5):
        super().__init__()
        hidden = int(cout * e)
        self.cv1 = Conv(cin, hidden, 1)
        self.cv2 = Conv(cin, hidden, 1)
        self.cv3 = Conv(2 * hidden, cout, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut) for _ in range(n)))

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained MaxPool2d(5, 1, 2), concatenated."""

    def __init__(self, cin, cout, k=5):
        super().__init__()
        hidden = cin // 2
        self.cv1 = Conv(cin, hidden, 1)
        self.cv2 = Conv(hidden * 4, cout, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


def _level_size(size, stride):
    """The size of the map at ``stride``: the stem (6x6, s2, p2) and each 3x3 s2 conv
    compute ceil(n / 2)."""
    for _ in range(int(math.log2(stride))):
        size = (size + 1) // 2
    return size


class Detect(nn.Module):
    """Per level a 1x1 conv to na * (nc + 5) channels, decoded as YOLOv5 does:
    xy = (2 sigmoid - 0.5 + grid) * stride, wh = (2 sigmoid) ** 2 * anchor."""

    def __init__(self, nc, channels, img_size, anchors=ANCHORS, strides=STRIDES):
        super().__init__()
        self.nc, self.no, self.na = nc, nc + 5, len(anchors[0]) // 2
        self.strides = tuple(strides)
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in channels)
        # constants of the architecture, not weights: not in the state dict
        self.anchors = torch.tensor(anchors, dtype=torch.float32).view(len(anchors), self.na, 2)
        self._build_grids(img_size)

    def initialize_biases(self, image_size=640):
        """ultralytics' prior for the head: objectness ~8 objects per 640 image, class
        probability ~0.6 / nc (arXiv:1708.02002 section 3.3)."""
        with torch.no_grad():
            for conv, s in zip(self.m, self.strides):
                b = conv.bias.view(self.na, self.no)
                b[:, 4] += math.log(8 / (image_size / s) ** 2)
                b[:, 5:] += math.log(0.6 / (self.nc - 0.99999))

    def _build_grids(self, img_size):
        # Plain tensor attributes, as in ultralytics: constants of the input size, not
        # weights (not in the state dict) and left alone by .to(memory_format=...).
        h, w = img_size
        self.grid, self.anchor_grid = [], []
        for i, s in enumerate(self.strides):
            ny, nx = _level_size(h, s), _level_size(w, s)
            yv, xv = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
            grid = np.stack((xv, yv), -1).astype(np.float32) - 0.5   # 2 sigmoid - 0.5
            grid = np.broadcast_to(grid, (1, self.na, ny, nx, 2))
            anchor = self.anchors[i].view(1, self.na, 1, 1, 2).expand(1, self.na, ny, nx, 2)
            self.grid.append(torch.from_numpy(grid.copy()))
            self.anchor_grid.append(anchor.clone())

    def forward(self, feats):
        sizes = [tuple(f.shape[2:]) for f in feats]
        if any(tuple(g.shape[2:4]) != sz for g, sz in zip(self.grid, sizes)):
            if torch.compiler.is_exporting():
                raise ValueError("the detector's grids are for another input size than "
                                 "this export's: build it with img_size=(H, W) of the input")
            # the level sizes follow from the stride-8 map's alone
            self._build_grids(tuple(n * self.strides[0] for n in sizes[0]))
        out = []
        for i, x in enumerate(feats):
            x = self.m[i](x)
            bs, _, ny, nx = x.shape
            x = x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            y = x.sigmoid()
            xy, wh, conf = y.split((2, 2, self.nc + 1), 4)
            xy = (xy * 2 + self.grid[i]) * self.strides[i]
            wh = (wh * 2) ** 2 * self.anchor_grid[i]
            out.append(torch.cat((xy, wh, conf), 4).view(bs, self.na * ny * nx, self.no))
        return tuple(out)


class YOLO(nn.Module):
    def __init__(self, nc=80, width=0.25, depth=0.33, img_size=(360, 480)):
        super().__init__()
        c = [max(8, int(round(v * width / 8)) * 8) for v in (64, 128, 256, 512, 1024)]
        n = lambda k: max(round(k * depth), 1)  # noqa: E731
        # backbone: P1/2 .. P5/32
        self.stem = Conv(3, c[0], 6, 2, 2)
        self.down1, self.c3_1 = Conv(c[0], c[1], 3, 2), C3(c[1], c[1], n(3))
        self.down2, self.c3_2 = Conv(c[1], c[2], 3, 2), C3(c[2], c[2], n(6))
        self.down3, self.c3_3 = Conv(c[2], c[3], 3, 2), C3(c[3], c[3], n(9))
        self.down4, self.c3_4 = Conv(c[3], c[4], 3, 2), C3(c[4], c[4], n(3))
        self.sppf = SPPF(c[4], c[4])
        # neck: top-down (FPN) then bottom-up (PAN)
        self.lat5, self.td4 = Conv(c[4], c[3], 1), C3(2 * c[3], c[3], n(3), False)
        self.lat4, self.td3 = Conv(c[3], c[2], 1), C3(2 * c[2], c[2], n(3), False)
        self.bu3, self.pan4 = Conv(c[2], c[2], 3, 2), C3(2 * c[2], c[3], n(3), False)
        self.bu4, self.pan5 = Conv(c[3], c[3], 3, 2), C3(2 * c[3], c[4], n(3), False)
        # ultralytics keeps PyTorch's default conv initialisation (kaiming-uniform, a=sqrt(5))
        self.detect = Detect(nc, (c[2], c[3], c[4]), img_size)
        self.detect.initialize_biases()

    @staticmethod
    def _up(x, like):
        return F.interpolate(x, size=like.shape[-2:], mode="nearest")

    def forward(self, x):
        p3 = self.c3_2(self.down2(self.c3_1(self.down1(self.stem(x)))))
        p4 = self.c3_3(self.down3(p3))
        p5 = self.sppf(self.c3_4(self.down4(p4)))
        h5 = self.lat5(p5)
        h4 = self.lat4(self.td4(torch.cat((self._up(h5, p4), p4), 1)))
        o3 = self.td3(torch.cat((self._up(h4, p3), p3), 1))
        o4 = self.pan4(torch.cat((self.bu3(o3), h4), 1))
        o5 = self.pan5(torch.cat((self.bu4(o4), h5), 1))
        return self.detect((o3, o4, o5))


def yolo(num_classes=80, width=0.25, depth=0.33, img_size=(360, 480)):
    """A YOLOv5n-sized detector (width 0.25, depth 0.33) for ``img_size`` inputs."""
    return YOLO(num_classes, width, depth, tuple(img_size))
