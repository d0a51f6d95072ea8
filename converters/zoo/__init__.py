"""Reference models in plain PyTorch (no torchvision): the converter's end-to-end cases,
the demo's and the benchmarks' models.

Classification backbones follow torchvision's architectures, module names included, so
torchvision state dicts load: ``resnet18``, ``mobilenet_v2``, ``mobilenet_v3_small``
(hardswish, squeeze-excitation with a hardsigmoid gate), ``efficientnet_b0`` (SiLU, SE,
depthwise 5x5 stride 2). Dense prediction: ``unet`` (a small classic U-Net), ``fcn``
(transposed-convolution upsampling with skip adds), ``deeplabv3`` (dilated ResNet
backbone, ASPP with an image-pooling branch, bilinear logits). Detection: ``yolo``
(YOLOv5-style: C3, SPPF, FPN/PAN neck, three decoded outputs as a tuple) and
``yolov8n`` (ultralytics' YOLOv8n: C2f, SPPF, PAN neck, the DFL ``Detect`` head with
anchors built at forward time). Trained
weights: ``pnet`` (MTCNN's face-proposal net, weights from the facenet-pytorch wheel;
not in ``ZOO``, whose models are random); ``TRAINED`` (trained.py): ONNX files that
ship in wheels, CenterFace and PP-OCRv4's text detector (``convert_trained(name)``).

The factories take no required argument, so ``framedelta.converters.zoo:resnet18`` works
as a checkpoint import path. ``ZOO`` maps names to factories of seeded, randomized eval
models whose BatchNorms have non-trivial statistics (so BN folding is really tested);
keyword arguments pass through to the factory (``ZOO["yolo"](img_size=(64, 96))``).
"""

from functools import partial

import torch
from torch import nn

from .efficientnet import efficientnet_b0
from .mobilenet import mobilenet_v2, mobilenet_v3_small
from .pnet import PNet, onet, pnet, pnet_preprocess, pnet_weights_path, rnet
from .resnet import resnet18
from .segmentation import deeplabv3, fcn, unet
from .trained import TRAINED, convert_trained, trained_path
from .yolo import yolo
from .yolov8 import yolov8n

# --- randomized models ----------------------------------------------------------------------

def randomize_bn(model, seed=0):
    """Give every BatchNorm random running statistics and affine parameters, so that
    folding BN into a conv is not a no-op. Returns ``model``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand(c, generator=g))
                    m.bias.copy_(0.2 * torch.randn(c, generator=g))
    return model


def randomized(factory, seed=0, **kwargs):
    """``factory(**kwargs)`` with seeded weights and randomized BN, in eval mode; the
    global torch RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory(**kwargs)
    return randomize_bn(model, seed).eval()


ZOO = {
    "resnet18": partial(randomized, resnet18),
    "mobilenet_v2": partial(randomized, mobilenet_v2),
    "unet": partial(randomized, unet),
    "mobilenet_v3_small": partial(randomized, mobilenet_v3_small),
    "efficientnet_b0": partial(randomized, efficientnet_b0),
    "deeplabv3": partial(randomized, deeplabv3),
    "yolo": partial(randomized, yolo),
    "fcn": partial(randomized, fcn),
    "yolov8n": partial(randomized, yolov8n),
}

__all__ = ["ZOO", "randomize_bn", "randomized", "resnet18", "mobilenet_v2",
           "mobilenet_v3_small", "efficientnet_b0", "unet", "fcn", "deeplabv3", "yolo",
           "yolov8n", "PNet", "pnet", "rnet", "onet", "pnet_preprocess", "pnet_weights_path", "TRAINED",
           "convert_trained", "trained_path"]
