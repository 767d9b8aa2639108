"""StageLoRA on the project's denoisers (U-Net, Transformer, ResUNet) at tiny sizes."""

from __future__ import annotations

import copy

import pytest
import torch

from lorun_peft.tuners import (
    MERGE_MODES,
    StageLoRAConfig,
    add_stage_adapters,
    load_adapter_set,
    save_adapter_set,
    set_merge_mode,
    stage,
)
from lorun_peft.tuners.layers import StageLoRALayer

denoisers = pytest.importorskip("lorun_peft.denoisers", reason="lorun_peft.denoisers not available")

K = 3
CASES = {
    "unet": lambda: denoisers.UNetDenoiser(
        denoisers.UNetConfig(base_channels=4, depth=2, downsample="strided", upsample="transpose")
    ),
    "transformer": lambda: denoisers.TransformerDenoiser(
        denoisers.TransformerConfig(hidden_channels=8, num_blocks=1, num_heads=2)
    ),
    "resunet": lambda: denoisers.ResUNetDenoiser(denoisers.ResUNetConfig(channels=[4, 8], num_res_blocks=1)),
}


@pytest.mark.parametrize("family", list(CASES))
def test_stage_lora_on_denoiser(family, tmp_path):
    torch.manual_seed(0)
    clean = CASES[family]().eval()
    channels = clean.config.in_channels
    x = torch.randn(1, channels, 8, 8)
    model = copy.deepcopy(clean)
    add_stage_adapters(model, "s", StageLoRAConfig(num_stages=K, gamma=10))
    assert any(isinstance(m, StageLoRALayer) for m in model.modules())
    for mode in MERGE_MODES:
        set_merge_mode(model, mode)
        with torch.no_grad(), stage(model, K - 1):
            # dW = 0 at init, but the adapted copy may get other oneDNN kernels: equal up to rounding.
            torch.testing.assert_close(model(x), clean(x), rtol=1e-5, atol=1e-5)
    set_merge_mode(model, "in_forward")

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(2):
        h = x
        for k in range(K):
            with stage(model, k):
                h = model(h)
        opt.zero_grad()
        h.pow(2).mean().backward()
        assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
        opt.step()
    trained_b = [
        m.lora_B[a].weight for m in model.modules() if isinstance(m, StageLoRALayer) for a in m.lora_B
    ]
    assert all(w.abs().sum() > 0 for w in trained_b)

    path = save_adapter_set(model, tmp_path, "s", task_state={"rho": torch.ones(K)})
    fresh = copy.deepcopy(clean)
    load_adapter_set(fresh, path)
    with torch.no_grad():
        for k in range(K):
            with stage(model, k):
                ours = model(x)
            with stage(fresh, k):
                # Another instance may get other oneDNN kernels: same weights, outputs equal to rounding.
                torch.testing.assert_close(fresh(x), ours, rtol=1e-5, atol=1e-5)
