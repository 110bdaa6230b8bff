"""The published numbers the report sets ours beside, and the names of its rows and columns."""

from __future__ import annotations

GROUND_TRUTH = "ground_truth"  # the ceiling row: real images through the same scoring
FLOOR = "floor"  # a content-free output through the same scoring

# The paper's order of Tables 4 and 5; variants not listed here follow in name order.
PAPER_ORDER = ("cycle_only", "gan_only", "gan_forward", "gan_backward", "cyclegan")
ROW_TITLES = {
    "cycle_only": "Cycle alone",
    "gan_only": "GAN alone",
    "gan_forward": "GAN + forward cycle",
    "gan_backward": "GAN + backward cycle",
    "cyclegan": "CycleGAN",
    GROUND_TRUTH: "Ceiling: real images",
    FLOOR: "Floor: content-free output",
}

# Published FCN scores (per-pixel acc., per-class acc., class IoU), Zhu et al., "Unpaired Image-to-Image
# Translation using Cycle-Consistent Adversarial Networks", arXiv:1703.10593 (v7), Table 4 (Cityscapes
# labels->photo) and Table 5 (photo->labels). The ground-truth row is the same FCN-8s scoring real photos,
# from pix2pix (Isola et al., arXiv:1611.07004, Table 1). Table 5 has no ground-truth row: real label
# maps decode to their own classes exactly. Cross-checked against public write-ups of the papers (GAN alone
# and CycleGAN rows of both tables, pix2pix Table 1 with its caption); the other rows as quoted in issue 4.
PAPER_SOURCE = (
    "Zhu et al. 2017 (arXiv:1703.10593) Tables 4 and 5; "
    "ground truth: Isola et al. 2017 (arXiv:1611.07004) Table 1"
)
PAPER_SCORES: dict[str, dict[str, tuple[float, float, float]]] = {
    "label2photo": {
        "cycle_only": (0.22, 0.07, 0.02),
        "gan_only": (0.51, 0.11, 0.08),
        "gan_forward": (0.55, 0.18, 0.12),
        "gan_backward": (0.39, 0.14, 0.06),
        "cyclegan": (0.52, 0.17, 0.11),
        GROUND_TRUTH: (0.80, 0.26, 0.21),
    },
    "photo2label": {
        "cycle_only": (0.10, 0.05, 0.02),
        "gan_only": (0.53, 0.11, 0.07),
        "gan_forward": (0.49, 0.11, 0.07),
        "gan_backward": (0.01, 0.06, 0.01),
        "cyclegan": (0.58, 0.22, 0.16),
    },
}
PAPER_TITLES = {"pixel_acc": "per-pixel", "class_acc": "per-class", "class_iou": "IOU"}
SHORT_TITLES = {**ROW_TITLES, GROUND_TRUTH: "Real images", FLOOR: "Floor"}  # plot labels
SCORE_TITLES = {"pixel_acc": "Per-pixel acc.", "class_acc": "Per-class acc.", "class_iou": "Class IOU"}
DIRECTION_TITLES = {
    "label2photo": "labels → photo (paper Table 4): the judge segments F(y)",
    "photo2label": "photo → labels (paper Table 5): G(x) decoded to classes",
}


def variant_order(name: str) -> tuple:
    """The paper's row order; variants it does not have follow in name order."""
    return (PAPER_ORDER.index(name), "") if name in PAPER_ORDER else (len(PAPER_ORDER), name)


# How the scores here differ from the paper's protocol; the report lists these beside its tables.
DEVIATIONS = (
    "The judge is not the paper's FCN-8s (its Cityscapes weights are not available): it is a compact "
    "FCN-8s-style network trained by this pipeline on the real train photos at 128x128. Its own score on "
    "the real val photos is the ceiling row; the paper's ceiling (0.80 / 0.26 / 0.21) was its FCN-8s's.",
    "The ground truth is the pix2pix archive's JPEG colour label maps decoded to train ids by nearest "
    "colour and scored at 128x128. The reference upsamples outputs to 1024x2048 and scores the official "
    "gtFine label ids, which this archive does not hold.",
    "Label maps are resized with nearest neighbour (a blend of two class colours would invent a third "
    "class); the reference resizes them bicubic, like photos.",
    "Translated photos are resized to the val mask size bilinearly before the judge sees them; at the "
    "default 128x128 they already are that size.",
    "The unpaired sampler draws both domains from per-epoch permutations (without replacement); the "
    "reference's unaligned loader takes domain B images at random with replacement.",
    "One confusion matrix per direction over the 500 val images, class means over the classes present "
    "(all 19 on the full val set), void ground truth ignored and predicted void counted wrong, as in the "
    "reference evaluation.",
)
PROTOCOL_TITLES = {
    "disjoint": "disjoint halves: photos from one half of the 2975 train images, label maps from the other "
    "(no true pair is ever seen; stricter than the paper)",
    "paper": "the paper's: all 2975 train photos and all 2975 label maps, sampled independently",
}
