"""`napari-medit train`: the models the editing methods drive, trained on your data or ours."""

# Every kind `napari-medit train` trains, and what it is (the CLI's choices and help).
TRAINING_KINDS = {
    "brain": "MedEdit-style, mask-conditioned brain MRI",
    "cxr": "text-conditioned chest X-rays",
    "cxr-instruct": "an instruction model on phantom journeys",
    "cxr-findings": "a findings classifier",
    "stress-acquisition": "the stress test's biased demo model: acquisition shift",
    "stress-drain": "the stress test's biased demo model: drains",
    "stress-lungs": "the stress test's biased demo model: lung segmentation",
}
