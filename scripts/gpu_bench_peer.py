"""Peer for scripts/gpu_bench.sh: timm's tiny_vit_5m_224 trained the reference way in PyTorch
(AdamW, fp16 autocast + GradScaler, clipping 5.0, label smoothing 0.1, batch 256), on data
that is (1) already on the GPU, (2) copied from pageable host memory each step, as tinyvit's
loader hands it over. Prints images/s for both."""
import sys
import time

import timm
import torch

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 40
torch.backends.cudnn.benchmark = True
m = timm.create_model("tiny_vit_5m_224", num_classes=1000).cuda().train()
opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.05, betas=(0.9, 0.999), eps=1e-8)
scaler = torch.amp.GradScaler()
crit = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
x_gpu = torch.randn(256, 3, 224, 224, device="cuda")
x_cpu = torch.randn(256, 3, 224, 224)
y = torch.randint(0, 1000, (256,), device="cuda")


def step(x):
    with torch.autocast("cuda", dtype=torch.float16):
        loss = crit(m(x), y)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(m.parameters(), 5.0)
    scaler.step(opt)
    scaler.update()


for name, get in [("data on GPU", lambda: x_gpu), ("pageable host copy", lambda: x_cpu.cuda())]:
    for _ in range(8):
        step(get())
    torch.cuda.synchronize()
    t = time.time()
    for _ in range(steps):
        step(get())
    torch.cuda.synchronize()
    print(f"  timm peer ({name}) {steps * 256 / (time.time() - t):8.0f} images/s")
