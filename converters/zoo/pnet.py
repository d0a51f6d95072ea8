"""MTCNN's PNet (Zhang et al. 2016), the face-proposal net, with its trained weights.

A small-receptive-field fully convolutional net (12x12 pixels, output stride 2) whose
real weights make error figures honest: random weights do not behave like trained
ones. The module mirrors ``facenet_pytorch.models.mtcnn.PNet`` (names included) in
plain PyTorch; the weights are the state dict that ships inside the facenet-pytorch
wheel (``facenet_pytorch/data/pnet.pt``). That package imports torchvision, which does
not import beside our torch, so it is installed with ``--no-deps`` and its file is
located without importing it::

    pip install --no-deps facenet-pytorch==2.6.0
"""

import torch
from torch import nn

from .trained import wheel_file

# MTCNN's input: RGB, (x - 127.5) / 128 (facenet_pytorch's detect_face)
PNET_MEAN = 127.5
PNET_STD = 128.0


class PNet(nn.Module):
    """conv3 -> PReLU -> maxpool 2 (ceil) -> conv3 -> PReLU -> conv3 -> PReLU, then two
    1x1 heads: box regression (4 channels) and face probability (softmax over 2)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.softmax4_1 = nn.Softmax(dim=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x):
        x = self.prelu1(self.conv1(x))
        x = self.pool1(x)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return self.conv4_2(x), self.softmax4_1(self.conv4_1(x))


def _add_convs(net, spec):
    """conv{i} -> prelu{i} (-> pool{i}) for each (cin, cout, kernel, pool) of ``spec``,
    named as facenet-pytorch names them (so its state dicts load)."""
    for i, (cin, cout, k, pool) in enumerate(spec, 1):
        setattr(net, f"conv{i}", nn.Conv2d(cin, cout, kernel_size=k))
        setattr(net, f"prelu{i}", nn.PReLU(cout))
        if pool:
            setattr(net, f"pool{i}", nn.MaxPool2d(*pool, ceil_mode=True))
    net.n_convs = len(spec)


def _features(net, x):
    """The convolutions, then the map flattened in facenet-pytorch's (W, H, C) order."""
    for i in range(1, net.n_convs + 1):
        x = getattr(net, f"prelu{i}")(getattr(net, f"conv{i}")(x))
        if hasattr(net, f"pool{i}"):
            x = getattr(net, f"pool{i}")(x)
    x = x.permute(0, 3, 2, 1).contiguous()
    return x.view(x.shape[0], -1)


class RNet(nn.Module):
    """MTCNN's refinement net on 24x24 crops: three convs with PReLU and pools, a dense
    layer, then box regression and face probability."""

    def __init__(self):
        super().__init__()
        _add_convs(self, [(3, 28, 3, (3, 2)), (28, 48, 3, (3, 2)), (48, 64, 2, None)])
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.softmax5_1 = nn.Softmax(dim=1)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x):
        x = self.prelu4(self.dense4(_features(self, x)))
        return self.dense5_2(x), self.softmax5_1(self.dense5_1(x))


class ONet(nn.Module):
    """MTCNN's output net on 48x48 crops: box regression, five landmarks, face
    probability."""

    def __init__(self):
        super().__init__()
        _add_convs(self, [(3, 32, 3, (3, 2)), (32, 64, 3, (3, 2)), (64, 64, 3, (2, 2)),
                          (64, 128, 2, None)])
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x):
        x = self.prelu5(self.dense5(_features(self, x)))
        return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))


# the input side each net is trained for (PNet is fully convolutional: any size)
MTCNN_SIZES = {"rnet": 24, "onet": 48}


def pnet_weights_path(net="pnet"):
    """Path of the trained state dict of ``net`` ("pnet", "rnet" or "onet") in an
    installed facenet-pytorch, or None."""
    return wheel_file("facenet_pytorch", "data", f"{net}.pt")


PNET_MISSING = ("MTCNN's trained weights come from the facenet-pytorch wheel: "
                "pip install --no-deps facenet-pytorch==2.6.0")


def _mtcnn(cls, name, pretrained):
    model = cls()
    if pretrained:
        path = pnet_weights_path(name)
        if path is None:
            raise FileNotFoundError(PNET_MISSING)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def pnet(pretrained=True):
    """PNet in eval mode, with the trained weights when ``pretrained`` (FileNotFoundError
    saying how to install them when facenet-pytorch is absent)."""
    return _mtcnn(PNet, "pnet", pretrained)


def rnet(pretrained=True):
    """RNet (24x24 crops) in eval mode, trained weights as for :func:`pnet`."""
    return _mtcnn(RNet, "rnet", pretrained)


def onet(pretrained=True):
    """ONet (48x48 crops) in eval mode, trained weights as for :func:`pnet`."""
    return _mtcnn(ONet, "onet", pretrained)


def pnet_preprocess():
    """The :class:`framedelta.formats.Preprocess` for feeding PNet uint8 BGR frames."""
    from framedelta.formats import Preprocess
    return Preprocess(scale=1.0, mean=(PNET_MEAN,) * 3, std=(PNET_STD,) * 3, bgr_to_rgb=True)
