# make test  : create the environment if needed, then run the test suite (tests marked `slow` are deselected)
# make demo  : create the environment if needed, then run the main job on bundled defaults
# make test-slow : only the `slow` tests (the end-to-end demo test); make gpu-check : benchmarks/gpu_check.py
PYTHON ?= python3
VENV ?= .venv
SLICER_VENV ?= .venv-slicer
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medgen-installed
SLICER_STAMP := $(SLICER_VENV)/.medgen-installed
DEMO_OUT ?= outputs/demo
GPU_CHECK_OUT ?= outputs/gpu_check
# Debian packages napari needs to draw under a virtual X server (see docs/install.md).
APT_PACKAGES := xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libgl1 libegl1 libgl1-mesa-dri \
	libglx-mesa0 libxkbcommon-x11-0 libxcb-cursor0 libxcb-image0 libxcb-randr0 libxcb-render-util0 \
	libxcb-shape0 libxcb-xfixes0 libxcb-xkb1 libfontconfig1 libdbus-1-3

.PHONY: setup system-deps test test-slow demo lint gpu-check slicer-test screenshots clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(MAKE) --no-print-directory system-deps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -c constraints.txt -e ".[gui,test]"
	@touch $(STAMP)

system-deps:
	@if command -v Xvfb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian packages for headless napari (Xvfb, OpenGL, xcb)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	else \
		echo "note: Xvfb is missing and this is not root; GUI tests will be skipped (see docs/install.md)"; \
	fi

test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check napari_medgen tests benchmarks docs slicer_module

demo: $(STAMP)
	$(VENV)/bin/medgen demo --out $(DEMO_OUT)

# needs a CUDA GPU (exit 2 without one); see docs/install.md, "GPU"
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py --out $(GPU_CHECK_OUT)

# The Slicer module's MRML conversions are tested against slicer-core, which pins vtk: own venv.
$(SLICER_STAMP): pyproject.toml constraints.txt
	@test -x $(SLICER_VENV)/bin/python || $(PYTHON) -m venv $(SLICER_VENV)
	$(SLICER_VENV)/bin/python -m pip install torch==2.13.0
	$(SLICER_VENV)/bin/python -m pip install -c constraints.txt -e ".[slicer-test]"
	@touch $(SLICER_STAMP)

# MedGenLib (slicer_module/MedGen) on slicer-core, headless: conversions, the worker subprocess, the module's files.
# (not tests/slicer: slicer-core's `slicer` package would import any `slicer` folder on sys.path as its own)
slicer-test: $(SLICER_STAMP)
	$(SLICER_VENV)/bin/python -m pytest tests/slicer_module

screenshots: $(STAMP)
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) docs/make_screenshots.py

clean:
	rm -rf $(VENV) $(SLICER_VENV) outputs .pytest_cache
