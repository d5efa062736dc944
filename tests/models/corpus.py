"""A conformance corpus of small PyTorch models, written in the idioms of public code.

Every entry is small enough for encrypted evaluation on the 8x8 scikit-learn digits
(or the other ``data`` kinds listed on :class:`Entry`). The models re-create the
*style* of well-known public examples (tutorials, papers, model zoos) so that a
converter sees the many spellings real users write for the same operations.

This module depends on torch and the standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Entry:
    """One model of the corpus.

    ``data`` is one of:

    * ``"digits"``: float images ``(1, 8, 8)`` in [0, 1]
    * ``"digits-flat"``: float vectors ``(64,)`` in [0, 1]
    * ``"digits-seq"``: float ``(8, 8)``, 8 rows of 8 pixels as a sequence, in [0, 1]
    * ``"tokens"``: int64 indices ``(16,)`` with values in [0, 32)
    * ``"audio"``: float ``(1, 64)`` in [-1, 1]

    ``polynomial`` is True when every operation inside is affine or an elementwise
    activation / polynomial (an optional softmax, log_softmax, sigmoid or argmax at the
    very end is allowed): a model an HE backend could in principle run with
    polynomial approximations.
    """

    name: str
    source: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    data: str
    polynomial: bool


# ---------------------------------------------------------------------------
# Privacy-preserving ML tutorials and papers
# ---------------------------------------------------------------------------


class TenSEALConvNet(nn.Module):
    """TenSEAL tutorial style: one strided conv, x * x, view(-1, N), fc, x * x, fc."""

    def __init__(self, hidden=32, output=10):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 4, kernel_size=4, padding=0, stride=2)
        self.fc1 = torch.nn.Linear(36, hidden)
        self.fc2 = torch.nn.Linear(hidden, output)

    def forward(self, x):
        x = self.conv1(x)
        # the square activation function
        x = x * x
        # flattening while keeping the batch axis
        x = x.view(-1, 36)
        x = self.fc1(x)
        x = x * x
        x = self.fc2(x)
        return x


class MnistExampleNet(nn.Module):
    """PyTorch examples mnist/main.py style."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, 1)
        self.conv2 = nn.Conv2d(8, 16, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        output = F.log_softmax(x, dim=1)
        return output


def crypten_sequential_mlp() -> nn.Module:
    num_inputs, num_intermediate, num_outputs = 64, 32, 10
    return nn.Sequential(
        nn.Linear(num_inputs, num_intermediate),
        nn.ReLU(),
        nn.Linear(num_intermediate, num_intermediate),
        nn.ReLU(),
        nn.Linear(num_intermediate, num_outputs),
    )


class AliceNet(nn.Module):
    """CrypTen Tutorial 4 style: three fc layers with F.relu in forward."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 32)
        self.fc3 = nn.Linear(32, 10)

    def forward(self, x):
        out = self.fc1(x)
        out = F.relu(out)
        out = self.fc2(out)
        out = F.relu(out)
        out = self.fc3(out)
        return out


class CrypTenCNN(nn.Module):
    """CrypTen tutorial style small CNN: conv, F.relu, nn.MaxPool2d(2), nn.AvgPool2d."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, kernel_size=3, padding=1)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, kernel_size=3, padding=1)
        self.pool2 = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x):
        out = self.pool1(F.relu(self.conv1(x)))
        out = self.pool2(F.relu(self.conv2(out)))
        out = out.view(out.size(0), -1)
        out = self.fc1(out)
        return out


def opacus_tanh_cnn() -> nn.Module:
    # Opacus SampleConvNet layout (stride-2 conv, max pool with stride 1), tanh activations.
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, 2, padding=1),  # -> [B, 16, 4, 4]
        nn.Tanh(),
        nn.MaxPool2d(2, 1),  # -> [B, 16, 3, 3]
        nn.Conv2d(16, 32, 2, 1),  # -> [B, 32, 2, 2]
        nn.Tanh(),
        nn.MaxPool2d(2, 1),  # -> [B, 32, 1, 1]
        nn.Flatten(),
        nn.Linear(32, 32),
        nn.Tanh(),
        nn.Linear(32, 10),
    )


def opacus_tanh_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 32),
        nn.Tanh(),
        nn.Linear(32, 10),
    )


class CryptoNets(nn.Module):
    """CryptoNets (Gilad-Bachrach et al. 2016): conv with 5 maps, square, dense, square, dense."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 5, kernel_size=3, stride=2, padding=1)  # -> 5 x 4 x 4
        self.dense1 = nn.Linear(5 * 4 * 4, 32)
        self.dense2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.conv(x).pow(2)
        x = x.reshape(x.shape[0], -1)
        x = torch.square(self.dense1(x))
        return self.dense2(x)


class LoLaNet(nn.Module):
    """LoLa-style (Brutzkus et al. 2019) low-latency HE net with batch norm and squares."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 5, kernel_size=2, stride=2)
        self.bn1 = nn.BatchNorm2d(5)
        self.fc1 = nn.Linear(5 * 4 * 4, 32)
        self.bn2 = nn.BatchNorm1d(32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.bn1(self.conv(x))
        x = x**2
        x = torch.flatten(x, 1)
        x = self.bn2(self.fc1(x))
        x = x**2
        return self.fc2(x)


class QuadraticActivation(nn.Module):
    """Learnable degree-2 polynomial activation a*x^2 + b*x + c (Delphi / HE-friendly nets)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.1))
        self.b = nn.Parameter(torch.tensor(0.5))
        self.c = nn.Parameter(torch.tensor(0.0))

    def forward(self, x):
        return self.a * x * x + self.b * x + self.c


def quadratic_activation_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        QuadraticActivation(),
        nn.AvgPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        QuadraticActivation(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


# ---------------------------------------------------------------------------
# ResNets and other CNN families
# ---------------------------------------------------------------------------


def conv3x3(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)

        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(
                    in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False
                ),
                nn.BatchNorm2d(self.expansion * planes),
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        out = F.relu(out)
        return out


class ResNetCifar(nn.Module):
    """CIFAR ResNet-20 shape (3 stages, widths 4/8/16), one BasicBlock per stage."""

    def __init__(self, block=BasicBlock, num_blocks=(1, 1, 1), num_classes=10):
        super().__init__()
        self.in_planes = 4
        self.conv1 = conv3x3(1, 4)
        self.bn1 = nn.BatchNorm2d(4)
        self.layer1 = self._make_layer(block, 4, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 8, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 16, num_blocks[2], stride=2)
        self.linear = nn.Linear(16, num_classes)

    def _make_layer(self, block, planes, num_blocks, stride):
        strides = [stride] + [1] * (num_blocks - 1)
        layers = []
        for s in strides:
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = F.adaptive_avg_pool2d(out, 1)
        out = out.view(out.size(0), -1)
        out = self.linear(out)
        return out


class PreActBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv twice, residual via torch.add."""

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x):
        out = torch.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return torch.add(out, shortcut)


class PreActResNetTiny(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = conv3x3(1, 8)
        self.layer1 = PreActBlock(8, 8)
        self.layer2 = PreActBlock(8, 16, stride=2)
        self.bn = nn.BatchNorm2d(16)
        self.linear = nn.Linear(16, num_classes)

    def forward(self, x):
        out = self.conv1(x)
        out = self.layer2(self.layer1(out))
        out = torch.relu(self.bn(out))
        out = out.mean([2, 3])
        return self.linear(out)


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual: expand 1x1, depthwise 3x3, project 1x1 (+ skip)."""

    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            # pw
            nn.Conv2d(inp, hidden_dim, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden_dim),
            nn.ReLU6(inplace=True),
            # dw
            nn.Conv2d(hidden_dim, hidden_dim, 3, stride, 1, groups=hidden_dim, bias=False),
            nn.BatchNorm2d(hidden_dim),
            nn.ReLU6(inplace=True),
            # pw-linear
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x):
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2Tiny(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, 1, 1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU6(inplace=True),
            InvertedResidual(8, 8, 1, expand_ratio=2),
            InvertedResidual(8, 16, 2, expand_ratio=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(16, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


class SELayer(nn.Module):
    """Squeeze-and-excitation: the input is multiplied by a gate computed from itself."""

    def __init__(self, channel, reduction=4):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channel, channel // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channel // reduction, channel, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x):
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


class SENet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.se = SELayer(16)
        self.conv2 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = self.se(x)
        x = F.relu(self.conv2(x))
        x = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
        return self.fc(x)


class InceptionBlock(nn.Module):
    """GoogLeNet-style block: parallel 1x1, 3x3 and pool-projection branches joined by cat."""

    def __init__(self, in_channels):
        super().__init__()
        self.branch1x1 = nn.Conv2d(in_channels, 8, kernel_size=1)
        self.branch3x3 = nn.Sequential(
            nn.Conv2d(in_channels, 4, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(4, 8, kernel_size=3, padding=1),
        )
        self.branch_pool = nn.Conv2d(in_channels, 8, kernel_size=1)

    def forward(self, x):
        branch1x1 = self.branch1x1(x)
        branch3x3 = self.branch3x3(x)
        branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)
        branch_pool = self.branch_pool(branch_pool)
        outputs = [branch1x1, branch3x3, branch_pool]
        return torch.cat(outputs, 1)


class InceptionTiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, kernel_size=3, padding=1)
        self.block = InceptionBlock(8)
        self.pool = nn.AvgPool2d(kernel_size=4)
        self.fc = nn.Linear(24 * 2 * 2, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.block(x))
        x = self.pool(x)
        x = torch.flatten(x, start_dim=1)
        return self.fc(x)


class TwoBranchCat(nn.Module):
    """Two-tower net: an image branch and a row-pooled branch joined by torch.cat([a, b], dim=1)."""

    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv2d(1, 4, kernel_size=3, stride=2, padding=1)
        self.conv_b = nn.Conv2d(1, 4, kernel_size=5, stride=2, padding=2)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        a = torch.sigmoid(self.conv_a(x))
        b = torch.tanh(self.conv_b(x))
        x = torch.cat([a, b], dim=1)
        return self.fc(x.flatten(1))


def lenet_d2l() -> nn.Module:
    # d2l.ai LeNet: sigmoid activations and average-pool subsampling.
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=3, padding=1),
        nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=3),
        nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16, 32),
        nn.Sigmoid(),
        nn.Linear(32, 24),
        nn.Sigmoid(),
        nn.Linear(24, 10),
    )


# ---------------------------------------------------------------------------
# Pooling spellings
# ---------------------------------------------------------------------------


class AvgPoolSpellings(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = F.avg_pool2d(F.relu(self.conv2(x)), kernel_size=2)
        x = torch.flatten(x, start_dim=1)
        return self.fc(x)


def adaptive_avgpool_int() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=3, padding=1),
        nn.SiLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 2 * 2, 10),
    )


class AdaptiveAvgPoolTuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, kernel_size=3, padding=1),
            nn.BatchNorm2d(8),
            nn.GELU(),
            nn.Conv2d(8, 16, kernel_size=3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.GELU(),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = x.view(x.size(0), -1)
        return self.classifier(x)


class MaxPoolSpellings(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 2 * 2, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.conv2(x)), (2, 2))
        x = x.view(-1, 16 * 2 * 2)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


# ---------------------------------------------------------------------------
# Structural ops: constants, learnable scales, residual MLPs, sequence reshapes
# ---------------------------------------------------------------------------


class AffineConstantsCNN(nn.Module):
    """Division by a constant, adding a constant, learnable per-channel and scalar scales."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, kernel_size=3, padding=1)
        self.gamma = nn.Parameter(torch.ones(1, 8, 1, 1))
        self.scale = nn.Parameter(torch.full((1,), 0.5))
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = self.conv(x)
        x = x / 2.0
        x = x + 1.0
        x = F.relu(x)
        x = self.gamma * x
        x = F.avg_pool2d(x, 2)
        x = x.flatten(1)
        x = self.scale * x
        return self.fc(x)


class ResidualMLP(nn.Module):
    """Residual MLP with both torch.add(a, b) and a + b."""

    def __init__(self, dim=32):
        super().__init__()
        self.inp = nn.Linear(64, dim)
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, 10)

    def forward(self, x):
        x = F.relu(self.inp(x))
        x = torch.add(x, F.relu(self.fc1(x)))
        x = x + F.relu(self.fc2(x))
        return self.out(x)


class SeqConv1dSqueeze(nn.Module):
    """Rows as a sequence: transpose to channels-first, Conv1d, global pool, squeeze(-1)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(8, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(16, 16, kernel_size=3, padding=1)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = x.transpose(1, 2)  # (B, T, F) -> (B, F, T)
        x = torch.tanh(self.conv1(x))
        x = torch.tanh(self.conv2(x))
        x = self.pool(x).squeeze(-1)
        return self.fc(x)


class SeqUnsqueezeCNN(nn.Module):
    """A (B, 8, 8) sequence input given a channel axis with unsqueeze(1)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, kernel_size=3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = x.unsqueeze(1)
        x = F.elu(self.bn(self.conv(x)))
        x = x.reshape(x.shape[0], -1)
        return self.fc(x)


# ---------------------------------------------------------------------------
# MLPs in many spellings
# ---------------------------------------------------------------------------


def mlp_sequential_flatten() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(8 * 8, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


class MLPViewFRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 32)
        self.fc3 = nn.Linear(32, 10)

    def forward(self, x):
        x = x.view(x.size(0), -1)
        x = F.relu(self.fc1(x))
        x = self.fc2(x).relu()
        return self.fc3(x)


class MLPReshapeTorchRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(64, 24)
        self.output = nn.Linear(24, 10)

    def forward(self, x):
        x = x.reshape(x.shape[0], -1)
        x = torch.relu(self.hidden(x))
        return self.output(x)


def mlp_gelu_silu() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 32),
        nn.GELU(),
        nn.Linear(32, 32),
        nn.SiLU(),
        nn.Linear(32, 10),
    )


class MLPSwish(nn.Module):
    """Hand-written swish x * sigmoid(x), and a division by a python constant."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(64, 32)
        self.l2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.l1(x)
        x = x * torch.sigmoid(x)
        x = x / 2.0
        return self.l2(x)


def mlp_leakyrelu_relu6() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 32),
        nn.LeakyReLU(0.1),
        nn.Linear(32, 32),
        nn.ReLU6(),
        nn.Linear(32, 10),
    )


class MLPHardswishELU(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.act1 = nn.Hardswish()
        self.fc2 = nn.Linear(32, 16)
        self.act2 = nn.ELU()
        self.fc3 = nn.Linear(16, 10)

    def forward(self, x):
        x = x.flatten(1)
        x = self.act1(self.fc1(x))
        x = self.act2(self.fc2(x))
        return self.fc3(x)


class MLPSoftplusTanhSigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.softplus = nn.Softplus()
        self.fc2 = nn.Linear(32, 32)
        self.fc3 = nn.Linear(32, 16)
        self.sigmoid = nn.Sigmoid()
        self.fc4 = nn.Linear(16, 10)

    def forward(self, x):
        x = self.softplus(self.fc1(x))
        x = torch.tanh(self.fc2(x))
        x = self.sigmoid(self.fc3(x))
        return self.fc4(x)


def mlp_batchnorm() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 32),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Linear(32, 32),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def mlp_softmax_head() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
        nn.Softmax(dim=1),
    )


class MLPArgmax(nn.Module):
    """A predictor that returns class indices, not logits."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        logits = self.fc2(F.relu(self.fc1(x)))
        return logits.argmax(dim=1)


class OneVsAll(nn.Module):
    """Ten independent binary classifiers: one sigmoid score per class."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.tanh(self.fc1(x))
        return torch.sigmoid(self.fc2(x))


# ---------------------------------------------------------------------------
# 1-d audio CNNs
# ---------------------------------------------------------------------------


def audio_cnn_1d() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(1, 8, kernel_size=5, padding=2),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.MaxPool1d(2),  # 64 -> 32
        nn.Conv1d(8, 16, kernel_size=3, padding=1),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.AvgPool1d(2),  # 32 -> 16
        nn.Conv1d(16, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


class M5(nn.Module):
    """torchaudio speech-command tutorial M5 style: strided first conv, F.avg_pool1d over time."""

    def __init__(self, n_input=1, n_output=10, stride=4, n_channel=16):
        super().__init__()
        self.conv1 = nn.Conv1d(n_input, n_channel, kernel_size=8, stride=stride, padding=2)
        self.bn1 = nn.BatchNorm1d(n_channel)
        self.pool1 = nn.MaxPool1d(2)
        self.conv2 = nn.Conv1d(n_channel, n_channel, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm1d(n_channel)
        self.pool2 = nn.MaxPool1d(2)
        self.fc1 = nn.Linear(n_channel, n_output)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(self.bn1(x))
        x = self.pool1(x)
        x = self.conv2(x)
        x = F.relu(self.bn2(x))
        x = self.pool2(x)
        x = F.avg_pool1d(x, x.shape[-1])
        x = x.permute(0, 2, 1)
        x = self.fc1(x)
        x = x.squeeze(1)
        return F.log_softmax(x, dim=1)


class AudioPolyCNN(nn.Module):
    """Polynomial-only 1-d CNN: Conv1d, square activation, AvgPool1d, linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, kernel_size=5, stride=2, padding=2)  # 64 -> 32
        self.pool1 = nn.AvgPool1d(2)  # -> 16
        self.conv2 = nn.Conv1d(8, 16, kernel_size=3, padding=1)
        self.pool2 = nn.AvgPool1d(kernel_size=2, stride=2)  # -> 8
        self.fc = nn.Linear(16 * 8, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = self.pool1(x * x)
        x = self.conv2(x)
        x = self.pool2(x.square())
        x = torch.flatten(x, 1)
        return self.fc(x)


# ---------------------------------------------------------------------------
# Transformers
# ---------------------------------------------------------------------------


class Attention(nn.Module):
    """timm-style multi-head self attention written by hand."""

    def __init__(self, dim, num_heads=2, qkv_bias=True):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = (
            self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        )
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        x = self.proj(x)
        return x


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features, act_layer=nn.GELU):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=1.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class PatchEmbed(nn.Module):
    def __init__(self, img_size=8, patch_size=4, in_chans=1, embed_dim=32):
        super().__init__()
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        x = self.proj(x).flatten(2).transpose(1, 2)  # B, C, H, W -> B, N, C
        return x


class VisionTransformer(nn.Module):
    """timm-style ViT: conv patch embedding, class token, learned positions, pre-norm blocks."""

    def __init__(
        self, img_size=8, patch_size=4, num_classes=10, embed_dim=32, depth=2, num_heads=2
    ):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, 1, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x):
        B = x.shape[0]
        x = self.patch_embed(x)
        cls_tokens = self.cls_token.expand(B, -1, -1)
        x = torch.cat((cls_tokens, x), dim=1)
        x = x + self.pos_embed
        x = self.blocks(x)
        x = self.norm(x)
        return self.head(x[:, 0])


class ViTUnfold(nn.Module):
    """ViT from scratch with patches cut by reshape/permute and a linear patch projection."""

    def __init__(self, patch=4, dim=16, heads=2, num_classes=10):
        super().__init__()
        self.patch = patch
        self.num_patches = (8 // patch) ** 2
        self.to_patch_embedding = nn.Linear(patch * patch, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, self.num_patches + 1, dim))
        self.block = Block(dim, heads, mlp_ratio=2.0)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, img):
        B, C, H, W = img.shape
        p = self.patch
        x = img.reshape(B, C, H // p, p, W // p, p)
        x = x.permute(0, 2, 4, 1, 3, 5).reshape(B, (H // p) * (W // p), C * p * p)
        x = self.to_patch_embedding(x)
        cls_tokens = self.cls_token.expand(B, -1, -1)
        x = torch.cat([cls_tokens, x], dim=1)
        x = x + self.pos_embedding
        x = self.block(x)
        x = self.norm(x)
        return self.head(x[:, 0])


class MHABlock(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.ff(self.norm2(x))
        return x


class RowTransformer(nn.Module):
    """Each image row is a token: linear embedding, nn.MultiheadAttention blocks, mean pool."""

    def __init__(self, d=32, heads=2, depth=2, seq_len=8, in_features=8):
        super().__init__()
        self.embed = nn.Linear(in_features, d)
        self.pos = nn.Parameter(torch.zeros(1, seq_len, d))
        self.layers = nn.ModuleList([MHABlock(d, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        x = self.embed(x) + self.pos
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)
        x = x.mean(dim=1)
        return self.head(x)


class MixerBlock(nn.Module):
    """MLP-Mixer block: token mixing on the transposed sequence, then channel mixing."""

    def __init__(self, num_tokens, dim, token_hidden, channel_hidden):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mix = nn.Sequential(
            nn.Linear(num_tokens, token_hidden), nn.GELU(), nn.Linear(token_hidden, num_tokens)
        )
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mix = nn.Sequential(
            nn.Linear(dim, channel_hidden), nn.GELU(), nn.Linear(channel_hidden, dim)
        )

    def forward(self, x):
        y = self.norm1(x).transpose(1, 2)
        x = x + self.token_mix(y).transpose(1, 2)
        x = x + self.channel_mix(self.norm2(x))
        return x


class MLPMixer(nn.Module):
    def __init__(self, dim=16, patch=2, num_classes=10):
        super().__init__()
        num_tokens = (8 // patch) ** 2
        self.stem = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)
        self.blocks = nn.Sequential(
            MixerBlock(num_tokens, dim, 16, 32), MixerBlock(num_tokens, dim, 16, 32)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = x.flatten(2).permute(0, 2, 1)
        x = self.blocks(x)
        x = self.norm(x)
        return self.head(x.mean(dim=1))


# ---------------------------------------------------------------------------
# Text classifiers on token ids
# ---------------------------------------------------------------------------


class TextMeanClassifier(nn.Module):
    """fastText-like: embedding, mean over the sequence, linear head."""

    def __init__(self, vocab_size=32, embed_dim=16, num_class=10):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.fc = nn.Linear(embed_dim, num_class)

    def forward(self, text):
        embedded = self.embedding(text)
        return self.fc(embedded.mean(dim=1))


class TextCNN(nn.Module):
    """Kim (2014) style: embedding, transpose to channels, Conv1d, max over time."""

    def __init__(self, vocab_size=32, embed_dim=16, n_filters=16, num_class=10):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.conv3 = nn.Conv1d(embed_dim, n_filters, kernel_size=3, padding=1)
        self.conv5 = nn.Conv1d(embed_dim, n_filters, kernel_size=5, padding=2)
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(2 * n_filters, num_class)

    def forward(self, text):
        embedded = self.embedding(text).transpose(1, 2)  # (B, L, E) -> (B, E, L)
        c3 = F.relu(self.conv3(embedded))
        c5 = F.relu(self.conv5(embedded))
        p3 = F.max_pool1d(c3, c3.shape[2]).squeeze(2)
        p5 = F.max_pool1d(c5, c5.shape[2]).squeeze(2)
        cat = self.dropout(torch.cat([p3, p5], dim=1))
        return self.fc(cat)


class TextSelfAttention(nn.Module):
    """Embedding plus positions, single-head scaled dot-product attention, mean pooling."""

    def __init__(self, vocab_size=32, d=16, seq_len=16, num_class=10):
        super().__init__()
        self.d = d
        self.embedding = nn.Embedding(vocab_size, d)
        self.pos = nn.Parameter(torch.randn(1, seq_len, d) * 0.02)
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.fc = nn.Linear(d, num_class)

    def forward(self, tokens):
        x = self.embedding(tokens) + self.pos
        q, k, v = self.query(x), self.key(x), self.value(x)
        scores = torch.matmul(q, k.transpose(1, 2)) / math.sqrt(self.d)
        weights = F.softmax(scores, dim=-1)
        x = x + torch.matmul(weights, v)
        return self.fc(x.mean(dim=1))


# ---------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------

_IMG = (1, 8, 8)
_FLAT = (64,)
_SEQ = (8, 8)
_TOK = (16,)
_AUDIO = (1, 64)

ENTRIES: list[Entry] = [
    Entry(
        "tenseal-convnet",
        "TenSEAL Tutorial 4 (encrypted convolution on MNIST) ConvNet: strided conv, x * x, "
        "x.view(-1, N), fc, x * x, fc",
        TenSEALConvNet,
        _IMG,
        "digits",
        True,
    ),
    Entry(
        "pytorch-mnist-example",
        "PyTorch examples, mnist/main.py Net (F.relu, F.max_pool2d, dropout, torch.flatten, "
        "log_softmax head)",
        MnistExampleNet,
        _IMG,
        "digits",
        False,
    ),
    Entry(
        "crypten-sequential-mlp",
        "CrypTen docs/tutorials nn.Sequential of Linear/ReLU",
        crypten_sequential_mlp,
        _FLAT,
        "digits-flat",
        True,
    ),
    Entry(
        "crypten-alicenet",
        "CrypTen Tutorial 4 AliceNet (fc1/fc2/fc3 with F.relu in forward)",
        AliceNet,
        _FLAT,
        "digits-flat",
        True,
    ),
    Entry(
        "crypten-cnn",
        "CrypTen tutorial-style CNN (F.relu in forward, nn.MaxPool2d(2), nn.AvgPool2d, "
        "out.view(out.size(0), -1))",
        CrypTenCNN,
        _IMG,
        "digits",
        False,
    ),
    Entry(
        "opacus-tanh-cnn",
        "Opacus examples/mnist.py SampleConvNet layout with tanh activations "
        "(nn.Sequential, nn.Tanh, nn.MaxPool2d(2, 1), nn.Flatten)",
        opacus_tanh_cnn,
        _IMG,
        "digits",
        False,
    ),
    Entry(
        "opacus-tanh-mlp",
        "Opacus DP-SGD tutorials, plain nn.Sequential MLP with nn.Tanh",
        opacus_tanh_mlp,
        _FLAT,
        "digits-flat",
        True,
    ),
    Entry(
        "resnet20-tiny",
        "CIFAR ResNet-20 (kuangliu/pytorch-cifar, akamaster/pytorch_resnet_cifar10) BasicBlock, "
        "out += shortcut(x), F.adaptive_avg_pool2d(x, 1), widths 4/8/16",
        ResNetCifar,
        _IMG,
        "digits",
        True,
    ),
    Entry(
        "preact-resnet-tiny",
        "kuangliu/pytorch-cifar PreActResNet style (BN-ReLU-conv, torch.relu, torch.add "
        "residual, x.mean([2, 3]))",
        PreActResNetTiny,
        _IMG,
        "digits",
        True,
    ),
    Entry(
        "mobilenetv2-tiny",
        "torchvision MobileNetV2 InvertedResidual (1x1 expand, depthwise groups conv, ReLU6, "
        "1x1 project, x + conv(x), nn.AdaptiveAvgPool2d(1))",
        MobileNetV2Tiny,
        _IMG,
        "digits",
        True,
    ),
    Entry(
        "senet-tiny",
        "SENet SELayer (moskomule/senet.pytorch): x * gate(x).expand_as(x), product of two "
        "computed tensors",
        SENet,
        _IMG,
        "digits",
        False,
    ),
    Entry(
        "inception-tiny",
        "torchvision GoogLeNet/Inception block: parallel 1x1, 3x3, avg-pool branches joined by "
        "torch.cat(outputs, 1)",
        InceptionTiny,
        _IMG,
        "digits",
        True,
    ),
    Entry(
        "two-branch-cat",
        "two-tower CNN, torch.cat([a, b], dim=1) of a sigmoid and a tanh branch, x.flatten(1)",
        TwoBranchCat,
        _IMG,
        "digits",
        True,
    ),
    Entry(
        "lenet-d2l",
        "Dive into Deep Learning LeNet (nn.Sequential, nn.Sigmoid, nn.AvgPool2d(kernel_size=2, "
        "stride=2))",
        lenet_d2l,
        _IMG,
        "digits",
        True,
    ),
    Entry(
        "cryptonets",
        "CryptoNets (Gilad-Bachrach et al., ICML 2016): 5-map conv, x.pow(2), dense, "
        "torch.square, dense",
        CryptoNets,
        _IMG,
        "digits",
        True,
    ),
    Entry(
        "lola",
        "LoLa (Brutzkus et al., ICML 2019) MNIST net: stride-2 conv, BatchNorm2d, x ** 2, "
        "linear, BatchNorm1d, x ** 2, linear",
        LoLaNet,
        _IMG,
        "digits",
        True,
    ),
    Entry(
        "quadratic-activation-cnn",
        "HE-friendly CNN with a learnable quadratic activation a*x*x + b*x + c (Delphi-style "
        "polynomial replacement of ReLU), nn.AvgPool2d",
        quadratic_activation_cnn,
        _IMG,
        "digits",
        True,
    ),
    Entry(
        "cnn-avgpool-spellings",
        "PyTorch 60-minute blitz CNN rewritten with nn.AvgPool2d(2) and "
        "F.avg_pool2d(x, kernel_size=2), torch.flatten(x, start_dim=1)",
        AvgPoolSpellings,
        _IMG,
        "digits",
        True,
    ),
    Entry(
        "cnn-adaptive-avgpool-int",
        "torchvision-style features/classifier with nn.SiLU and nn.AdaptiveAvgPool2d(2)",
        adaptive_avgpool_int,
        _IMG,
        "digits",
        True,
    ),
    Entry(
        "cnn-adaptive-avgpool-tuple",
        "torchvision AlexNet/VGG features-avgpool-classifier layout, BatchNorm2d, nn.GELU, "
        "nn.AdaptiveAvgPool2d((2, 2)), x.view(x.size(0), -1)",
        AdaptiveAvgPoolTuple,
        _IMG,
        "digits",
        True,
    ),
    Entry(
        "cnn-maxpool-spellings",
        "PyTorch 60-minute blitz Net (nn.MaxPool2d(kernel_size=2, stride=2), "
        "F.max_pool2d(x, (2, 2)), x.view(-1, 16 * 2 * 2))",
        MaxPoolSpellings,
        _IMG,
        "digits",
        False,
    ),
    Entry(
        "cnn-affine-constants",
        "affine spellings: x / 2.0, x + 1.0, per-channel self.gamma * x, scalar nn.Parameter "
        "scale, F.avg_pool2d, x.flatten(1)",
        AffineConstantsCNN,
        _IMG,
        "digits",
        True,
    ),
    Entry(
        "mlp-residual-add",
        "residual MLP with torch.add(x, f(x)) and x + f(x)",
        ResidualMLP,
        _FLAT,
        "digits-flat",
        True,
    ),
    Entry(
        "seq-conv1d-squeeze",
        "rows-as-sequence Conv1d after x.transpose(1, 2), torch.tanh, nn.AdaptiveAvgPool1d(1), "
        ".squeeze(-1)",
        SeqConv1dSqueeze,
        _SEQ,
        "digits-seq",
        True,
    ),
    Entry(
        "seq-unsqueeze-cnn",
        "sequence input given a channel axis with x.unsqueeze(1), conv, BatchNorm2d, F.elu, "
        "x.reshape(x.shape[0], -1)",
        SeqUnsqueezeCNN,
        _SEQ,
        "digits-seq",
        True,
    ),
    Entry(
        "mlp-sequential-flatten",
        "PyTorch quickstart tutorial NeuralNetwork (nn.Flatten, nn.Sequential Linear/ReLU)",
        mlp_sequential_flatten,
        _IMG,
        "digits",
        True,
    ),
    Entry(
        "mlp-view-frelu",
        "classic MNIST MLP forward: x.view(x.size(0), -1), F.relu, tensor method .relu()",
        MLPViewFRelu,
        _IMG,
        "digits",
        True,
    ),
    Entry(
        "mlp-reshape-torchrelu",
        "x.reshape(x.shape[0], -1) flatten with torch.relu",
        MLPReshapeTorchRelu,
        _IMG,
        "digits",
        True,
    ),
    Entry(
        "mlp-gelu-silu",
        "nn.Sequential MLP with nn.GELU and nn.SiLU",
        mlp_gelu_silu,
        _FLAT,
        "digits-flat",
        True,
    ),
    Entry(
        "mlp-swish-handwritten",
        "hand-written swish x * torch.sigmoid(x) (Ramachandran et al. 2017) and x / 2.0",
        MLPSwish,
        _FLAT,
        "digits-flat",
        True,
    ),
    Entry(
        "mlp-leakyrelu-relu6",
        "nn.Sequential MLP with nn.LeakyReLU(0.1) and nn.ReLU6",
        mlp_leakyrelu_relu6,
        _FLAT,
        "digits-flat",
        True,
    ),
    Entry(
        "mlp-hardswish-elu",
        "MLP with activation modules as attributes (nn.Hardswish, nn.ELU), x.flatten(1)",
        MLPHardswishELU,
        _IMG,
        "digits",
        True,
    ),
    Entry(
        "mlp-softplus-tanh-sigmoid",
        "MLP with nn.Softplus, torch.tanh and nn.Sigmoid hidden activations",
        MLPSoftplusTanhSigmoid,
        _FLAT,
        "digits-flat",
        True,
    ),
    Entry(
        "mlp-batchnorm",
        "nn.Sequential Linear-BatchNorm1d-ReLU MLP",
        mlp_batchnorm,
        _FLAT,
        "digits-flat",
        True,
    ),
    Entry(
        "mlp-softmax-head",
        "nn.Sequential MLP ending in nn.Softmax(dim=1) (probability output)",
        mlp_softmax_head,
        _FLAT,
        "digits-flat",
        True,
    ),
    Entry(
        "mlp-argmax-head",
        "predictor returning logits.argmax(dim=1) class indices (output shape (batch,))",
        MLPArgmax,
        _FLAT,
        "digits-flat",
        True,
    ),
    Entry(
        "mlp-one-vs-all-sigmoid",
        "one-vs-all multi-label head: torch.tanh hidden, torch.sigmoid per-class scores",
        OneVsAll,
        _FLAT,
        "digits-flat",
        True,
    ),
    Entry(
        "audio-cnn-1d",
        "torchaudio/ESC-style 1-d CNN (nn.Conv1d, nn.BatchNorm1d, nn.ReLU, nn.MaxPool1d(2), "
        "nn.AvgPool1d, nn.AdaptiveAvgPool1d(1), nn.Flatten)",
        audio_cnn_1d,
        _AUDIO,
        "audio",
        False,
    ),
    Entry(
        "audio-m5",
        "torchaudio speech command tutorial M5 (strided Conv1d, MaxPool1d, "
        "F.avg_pool1d(x, x.shape[-1]), permute(0, 2, 1), log_softmax)",
        M5,
        _AUDIO,
        "audio",
        False,
    ),
    Entry(
        "audio-poly-cnn-1d",
        "HE-friendly 1-d CNN: Conv1d, x * x and x.square() activations, nn.AvgPool1d, linear",
        AudioPolyCNN,
        _AUDIO,
        "audio",
        True,
    ),
    Entry(
        "vit-tiny",
        "timm VisionTransformer (conv PatchEmbed, cls_token.expand(B, -1, -1), pos_embed, "
        "hand-written qkv Attention, GELU Mlp, head on x[:, 0]), d=32, 2 heads",
        VisionTransformer,
        _IMG,
        "digits",
        False,
    ),
    Entry(
        "vit-unfold-tiny",
        "lucidrains/vit-pytorch-style ViT with patches cut by reshape/permute and a linear "
        "patch embedding, d=16, 2 heads",
        ViTUnfold,
        _IMG,
        "digits",
        False,
    ),
    Entry(
        "transformer-mha-rows",
        "pre-norm transformer encoder with nn.MultiheadAttention(d, heads, batch_first=True), "
        "attn(h, h, h, need_weights=False)[0], x.mean(dim=1)",
        RowTransformer,
        _SEQ,
        "digits-seq",
        False,
    ),
    Entry(
        "mlp-mixer-tiny",
        "MLP-Mixer (Tolstikhin et al. 2021; lucidrains/mlp-mixer-pytorch): LayerNorm, token "
        "mixing on transpose(1, 2), channel mixing, mean pool",
        MLPMixer,
        _IMG,
        "digits",
        False,
    ),
    Entry(
        "text-embedding-mean",
        "PyTorch text classification tutorial / fastText (nn.Embedding, mean over sequence, "
        "linear head)",
        TextMeanClassifier,
        _TOK,
        "tokens",
        False,
    ),
    Entry(
        "text-cnn",
        "Kim (2014) CNN for sentence classification (bentrevett/pytorch-sentiment-analysis): "
        "embedding, transpose(1, 2), Conv1d, max over time, torch.cat",
        TextCNN,
        _TOK,
        "tokens",
        False,
    ),
    Entry(
        "text-self-attention",
        "embedding plus positions, single-head attention with torch.matmul, math.sqrt scaling "
        "and F.softmax, mean pooling",
        TextSelfAttention,
        _TOK,
        "tokens",
        False,
    ),
]
