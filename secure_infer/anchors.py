"""Anchors: what a user does without secure-infer, measured in the same run.

* :class:`TutorialPipeline` is how a TenSEAL user evaluates a CryptoNets-style
  network by hand (the method of TenSEAL's encrypted-evaluation tutorial):
  im2col encoding of the image by the client with the conv's kernel geometry,
  one ``conv2d_im2col`` per output channel, ``pack_vectors``, ``square``,
  ``mm`` for the fully connected layers, and a context with every
  power-of-two Galois key. Written here against TenSEAL's public API.
* :class:`TutorialConvNet` is the same network as the tutorial's ``forward``
  spells it (``x * x``, ``x.view``): what a user hands to ``wrap``.
* Raw CrypTen is :func:`secure_infer.backends.crypten.native_crypten`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn


class TutorialConvNet(nn.Module):
    """A CryptoNets-style ``nn.Sequential``'s weights in the tutorial's spelling: ``x * x`` and ``x.view``.

    The front end must compile it to the same program as the ``Square`` layers
    of the sequential form; the benchmark and the tests hold it to that.
    """

    def __init__(self, sequential: nn.Sequential) -> None:
        super().__init__()
        self.conv1, self.fc1, self.fc2 = sequential[0], sequential[3], sequential[5]
        self.features = cast(nn.Linear, self.fc1).in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = x * x
        x = x.view(-1, self.features)
        x = self.fc1(x)
        x = x * x
        return self.fc2(x)


@dataclass
class TutorialPipeline:
    context: Any  # a tenseal.Context; TenSEAL ships no type information
    conv: nn.Conv2d
    fc1: nn.Linear
    fc2: nn.Linear

    @classmethod
    def supports(cls, model: nn.Module, input_shape: tuple[int, ...]) -> bool:
        """The tutorial method covers conv(1 channel in) -> x^2 -> fc -> x^2 -> fc, square kernels."""
        from secure_infer.zoo import Square

        if (not isinstance(model, nn.Sequential)
                or [type(m) for m in model.children()] != [nn.Conv2d, Square, nn.Flatten, nn.Linear, Square, nn.Linear]):
            return False
        conv = model[0]
        return (isinstance(conv, nn.Conv2d) and input_shape[0] == 1 and conv.padding == (0, 0)
                and conv.kernel_size[0] == conv.kernel_size[1])

    @classmethod
    def build(cls, model: nn.Sequential) -> TutorialPipeline:
        import tenseal as ts

        context = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192,
                             coeff_mod_bit_sizes=[31, 26, 26, 26, 26, 26, 26, 31])
        context.global_scale = 2**26
        context.generate_galois_keys()
        # the layout supports() accepts: conv, square, flatten, fc1, square, fc2
        conv, fc1, fc2 = cast(nn.Conv2d, model[0]), cast(nn.Linear, model[3]), cast(nn.Linear, model[5])
        return cls(context, conv, fc1, fc2)

    def public_context_bytes(self) -> int:
        public = self.context.copy()
        public.make_context_public()
        return len(public.serialize(save_galois_keys=True, save_relin_keys=True, save_public_key=True))

    def infer(self, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """One 1xHxW image: client encodes and encrypts, server evaluates, client decrypts."""
        import tenseal as ts

        kernel = self.conv.kernel_size[0]
        stride = self.conv.stride[0]
        side = image.shape[-1]
        t0 = time.perf_counter()
        enc_x, windows = ts.im2col_encoding(self.context, image.reshape(side, side).tolist(), kernel, kernel, stride)
        t1 = time.perf_counter()
        channels = []
        weights = self.conv.weight.detach()
        assert self.conv.bias is not None  # the tutorial's conv has a bias
        for weight, bias in zip(weights, self.conv.bias.detach(), strict=True):
            channels.append(enc_x.conv2d_im2col(weight.reshape(kernel, kernel).tolist(), windows) + float(bias))
        enc = ts.CKKSVector.pack_vectors(channels)
        enc.square_()
        t_fc = time.perf_counter()
        enc = enc.mm(self.fc1.weight.detach().T.tolist()) + self.fc1.bias.detach().tolist()
        t_fc1 = time.perf_counter() - t_fc
        enc.square_()
        enc = enc.mm(self.fc2.weight.detach().T.tolist()) + self.fc2.bias.detach().tolist()
        t2 = time.perf_counter()
        out = torch.tensor(enc.decrypt())[: self.fc2.out_features]
        t3 = time.perf_counter()
        return out, {"encrypt_s": t1 - t0, "compute_s": t2 - t1, "fc1_s": t_fc1, "decrypt_s": t3 - t2,
                     "input_ciphertext_bytes": len(enc_x.serialize())}


class TutorialProgram:
    """The tutorial pipeline with the call shape of a secure-infer program (batch of images)."""

    def __init__(self, model: nn.Sequential) -> None:
        self.pipeline = TutorialPipeline.build(model)
        self.key_bytes = self.pipeline.public_context_bytes()
        self.last_phases: dict[str, float] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for image in x:
            out, self.last_phases = self.pipeline.infer(image)
            outs.append(out)
        return torch.stack(outs).float()

    def close(self) -> None:
        return None
