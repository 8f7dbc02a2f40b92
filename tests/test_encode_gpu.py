"""On a CUDA machine: autocast extraction agrees with the fp32 CPU features (skipped elsewhere)."""

import numpy as np
import pytest
import torch

from tipretrieval.encode import load_encoder, scan_source
from tipretrieval.encode.extract import ExtractOptions, extract
from tipretrieval.store.store import Store

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_cuda_autocast_extract_matches_cpu(tiny_clip_config, tiny_checkpoint, image_folder,
                                           tmp_path):
    folder = image_folder(tmp_path / "imgs")
    feats = {}
    for device in ("cpu", "cuda"):
        enc = load_encoder(str(tiny_clip_config), checkpoint=tiny_checkpoint, device=device)
        assert (enc.amp_dtype is None) == (device == "cpu")
        opts = ExtractOptions(views=2, workers=2, batch_size=8, progress=False)
        extract(scan_source(folder), tmp_path / device, enc, opts)
        rows = Store.open(tmp_path / device).select(with_views=True)
        feats[device] = rows.take(np.argsort(rows.ids.astype(str)))
    cpu, gpu = feats["cpu"], feats["cuda"]
    assert list(cpu.ids) == list(gpu.ids)
    assert np.abs(cpu.views - gpu.views).max() < 3e-2  # bf16/fp16 autocast vs fp32
    cos = (cpu.features * gpu.features).sum(axis=1)
    assert cos.min() > 0.999
