"""The data: download, split, the Cityscapes label table and decoder, the unpaired training domains."""
