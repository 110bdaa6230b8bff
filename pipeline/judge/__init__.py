"""The FCN judge: a segmenter trained on real photos (the judge stage), used by evaluate to score F(y)."""
