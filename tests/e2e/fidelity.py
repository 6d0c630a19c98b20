"""The C++ embedding of each clothing-small test JPEG matches the PyTorch reference pipeline
(PIL decode, torchvision Resize(256)/CenterCrop(224)/ToTensor/Normalize, the eager torchvision
MobileNetV2 with the same weights) with cosine similarity >= 0.999 on every image."""
import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision import transforms
from harness import SHARED, images, run, tempdir

torch.set_num_threads(2)
files = images("test")
assert len(files) == 372

model = torchvision.models.mobilenet_v2()
model.load_state_dict(torch.load(SHARED / "models/mobilenet_v2/mobilenet_v2_imagenet_float.pth"),
                      strict=True)
model.classifier = torch.nn.Identity()
model.eval()
tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                         transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
ref = []
with torch.no_grad():
    for start in range(0, len(files), 32):
        batch = torch.stack([tf(Image.open(f).convert("RGB")) for f in files[start:start + 32]])
        ref.append(torch.nn.functional.normalize(model(batch), dim=1).numpy())
ref = np.concatenate(ref)

out = tempdir("fidelity") / "test.npy"
run("embed", *files, "--npy", out, check=0)
ours = np.load(out)
assert ours.shape == ref.shape == (372, 1280), (ours.shape, ref.shape)
assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-4)
cos = (ours * ref).sum(axis=1)
worst = int(cos.argmin())
print(f"cosine(C++, PyTorch reference) over {len(files)} images: min {cos.min():.6f} "
      f"mean {cos.mean():.6f} (worst: {files[worst]})")
assert cos.min() >= 0.999, f"min cosine {cos.min():.6f} < 0.999 for {files[worst]}"
