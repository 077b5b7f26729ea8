"""Models of other libraries: timm (a CNN and a ViT) and open_clip (CLIP, SigLIP), with text queries.

Their hub weights cannot be downloaded here: each library's own random initialisation is saved as a
state_dict and given with --weights, and imgvec's batched path is held to the library's own
single-image pipeline (cosine >= 0.999 for every photo).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from helpers import EXAMPLES, IMGVEC, SPARK, assert_usage_error, imgvec, imgvec_here, without_module

timm = pytest.importorskip("timm")
open_clip = pytest.importorskip("open_clip")

PHOTOS = sorted(EXAMPLES.iterdir())


def saved(folder, name: str, net: torch.nn.Module) -> str:
    path = os.path.join(folder, f"{name}.pt")
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Each library's own random initialisation, seeded, as state_dict files."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    made = {name: timm.create_model(name) for name in ("resnet18", "vit_tiny_patch16_224")}
    made["ViT-S-32"] = open_clip.create_model("ViT-S-32")
    return {name: (net.eval(), saved(folder, name, net)) for name, net in made.items()}


def cosines(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    return np.sum(ours * theirs, axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)


def features_of(output) -> dict:
    table = pq.read_table(output, columns=["path", "features"])
    return {os.path.basename(p): np.asarray(f, np.float32) for p, f in zip(
        table.column("path").to_pylist(), table.column("features").to_pylist(), strict=True)}


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny_patch16_224"])
def test_a_timm_model_through_embed_equals_timms_own_pipeline(weights, tmp_path, name):
    net, path = weights[name]
    output = tmp_path / "vectors"
    result = imgvec("embed", EXAMPLES, "-o", output, "--model", f"timm:{name}", "--weights", path, "-q", *SPARK)
    assert result.returncode == 0, result.stderr
    reference = timm.create_model(name, num_classes=0)
    reference.load_state_dict(net.state_dict(), strict=False)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=reference.eval()))
    with torch.no_grad():
        theirs = np.concatenate([reference(transform(Image.open(p).convert("RGB"))[None]).numpy() for p in PHOTOS])
    found = features_of(output)
    assert cosines(np.stack([found[p.name] for p in PHOTOS]), theirs).min() >= 0.999
    metadata = json.loads((output / "_imgvec.json").read_text())
    assert (metadata["library"], metadata["model_id"], metadata["dim"]) == ("timm", f"timm:{name}",
                                                                           reference.num_features)
    assert metadata["library_version"] == timm.__version__ and len(metadata["weights_sha256"]) == 64


def test_a_clip_model_embeds_images_and_text_queries_as_open_clip_does(weights, tmp_path, capsys):
    net, path = weights["ViT-S-32"]
    output = tmp_path / "vectors"
    result = imgvec("embed", EXAMPLES, "-o", output, "--model", "open_clip:ViT-S-32", "--weights", path, "-q", *SPARK)
    assert result.returncode == 0, result.stderr
    _, _, preprocess = open_clip.create_model_and_transforms("ViT-S-32", pretrained=None)
    with torch.no_grad():
        theirs = np.concatenate([net.encode_image(preprocess(Image.open(p).convert("RGB"))[None]).numpy()
                                 for p in PHOTOS])
        texts = ["a cat", "a red motorcycle in a garage", "a rocket at night"]
        their_text = net.encode_text(open_clip.get_tokenizer("ViT-S-32")(texts)).numpy()
    found = features_of(output)
    ours = np.stack([found[p.name] for p in PHOTOS])
    assert cosines(ours, theirs).min() >= 0.999
    from imgvec import ImageVectorizer

    vectorizer = ImageVectorizer("open_clip:ViT-S-32", weights=path, device="cpu")
    assert cosines(vectorizer.embed_text(texts), their_text).min() >= 0.999
    expected = (their_text / np.linalg.norm(their_text, axis=1, keepdims=True)) @ (
        theirs / np.linalg.norm(theirs, axis=1, keepdims=True)).T
    for exact in (True, False):  # exactly, then through an index
        if not exact:
            assert imgvec_here(capsys, "index", output, "-q").returncode == 0
        args = ["similar", output, *[a for t in texts for a in ("--text", t)], "-k", "3", "--json"]
        answer = json.loads(imgvec_here(capsys, *args, *(["--exact"] if exact else [])).stdout)
        assert answer[0]["search"] == "exact search" if exact else answer[0]["search"].startswith("flat index")
        for row, result in zip(expected, answer, strict=True):
            assert result["text"] and [os.path.basename(m["path"]) for m in result["matches"]] == [
                PHOTOS[i].name for i in np.argsort(-row)[:3]]
            assert abs(result["matches"][0]["similarity"] - row.max()) < 1e-4
    assert_usage_error(imgvec_here(capsys, "similar", output), "or --text")


def test_a_siglip_model_squashes_as_open_clip_does(tmp_path):
    from imgvec import ImageVectorizer

    torch.manual_seed(0)
    tag = open_clip.get_pretrained_cfg("ViT-B-16-SigLIP", "webli")
    net, _, preprocess = open_clip.create_model_and_transforms(
        "ViT-B-16-SigLIP", pretrained=None, image_mean=tag["mean"], image_std=tag["std"],
        image_interpolation=tag["interpolation"], image_resize_mode=tag["resize_mode"])
    path = saved(tmp_path, "siglip", net.eval())
    vectorizer = ImageVectorizer("open_clip:ViT-B-16-SigLIP/webli", weights=path, device="cpu")
    assert vectorizer.config.entry.preprocess.resize_mode == "squash"
    ours, _ = vectorizer.embed([p.read_bytes() for p in PHOTOS])
    with torch.no_grad():
        theirs = np.concatenate([net.encode_image(preprocess(Image.open(p).convert("RGB"))[None]).numpy()
                                 for p in PHOTOS])
    assert cosines(ours, theirs).min() >= 0.999


def test_library_mistakes_are_one_line_before_spark(weights, tmp_path, capsys, monkeypatch):
    _, r18 = weights["resnet18"]
    no_spark = ["--master", "spark://127.0.0.1:9"]  # a job would fail otherwise: these must stop before
    out = tmp_path / "o"
    assert_usage_error(imgvec_here(capsys, "embed", EXAMPLES, "-o", out, "--model", "timm:no_such_net", *no_spark),
                       "unknown timm model 'no_such_net'")
    assert_usage_error(imgvec_here(capsys, "embed", EXAMPLES, "-o", out, "--model", "open_clip:ViT-Nope",
                                   *no_spark), "unknown open_clip architecture 'ViT-Nope'")
    assert_usage_error(imgvec_here(capsys, "embed", EXAMPLES, "-o", out, "--model", "open_clip:ViT-S-32/nonsense",
                                   *no_spark), "has no pretrained 'nonsense'")
    assert_usage_error(imgvec_here(capsys, "embed", EXAMPLES, "-o", out, "--model", "timm:vit_tiny_patch16_224",
                                   "--weights", r18, *no_spark), "does not fit model")  # another architecture
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    result = imgvec_here(capsys, "embed", EXAMPLES, "-o", out, "--model", "timm:resnet18", *no_spark)
    assert_usage_error(result, "timm/resnet18.a1_in1k")
    assert "are not in the Hugging Face cache" in result.stderr and "--weights FILE" in result.stderr
    assert not out.exists()


def test_a_missing_library_names_its_extra(tmp_path):
    result = imgvec("embed", EXAMPLES, "-o", tmp_path / "o", "--model", "timm:resnet18",
                    env=without_module(tmp_path, "timm"), timeout=120)
    assert_usage_error(result, 'pip install "imgvec[timm]"')


def test_text_queries_on_an_output_of_an_image_only_model_are_one_line(tmp_path, capsys):
    from helpers import vectors_output

    vectors_output(tmp_path / "v", np.eye(4, dtype=np.float32), model="resnet18")
    assert_usage_error(imgvec_here(capsys, "similar", tmp_path / "v", "--text", "a dog"), "embeds images only")


def test_models_lists_the_presets_and_the_library_forms():
    result = subprocess.run([IMGVEC, "models", "--json"], capture_output=True, text=True, timeout=120)
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert (rows["sscd"]["dim"], rows["sscd"]["dupes_threshold"], rows["sscd"]["licence"]) == (512, 0.75, "MIT")
    assert rows["dinov2_small"]["dim"] == 384 and rows["clip_vit_b32"]["dim"] == 512
    text = subprocess.run([IMGVEC, "models"], capture_output=True, text=True, timeout=120).stdout
    assert "--model timm:NAME" in text and "--model open_clip:ARCH/PRETRAINED" in text and sys.executable
