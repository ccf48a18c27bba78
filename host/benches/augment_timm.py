"""Peer of host/benches/augment.rs: timm's training transform on the same JPEG files, one core.

    python augment_timm.py SECONDS FILE...

Prints one JSON line: images per wall second and per CPU second (time.thread_time) with
decode excluded (PIL images decoded once, then
transform(img)) and included (open + convert('RGB') + transform for each image).
The transform is timm.data.create_transform(224, is_training=True,
auto_augment='rand-m9-mstd0.5-inc1', re_prob=0.25, interpolation='bicubic'), ending in a
normalised float tensor, as the Rust side ends in normalised f32 CHW.

With Pillow >= 13, timm's PosterizeIncreasing at magnitude 10 (the clip of N(9, 0.5), about 2%
of its draws) asks ImageOps.posterize for 0 bits, which Pillow now rejects with ValueError;
such a call is retried (a fresh draw) and counted in "retries".
"""
import io
import json
import sys
import time

import torch
from PIL import Image
import timm
from timm.data import create_transform


def main():
    torch.set_num_threads(1)
    seconds = float(sys.argv[1])
    blobs = [open(p, "rb").read() for p in sys.argv[2:]]
    t = create_transform(
        224,
        is_training=True,
        auto_augment="rand-m9-mstd0.5-inc1",
        re_prob=0.25,
        interpolation="bicubic",
    )
    retries = [0]

    def tf(img):
        while True:
            try:
                return t(img)
            except ValueError:
                retries[0] += 1

    decoded = [Image.open(io.BytesIO(b)).convert("RGB") for b in blobs]
    for img in decoded:  # warm-up
        tf(img)

    def rate(fn):
        """(images per wall second, images per CPU second of this thread)"""
        n = 0
        start = time.perf_counter()
        c0 = time.thread_time()
        while True:
            for i in range(len(blobs)):
                fn(i)
                n += 1
            el = time.perf_counter() - start
            if el >= seconds:
                return n / el, n / (time.thread_time() - c0)

    ex, ex_cpu = rate(lambda i: tf(decoded[i]))
    inc, inc_cpu = rate(lambda i: tf(Image.open(io.BytesIO(blobs[i])).convert("RGB")))
    print(json.dumps({
        "timm": timm.__version__,
        "decode_excluded": ex,
        "decode_excluded_cpu": ex_cpu,
        "decode_included": inc,
        "decode_included_cpu": inc_cpu,
        "retries": retries[0],
    }))


if __name__ == "__main__":
    main()
