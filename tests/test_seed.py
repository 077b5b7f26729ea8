"""The seed article's own test, changed only to run offline.

The article calls `ImageVectorizer()` and expects a list of 2048 floats. Offline, the
pretrained ResNet-50 file is pre-seeded into the torch hub cache (see conftest), so the
real default-weights path runs.
"""

from helpers import EXAMPLES
from imgvec import ImageVectorizer


def test_extract_features(resnet50_default):
    vectorizer = ImageVectorizer()
    with open(EXAMPLES / "chelsea.jpg", "rb") as f:
        image_binary = f.read()
    features = vectorizer.extract_features(image_binary)
    assert isinstance(features, list)
    assert len(features) == 2048
    assert all(isinstance(x, float) for x in features)
