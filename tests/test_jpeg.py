"""data.decoder=simplejpeg (data/jpeg.py): the same pixels as PIL, so the same samples; PIL for what it refuses."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from emae.config import load_config
from emae.data import jpeg
from emae.data.crop import CropSampler
from emae.errors import ConfigError

from helpers import tiny_config
from test_crop import smooth_jpeg

pytest.importorskip("simplejpeg", reason="the simplejpeg extra (in .[dev])")


def encoded(img: Image.Image, **save) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", **save)
    return out.getvalue()


def photo(seed: int, width: int, height: int) -> Image.Image:
    return Image.open(io.BytesIO(smooth_jpeg(seed, width, height, quality=95))).convert("RGB")


VARIANTS = {  # every JPEG kind the decoder takes: chroma subsampling, progressive, grey, odd sizes, low quality
    "420": lambda: encoded(photo(0, 257, 191), quality=90),
    "422": lambda: encoded(photo(1, 200, 150), quality=85, subsampling=1),
    "444": lambda: encoded(photo(2, 203, 117), quality=95, subsampling=0),
    "progressive": lambda: encoded(photo(3, 240, 180), quality=80, progressive=True),
    "grey": lambda: encoded(photo(4, 181, 99).convert("L"), quality=90),
    "q20": lambda: encoded(photo(5, 128, 96), quality=20),
}


@pytest.mark.parametrize("kind", VARIANTS)
@pytest.mark.parametrize("factor", [1, 2, 4, 8])
def test_simplejpeg_pixels_equal_pils_at_every_dct_scale(kind, factor):
    data = VARIANTS[kind]()
    with Image.open(io.BytesIO(data)) as img:
        if factor > 1:
            img.draft(None, (img.width // factor, img.height // factor))
        want = np.asarray(img.convert("RGB"))
    header = jpeg.read_header(data, "RGB")
    got = jpeg.decode_jpeg(data, header, factor)
    assert got.shape == want.shape and np.array_equal(got, want), kind


@pytest.mark.parametrize("resize", ["pil", "torch"])
@pytest.mark.parametrize("draft", [False, True])
def test_samples_equal_the_pil_decoders_from_files_and_bytes(tmp_path, resize, draft):
    kw = {"resize": resize, "draft": draft}
    pil, fast = CropSampler((32, 48), (0.1, 1.0), True, decoder="pil", **kw), \
        CropSampler((32, 48), (0.1, 1.0), True, decoder="simplejpeg", **kw)
    for i, (kind, make) in enumerate(VARIANTS.items()):
        data = make()
        path = tmp_path / f"{kind}.jpg"
        path.write_bytes(data)
        for seed in range(12):
            for read in (lambda s: s.from_file(str(path), "RGB"), lambda s: s.from_bytes(data, "RGB")):
                torch.default_generator.manual_seed(seed)
                a = read(pil)
                torch.default_generator.manual_seed(seed)
                b = read(fast)
                assert torch.equal(a, b), (kind, seed)


def test_grey_mode_and_what_pil_converts_its_own_way():
    """mode L: a grey JPEG decodes directly; a colour one goes to PIL (its luma weights are not libjpeg's)."""
    grey, colour = VARIANTS["grey"](), VARIANTS["420"]()
    assert jpeg.read_header(grey, "L").space == "GRAY"
    assert jpeg.read_header(colour, "L") is None
    cmyk = encoded(Image.new("CMYK", (40, 30), (10, 20, 30, 0)))
    assert jpeg.read_header(cmyk, "RGB") is None and jpeg.read_header(b"\x89PNG....", "RGB") is None
    pil, fast = (CropSampler((16, 16), (0.2, 1.0), True, decoder=d) for d in ("pil", "simplejpeg"))
    for data, mode in ((grey, "L"), (colour, "L"), (cmyk, "RGB")):
        for seed in range(5):
            torch.default_generator.manual_seed(seed)
            a = pil.from_bytes(data, mode)
            torch.default_generator.manual_seed(seed)
            assert torch.equal(a, fast.from_bytes(data, mode)), (mode, seed)


def test_a_file_refused_mid_decode_falls_back_to_pil_with_the_same_crop():
    """A libjpeg warning (here: extraneous bytes before the end marker) makes simplejpeg refuse what PIL decodes;
    the fallback must draw the crop from the generator as it was, not after the refused attempt."""
    data = VARIANTS["420"]()
    end = data.rindex(b"\xff\xd9")
    data = data[:end] + b"\x12\x34\x56" + data[end:]
    header = jpeg.read_header(data, "RGB")
    assert header is not None and jpeg.decode_jpeg(data, header) is None
    Image.open(io.BytesIO(data)).load()  # PIL decodes it (ignoring the warning)
    pil, fast = (CropSampler((24, 24), (0.2, 1.0), True, decoder=d) for d in ("pil", "simplejpeg"))
    for seed in range(8):
        torch.default_generator.manual_seed(seed)
        a = pil.from_bytes(data, "RGB")
        after_pil = torch.rand(1)
        torch.default_generator.manual_seed(seed)
        b = fast.from_bytes(data, "RGB")
        assert torch.equal(a, b) and torch.equal(after_pil, torch.rand(1)), seed


def test_truncated_files_fail_either_way():
    data = VARIANTS["420"]()[:300]
    for decoder in ("pil", "simplejpeg"):
        with pytest.raises(OSError):
            CropSampler((16, 16), (0.2, 1.0), True, decoder=decoder).from_bytes(data, "RGB")


def test_decoder_setting_and_its_checks(tmp_path, monkeypatch):
    assert jpeg.resolve_decoder("auto") == "simplejpeg" and jpeg.resolve_decoder("pil") == "pil"
    with pytest.raises(ConfigError, match="data.decoder: 'turbo'"):
        tiny_config("data.decoder=turbo")
    assert load_config(None, ["data.decoder=pil"]).data.decoder == "pil"
    monkeypatch.setattr(jpeg, "simplejpeg", None)
    assert jpeg.resolve_decoder("auto") == "pil"
    with pytest.raises(ConfigError, match="simplejpeg is not installed"):
        jpeg.resolve_decoder("simplejpeg")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="data.decoder: 'simplejpeg' is not allowed; simplejpeg is not installed"):
        tiny_config("data.decoder=simplejpeg")
