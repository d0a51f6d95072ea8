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


def pnet_weights_path():
    """Path of the trained PNet state dict in an installed facenet-pytorch, or None."""
    return wheel_file("facenet_pytorch", "data", "pnet.pt")


PNET_MISSING = ("PNet's trained weights come from the facenet-pytorch wheel: "
                "pip install --no-deps facenet-pytorch==2.6.0")


def pnet(pretrained=True):
    """PNet in eval mode, with the trained weights when ``pretrained`` (FileNotFoundError
    saying how to install them when facenet-pytorch is absent)."""
    model = PNet()
    if pretrained:
        path = pnet_weights_path()
        if path is None:
            raise FileNotFoundError(PNET_MISSING)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def pnet_preprocess():
    """The :class:`framedelta.formats.Preprocess` for feeding PNet uint8 BGR frames."""
    from framedelta.formats import Preprocess
    return Preprocess(scale=1.0, mean=(PNET_MEAN,) * 3, std=(PNET_STD,) * 3, bgr_to_rgb=True)
