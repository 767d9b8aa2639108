"""Render the figures shown in the docs from the shipped pretrained CS model (offline, seconds).

Writes docs/figures/: the demo comparison with zoom boxes, stage-wise PSNR curves of LoRun-9 vs the
phase-1 backbone (Block-9-share) at 25 %, and the per-stage LoRA weights of one layer (paper Fig. 12).
"""

from __future__ import annotations

from pathlib import Path

import torch

from lorun_peft.data import load_sample_image
from lorun_peft.figures import stage_lora_layers, stage_lora_weights_figure, stage_psnr, stagewise_psnr_figure
from lorun_peft.pretrained import load_pretrained

OUT = Path(__file__).resolve().parents[1] / "docs" / "figures"


def main() -> None:
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    model = load_pretrained("cs", adapter_set="ratio-25")
    image = load_sample_image("camera")[None, :, 128:384, 128:384]
    curves = {}
    for name in ("ratio-10", "ratio-25", "ratio-50"):
        model.set_adapter_set(name)
        curves[f"LoRun-9 {name}"] = stage_psnr(model, model.physics.measure(image), image)
    model.set_adapter_set("ratio-25")
    with model.disable_adapters():
        curves["Block-9-share (25 %)"] = stage_psnr(model, model.physics.measure(image), image)
    print(stagewise_psnr_figure(curves, OUT / "stagewise_psnr_cs.png", title="camera, stage-wise PSNR"))
    layers = stage_lora_layers(model)
    print(stage_lora_weights_figure(model, layers[2], OUT / "stage_lora_weights_cs.png", set_name="ratio-25"))


if __name__ == "__main__":
    main()
