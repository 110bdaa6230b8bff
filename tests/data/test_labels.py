import numpy as np

from pipeline.data.labels import CLASS_NAMES, NUM_CLASSES, VOID, colorize, decode_label_map


def test_round_trip_of_every_train_class():
    ids = np.arange(NUM_CLASSES, dtype=np.uint8).reshape(1, -1)
    assert (decode_label_map(colorize(ids)) == ids).all()


def test_shared_colours_go_to_the_train_class():
    # pole and polegroup share (153,153,153); car and license plate share (0,0,142)
    rgb = np.array([[[153, 153, 153], [0, 0, 142]]], dtype=np.uint8)
    assert decode_label_map(rgb).tolist() == [[CLASS_NAMES.index("pole"), CLASS_NAMES.index("car")]]


def test_non_train_labels_and_black_are_void():
    # parking (250,170,160), guard rail (180,165,180), unlabeled (0,0,0)
    rgb = np.array([[[250, 170, 160], [180, 165, 180], [0, 0, 0]]], dtype=np.uint8)
    assert (decode_label_map(rgb) == VOID).all()


def test_jpeg_like_noise_decodes_to_nearest_colour():
    road = np.array([128, 64, 128])
    rgb = (road + np.array([3, -4, 2])).reshape(1, 1, 3).astype(np.uint8)
    assert decode_label_map(rgb)[0, 0] == CLASS_NAMES.index("road")


def test_large_images_are_processed_in_chunks():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, NUM_CLASSES, size=(300, 300)).astype(np.uint8)
    assert (decode_label_map(colorize(ids), chunk=1000) == ids).all()
