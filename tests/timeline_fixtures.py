"""A checkpoint that classifies the synthetic set, and long videos made of its clips.

The checkpoint: the baseline (tiny_cnn backbone + linear head) with the packaged backbone weights
(``artlib/models/weights/tiny_cnn_synthetic.pt``, trained on the synthetic set of generation seed
1) and a linear head fitted here on the backbone's features of freshly rendered clips (a few
seconds on 2 CPU cores), written by ``training_state`` as the trainer writes it.

The long video: clips of 32 frames at 16 fps (2 s, the synthetic set's length), each with its
action in the middle half (frames 8-23; ``render_clip`` seeds are picked for that), concatenated
in a known class order into one H.264 file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ckpt_fixtures import tiny_config

FPS, CLIP_FRAMES, SIZE, T = 16, 32, 64, 8
NUM_CLASSES = 8


def synthetic_checkpoint(path) -> Path:
    """Write the linear-probe baseline checkpoint to ``path`` (see the module docstring)."""
    from artlib._io import atomic_save_torch
    from artlib.api import eval_dataset
    from artlib.data.synthetic import CLASS_NAMES, render_clip
    from artlib.engine.checkpoint import backbone_normalization, describe_model, training_state
    from artlib.engine.trainer import build_model, build_optimizer

    names = CLASS_NAMES[:NUM_CLASSES]
    cfg = tiny_config(**{
        "model.baseline": True, "model.pretrained": "synthetic", "data.num_frames": T,
        "data.crop_size": SIZE, "synthetic.classes": NUM_CLASSES, "model.dropout": 0.0,
    })  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg, names).eval()
    info = {"num_frames": T, "crop_size": SIZE, "num_clips": 1}
    pre, _ = describe_model(cfg, names, backbone_normalization(model))
    info.update(mean=pre["mean"], std=pre["std"])
    ds = eval_dataset([], info)
    idx = np.arange(T) * (CLIP_FRAMES // T) + CLIP_FRAMES // T // 2  # TSN centres of 32 frames
    feats, labels = [], []
    with torch.no_grad():
        for label in range(NUM_CLASSES):
            clips = []
            for i in range(24):
                rng = np.random.default_rng([7, label, i])
                frames, _ = render_clip(label, rng, CLIP_FRAMES, (SIZE, SIZE))
                clips.append(ds.transform(torch.from_numpy(frames[idx]), (0, 0, SIZE, SIZE, False)))
            _, cls = model.backbone(torch.stack(clips))
            feats.append(cls)
            labels += [label] * len(clips)
    x, y = torch.cat(feats), torch.tensor(labels)
    fc = model.fc
    opt = torch.optim.LBFGS(fc.parameters(), lr=0.5, max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(fc(x), y) + 1e-3 * fc.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    optim, sched = build_optimizer(cfg, model)
    state = training_state(cfg=cfg, class_names=names, model=model, ema=None, optimizer=optim,
                           scheduler=sched, epoch=1, best_top1=0.0)  # fmt: skip
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_save_torch(state, path)
    return Path(path)


def centred_clip(label: int, seed: int) -> np.ndarray:
    """(32, 64, 64, 3) uint8 frames of class ``label`` whose action fills frames 8-23."""
    from artlib.data.synthetic import render_clip

    for j in range(1000):
        frames, start = render_clip(label, np.random.default_rng([seed, label, j]), CLIP_FRAMES,
                                    (SIZE, SIZE))  # fmt: skip
        if start == CLIP_FRAMES // 4:
            return frames
    raise AssertionError("no centred clip found")


def long_video(path, labels, seed: int = 11, crf: int = 18) -> Path:
    """Clips of ``labels`` (2 s each) concatenated into one H.264 file at 16 fps."""
    from artlib.data._write import write_video

    frames = np.concatenate([centred_clip(c, seed + i) for i, c in enumerate(labels)])
    write_video(str(path), frames, fps=FPS, crf=crf)
    return Path(path)
