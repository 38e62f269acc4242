#!/usr/bin/env python3
"""Writes the TorchScript test fixtures into OUTDIR, scripted by PyTorch itself.

resnet18.pt, mobilenet_v2.pt  torchvision models with 10 classes (random init, seeded)
fashion_cnn.pt                the main job's CNN for Fashion-MNIST (scripts/demo.sh): 3.3 MB of
                              FP32 weights, most in fc1, so that weights and not the program
                              dominate the file (untrained: demo.sh trains it)
small_cnn.pt                  a CNN for 1x28x28 input without BatchNorm; its layers are
                              registered in reverse order, so only the forward graph tells
                              which layer comes first
one_layer.pt                  a single Linear: first == last
no_quantizable.pt             parameters of rank 1 only
eager_pickle.pt               torch.save() of a state_dict: not TorchScript
nonfinite_cnn.pt              small_cnn with an Inf weight in conv2
tuple_output.pt               for tensors.pt, returns (scores, features)
three_d_output.pt             for tensors.pt, returns scores of shape [batch, 1, 10]
vit_small.pt, convnext_small.pt  torchvision's VisionTransformer and ConvNeXt, small configurations
                              (class token, position embedding and layer scales are not layer weights)
lstm_tagger.pt                an embedding, an LSTM (weights read as a list) and a linear layer
text_classifier.pt            nn.TransformerEncoder over token ids with a padding mask: forward(ids, mask)
decoder_classifier.pt         the same task through nn.TransformerDecoder (self- and cross-attention,
                              causal mask): forward(ids, mask)
swin_small.pt                 torchvision's SwinTransformer, a small configuration for 3x32x32 input
text_tokens.pt                {'x': [ids, mask], 'y', 'x_test': [..], 'y_test'} for text_classifier.pt
tagger_tokens.pt              {'x', 'x_test'}: unlabeled token ids for lstm_tagger.pt
regression_mlp.pt             a 16 -> 1 MLP without normalization; regression_unlabeled.pt: {'x'} only
bn_cnn.pt, depthwise_cnn.pt, tiny_vit.pt, row_lstm.pt  the recipe zoo (tests/cli/test_zoo.py), for
                              Fashion-MNIST: BatchNorm after every convolution; MobileNet-style
                              depthwise-separable blocks; a ViT with a class token and pre-norm
                              LayerNorm encoder layers; an LSTM over the image's rows (untrained)
dict_output.pt                for tensors.pt, returns {'logits': [batch, 10], 'embedding': [batch, 16]}
tensors.pt                    torch.save({'x', 'y', 'x_test', 'y_test'}): a 20-feature, 10-class
                              task (labels from a fixed random linear map) for one_layer.pt
tensors_bad_labels.pt         the same with a label (15) beyond one_layer.pt's 10 outputs
random.bin                    random bytes
Usage: make_fixtures.py OUTDIR
"""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        # Registered last-to-first on purpose (see the docstring).
        self.fc2 = nn.Linear(32, 10)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.conv2 = nn.Conv2d(8, 16, 5)
        self.conv1 = nn.Conv2d(1, 8, 5)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


class FashionCNN(SmallCNN):
    """SmallCNN's forward with wider layers, 3x3 padded convolutions, registered in order."""

    def __init__(self):
        nn.Module.__init__(self)
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 256)
        self.fc2 = nn.Linear(256, 10)


class NoQuantizable(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(10))
        self.norm = nn.BatchNorm1d(10)

    def forward(self, x):
        return self.norm(x * self.scale)


class TupleOutput(nn.Module):
    """A model for tensors.pt whose forward returns (scores, features): not a plain classifier."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(20, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(h), h


class ThreeDimOutput(TupleOutput):
    """Scores of shape [batch, 1, 10]."""

    def forward(self, x):
        return self.fc2(self.fc1(x)).unsqueeze(1)


class LstmTagger(nn.Module):
    """Token ids in, a tag per token out: an embedding, an LSTM and a linear layer."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 16)
        self.lstm = nn.LSTM(16, 32, batch_first=True)
        self.out = nn.Linear(32, 5)

    def forward(self, x):
        h, _ = self.lstm(self.emb(x))
        return self.out(h)


class TextClassifier(nn.Module):
    """Token ids and a mask (True: a real token) in, 4 class scores out: an embedding with a learned
    position embedding (not a layer weight), two Transformer encoder layers, masked mean pooling."""

    def __init__(self, vocab=200, length=16, dim=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 4)

    def forward(self, ids, mask):
        h = self.encoder(self.emb(ids) + self.pos[:, : ids.size(1)], src_key_padding_mask=~mask)
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1).clamp(min=1.0))


class DecoderClassifier(TextClassifier):
    """TextClassifier's task through two nn.TransformerDecoder layers attending causally to the
    tokens and to the embedded sequence as memory (both attention modules of a decoder layer)."""

    def __init__(self, vocab=200, length=16, dim=32):
        nn.Module.__init__(self)
        self.emb = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, length, dim) * 0.02)
        layer = nn.TransformerDecoderLayer(dim, 4, 64, dropout=0.0, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, 2)
        self.head = nn.Linear(dim, 4)

    def forward(self, ids, mask):
        x = self.emb(ids) + self.pos[:, : ids.size(1)]
        causal = torch.triu(torch.full((ids.size(1), ids.size(1)), float("-inf")), diagonal=1)
        h = self.decoder(x, x, tgt_mask=causal, tgt_key_padding_mask=~mask, memory_key_padding_mask=~mask)
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1).clamp(min=1.0))


class RegressionMlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 64)
        self.fc2 = nn.Linear(64, 64)
        self.fc3 = nn.Linear(64, 1)

    def forward(self, x):
        return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


class DictOutput(TupleOutput):
    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return {"logits": self.fc2(h), "embedding": h}


def token_batch(n, vocab=200, length=16):
    """Token ids (0 pads) and masks of random lengths 4..length; the label is which quarter of the
    vocabulary holds most of a sequence's tokens."""
    lengths = torch.randint(4, length + 1, (n,))
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    ids = torch.randint(1, vocab, (n, length)) * mask
    quarter = torch.div(ids - 1, (vocab - 1) // 4 + 1, rounding_mode="floor").clamp(0, 3)
    counts = torch.stack([((quarter == q) & mask).sum(1) for q in range(4)], 1)
    return ids, mask, counts.argmax(1)


class BnCnn(nn.Module):
    """Two convolutions with BatchNorm after each, for 1x28x28 input."""
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.conv3, self.bn3 = nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, 10)
    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DepthwiseCnn(nn.Module):
    """MobileNet-style separable blocks (depthwise 3x3, pointwise 1x1, BatchNorm after each)."""
    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(1, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32)
        layers = []
        for cin, cout, stride in ((32, 64, 1), (64, 128, 2), (128, 128, 1)):
            layers += [nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                       nn.ReLU(), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(128, 10)
    def forward(self, x):
        x = self.blocks(F.relu(self.bn0(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class TinyVit(nn.Module):
    """7x7 patches, a class token, a position embedding, two pre-norm LayerNorm encoder layers."""
    def __init__(self, dim=64):
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 7, stride=7)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)
    def forward(self, x):
        x = torch.flatten(self.patch(x), 2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.size(0), -1, -1), x], 1) + self.pos
        return self.head(self.norm(self.encoder(x))[:, 0])


class RowLstm(nn.Module):
    """The image's 28 rows as a sequence through an LSTM; the last hidden state classifies."""
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(28, 96, batch_first=True)
        self.fc = nn.Linear(96, 10)
    def forward(self, x):
        out, _ = self.lstm(x.squeeze(1))
        return self.fc(out[:, -1])


def save_scripted(model, path):
    model.eval()
    torch.jit.save(torch.jit.script(model), path)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    save_scripted(torchvision.models.resnet18(num_classes=10), os.path.join(out, "resnet18.pt"))
    save_scripted(torchvision.models.mobilenet_v2(num_classes=10), os.path.join(out, "mobilenet_v2.pt"))
    cnn = SmallCNN()
    save_scripted(cnn, os.path.join(out, "small_cnn.pt"))
    save_scripted(nn.Linear(20, 10), os.path.join(out, "one_layer.pt"))
    save_scripted(NoQuantizable(), os.path.join(out, "no_quantizable.pt"))
    torch.save(cnn.state_dict(), os.path.join(out, "eager_pickle.pt"))
    teacher = torch.randn(20, 10)
    x, x_test = torch.randn(2000, 20), torch.randn(500, 20)
    tensors = {"x": x, "y": (x @ teacher).argmax(1), "x_test": x_test, "y_test": (x_test @ teacher).argmax(1)}
    torch.save(tensors, os.path.join(out, "tensors.pt"))
    bad = dict(tensors, y=tensors["y"].clone())
    bad["y"][7] = 15
    torch.save(bad, os.path.join(out, "tensors_bad_labels.pt"))
    with open(os.path.join(out, "random.bin"), "wb") as f:
        f.write(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    # Last: the fixtures above keep their weights.
    save_scripted(FashionCNN(), os.path.join(out, "fashion_cnn.pt"))
    broken = SmallCNN()
    with torch.no_grad():
        broken.conv2.weight[0, 0, 0, 0] = float("inf")
    save_scripted(broken, os.path.join(out, "nonfinite_cnn.pt"))
    save_scripted(TupleOutput(), os.path.join(out, "tuple_output.pt"))
    save_scripted(ThreeDimOutput(), os.path.join(out, "three_d_output.pt"))
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                            num_classes=10)
    with torch.no_grad():  # torchvision starts the head at zero: outputs would not depend on the rest
        vit.heads.head.weight.normal_(0, 0.2)
    save_scripted(vit, os.path.join(out, "vit_small.pt"))
    save_scripted(ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10),
                  os.path.join(out, "convnext_small.pt"))
    save_scripted(LstmTagger(), os.path.join(out, "lstm_tagger.pt"))
    save_scripted(TextClassifier(), os.path.join(out, "text_classifier.pt"))
    save_scripted(DecoderClassifier(), os.path.join(out, "decoder_classifier.pt"))
    save_scripted(SwinTransformer([4, 4], 16, [2, 2], [2, 4], [4, 4], num_classes=10),
                  os.path.join(out, "swin_small.pt"))
    ids, mask, y = token_batch(1024)
    ids_test, mask_test, y_test = token_batch(256)
    torch.save({"x": [ids, mask], "y": y, "x_test": [ids_test, mask_test], "y_test": y_test},
               os.path.join(out, "text_tokens.pt"))
    torch.save({"x": torch.randint(0, 100, (256, 12)), "x_test": torch.randint(0, 100, (64, 12))},
               os.path.join(out, "tagger_tokens.pt"))
    save_scripted(RegressionMlp(), os.path.join(out, "regression_mlp.pt"))
    torch.save({"x": torch.randn(512, 16), "x_test": torch.randn(128, 16)}, os.path.join(out, "regression_unlabeled.pt"))
    save_scripted(DictOutput(), os.path.join(out, "dict_output.pt"))
    for name, family in (("bn_cnn", BnCnn), ("depthwise_cnn", DepthwiseCnn), ("tiny_vit", TinyVit),
                         ("row_lstm", RowLstm)):
        save_scripted(family(), os.path.join(out, name + ".pt"))
    print(f"fixtures written to {out}")


if __name__ == "__main__":
    main()
