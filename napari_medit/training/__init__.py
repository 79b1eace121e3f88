"""`napari-medit train`: the models the editing methods drive, trained on your data or ours."""
