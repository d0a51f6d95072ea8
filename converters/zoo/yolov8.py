"""YOLOv8n (ultralytics' ``DetectionModel("yolov8n.yaml")``) in plain PyTorch, written as
ultralytics writes it: Conv-BN-SiLU, C2f blocks, SPPF, a PAN neck of nearest upsampling
and concatenation, and the decoupled ``Detect`` head with DFL (a softmax over 16 bins
then a fixed 1x1 convolution of weights 0..15), ``dist2bbox``, and anchors built at
forward time from the feature-map shapes (``make_anchors``: arange, meshgrid, full,
a dtype cast, cat). Eval mode returns ``(y, [p3, p4, p5])`` with y the concatenated
(1, 4 + nc, N) boxes (xywh, pixels) and class scores.

The converter takes it unmodified: every value of the anchor grid is a constant of
the input shape, folded at conversion time. Module names follow ultralytics'
(``model.0`` .. ``model.22``, ``cv1``/``cv2``/``m``, ``dfl.conv``), so its state dicts
load. Sides must be multiples of 32.
"""

import torch
from torch import nn


def autopad(k, p=None, d=1):
    if d > 1:
        k = d * (k - 1) + 1
    return k // 2 if p is None else p


class Conv(nn.Module):
    default_act = nn.SiLU()

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, d=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=0.001, momentum=0.03)
        self.act = self.default_act if act is True else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c1, c2, shortcut=True, g=1, k=(3, 3), e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, k[0], 1)
        self.cv2 = Conv(c_, c2, k[1], 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C2f(nn.Module):
    """CSP bottleneck with two convolutions: split cv1's output in two, chain n
    bottlenecks on the second half, concatenate every piece, cv2."""

    def __init__(self, c1, c2, n=1, shortcut=False, g=1, e=0.5):
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, g, k=(3, 3), e=1.0)
                               for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c1, c2, k=5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    """Distribution focal loss integral: softmax over c1 bins, then their expectation
    as a fixed 1x1 convolution with weights 0 .. c1-1."""

    def __init__(self, c1=16):
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        x = torch.arange(c1, dtype=torch.float)
        self.conv.weight.data[:] = nn.Parameter(x.view(1, c1, 1, 1))
        self.c1 = c1

    def forward(self, x):
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


def make_anchors(feats, strides, grid_cell_offset=0.5):
    """Anchor points (cell centres) and their strides, from the feature-map shapes."""
    anchor_points, stride_tensor = [], []
    dtype, device = feats[0].dtype, feats[0].device
    for i, stride in enumerate(strides):
        h, w = feats[i].shape[2:]
        sx = torch.arange(end=w, device=device, dtype=dtype) + grid_cell_offset
        sy = torch.arange(end=h, device=device, dtype=dtype) + grid_cell_offset
        sy, sx = torch.meshgrid(sy, sx, indexing="ij")
        anchor_points.append(torch.stack((sx, sy), -1).view(-1, 2))
        stride_tensor.append(torch.full((h * w, 1), stride, dtype=dtype, device=device))
    return torch.cat(anchor_points), torch.cat(stride_tensor)


def dist2bbox(distance, anchor_points, xywh=True, dim=-1):
    """(left, top, right, bottom) distances from the anchors -> boxes."""
    lt, rb = distance.chunk(2, dim)
    x1y1 = anchor_points - lt
    x2y2 = anchor_points + rb
    if xywh:
        c_xy = (x1y1 + x2y2) / 2
        wh = x2y2 - x1y1
        return torch.cat((c_xy, wh), dim)
    return torch.cat((x1y1, x2y2), dim)


class Detect(nn.Module):
    """The decoupled head: per level a box branch (4 x reg_max logits) and a class
    branch; decoded with DFL and anchors built from the feature shapes."""

    dynamic = False     # rebuild the anchors at every call (else when the shape changes)
    shape = None
    anchors = torch.empty(0)
    strides = torch.empty(0)

    def __init__(self, nc=80, ch=(), strides=(8, 16, 32)):
        super().__init__()
        self.nc, self.nl, self.reg_max = nc, len(ch), 16
        self.no = nc + self.reg_max * 4
        self.stride = torch.tensor(strides, dtype=torch.float32)
        c2, c3 = max((16, ch[0] // 4, self.reg_max * 4)), max(ch[0], min(self.nc, 100))
        self.cv2 = nn.ModuleList(nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3),
                                               nn.Conv2d(c2, 4 * self.reg_max, 1)) for x in ch)
        self.cv3 = nn.ModuleList(nn.Sequential(Conv(x, c3, 3), Conv(c3, c3, 3),
                                               nn.Conv2d(c3, self.nc, 1)) for x in ch)
        self.dfl = DFL(self.reg_max)

    def forward(self, x):
        x = [torch.cat((self.cv2[i](x[i]), self.cv3[i](x[i])), 1) for i in range(self.nl)]
        shape = x[0].shape
        x_cat = torch.cat([xi.view(shape[0], self.no, -1) for xi in x], 2)
        if self.dynamic or self.shape != shape:
            self.anchors, self.strides = (t.transpose(0, 1)
                                          for t in make_anchors(x, self.stride, 0.5))
            self.shape = shape
        box, cls = x_cat.split((self.reg_max * 4, self.nc), 1)
        dbox = dist2bbox(self.dfl(box), self.anchors.unsqueeze(0), xywh=True, dim=1) \
            * self.strides
        return torch.cat((dbox, cls.sigmoid()), 1), x


class Concat(nn.Module):
    def forward(self, xs):
        return torch.cat(xs, 1)


class YOLOv8(nn.Module):
    """yolov8n.yaml at depth 0.33, width 0.25: ``model.0`` .. ``model.22``."""

    # (from, module) as in yolov8n.yaml's backbone and head
    SAVE = (4, 6, 9, 12, 15, 18, 21)

    def __init__(self, nc=80):
        super().__init__()
        up = nn.Upsample(scale_factor=2, mode="nearest")
        self.model = nn.ModuleList([
            Conv(3, 16, 3, 2), Conv(16, 32, 3, 2), C2f(32, 32, 1, True),          # 0-2
            Conv(32, 64, 3, 2), C2f(64, 64, 2, True),                               # 3-4 P3
            Conv(64, 128, 3, 2), C2f(128, 128, 2, True),                            # 5-6 P4
            Conv(128, 256, 3, 2), C2f(256, 256, 1, True), SPPF(256, 256, 5),        # 7-9 P5
            up, Concat(), C2f(384, 128, 1),                                         # 10-12
            up, Concat(), C2f(192, 64, 1),                                          # 13-15
            Conv(64, 64, 3, 2), Concat(), C2f(192, 128, 1),                         # 16-18
            Conv(128, 128, 3, 2), Concat(), C2f(384, 256, 1),                       # 19-21
            Detect(nc, (64, 128, 256)),                                             # 22
        ])

    def forward(self, x):
        m, y = self.model, {}
        for i in range(10):
            x = m[i](x)
            y[i] = x
        x = m[12](m[11]([m[10](x), y[6]]))
        y[12] = x
        x = m[15](m[14]([m[13](x), y[4]]))
        y[15] = x
        x = m[18](m[17]([m[16](x), y[12]]))
        y[18] = x
        x = m[21](m[20]([m[19](x), y[9]]))
        return m[22]([y[15], y[18], x])


def yolov8n(nc=80):
    """YOLOv8n with random weights (the zoo randomizes BN statistics), eval mode."""
    return YOLOv8(nc).eval()
