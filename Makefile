# make test  - install everything needed (venv, torch, the package with its testing extra,
#              Xvfb and Qt's X libraries from Debian) and run the test suite under Xvfb; then the
#              napari tests again on napari's previous minor release (0.8).
#              `make test` runs `make lint` and `make docs` first.
# make lint  - ruff's checks and its formatter (check only) over the whole tree.
# make docs  - the manual in docs/ as a static site in build/site (mkdocs, strict: a broken link fails it).
# make demo  - open napari on the bundled samples with the plugin's widgets; on a machine
#              without a display, render them under Xvfb to demo_output/ (screenshots + files).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Qt's xcb platform plugin needs these on a bare Debian machine; xvfb-run gives tests a display;
# dicom3tools' dciodvfy checks the DICOM napari-medit writes against the standard's IODs; openssl makes
# the throwaway CA of docs/tls-certificates.sh, which the TLS test runs as written.
DEBIAN_PACKAGES := xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-cursor0 \
	libxkbcommon-x11-0 libgl1 libegl1 libdbus-1-3 libfontconfig1 dicom3tools openssl g++
DEMO_OUT ?= demo_output

.PHONY: test lint docs demo benchmark install system-packages clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[testing]'
	touch $@

system-packages:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# The widgets are also tested against napari's previous minor release: napari 0.8 (and the vispy it
# pins) installed into a folder that shadows 0.9 on PYTHONPATH, over the same environment. numpy goes
# there too because napari refuses to import when it finds another napari beside numpy's site-packages.
NAPARI_PREVIOUS := 0.8.0
VISPY_PREVIOUS := 0.16.2
COMPAT := .compat/napari-$(NAPARI_PREVIOUS)
# On 0.8: the reader, writer and sample hooks; the two views napari 0.9 moved (the Data widget's
# radiological camera, the Compare widget's grid); one edit and one cancel through the Edit widget.
# (The whole widget files would add minutes to CI for little more coverage of what 0.9 changed.)
WIDGET_TESTS := tests/test_napari.py \
	tests/test_data_compare_widgets.py::test_radiological_toggle_mirrors_the_view_not_the_data \
	tests/test_data_compare_widgets.py::test_compare_before_after_opacity_difference_side_by_side \
	tests/test_edit_widget.py::test_mededit_through_the_widget_adds_aligned_layers \
	tests/test_edit_widget.py::test_cancel_leaves_no_layer

$(COMPAT)/.installed: $(VENV)/.installed
	numpy=$$($(PY) -c "import numpy; print(numpy.__version__)") && \
	$(PY) -m pip install --quiet --no-deps --target $(COMPAT) napari==$(NAPARI_PREVIOUS) \
		vispy==$(VISPY_PREVIOUS) numpy==$$numpy
	touch $@

test: lint docs install system-packages $(COMPAT)/.installed
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m pytest $(PYTEST_ARGS)
	PYTHONPATH=$(COMPAT) xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m pytest $(WIDGET_TESTS) $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

docs: install
	$(PY) -m mkdocs build --strict --quiet

# benchmark - the benchmark suite (CPU; several minutes): figures and ratios into benchmarks/results/cpu.md
benchmark: install system-packages
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) benchmarks/suite.py --out benchmarks/results/cpu.md

demo: install system-packages
	@if [ -n "$$DISPLAY" ]; then \
		$(PY) -m napari_medit.demo; \
	else \
		xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m napari_medit.demo --headless --out $(DEMO_OUT); \
	fi

clean:
	rm -rf $(VENV) .compat $(DEMO_OUT) .pytest_cache
