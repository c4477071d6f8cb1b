# Federated Learning with Python: set-up, lab, tests.
# The two commands a learner needs:  make lab   and   make test
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.course-installed
KERNEL  := fl-course
MODERN_VENV  ?= .venv-modern
MODERN_PY    := $(MODERN_VENV)/bin/python
MODERN_STAMP := $(MODERN_VENV)/.course-installed
export TF_CPP_MIN_LOG_LEVEL := 3
export TF_ENABLE_ONEDNN_OPTS := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

MODERN_KERNEL := $(KERNEL)-modern
MODERN_KERNEL_DISPLAY := Python 3 (FL course, Keras 3 + Flower)
MODERN_KERNEL_SPEC := $(VENV)/share/jupyter/kernels/$(MODERN_KERNEL)/kernel.json
CLIENTS ?= 3
ROUNDS  ?= 3
# JupyterLab settings of the course's Lab (no "notified about official Jupyter news?" prompt).
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings/overrides.json
# `make test-colab`: a Colab-like environment (Python 3.12, newest TensorFlow, only what a
# lesson's Colab cell installs) and the lessons it runs there.
COLAB_VENV   ?= .venv-colab
COLAB_PY     := $(COLAB_VENV)/bin/python
COLAB_STAMP  := $(COLAB_VENV)/.colab-installed
COLAB_LESSONS ?= lessons/01_introduction.ipynb lessons/06_privacy.ipynb \
                 lessons/10_smart_keyboards.ipynb lessons/13_future_directions.ipynb

.PHONY: help setup lab test test-tff notebooks timings bench check clean-workers clean setup-modern test-modern student site guide federation \
        test-browser test-colab check-my-work test-workshop

help:
	@echo "make lab        set up (first time only) and open the course in JupyterLab"
	@echo "make test       set up (first time only) and run every test and every lesson, in both"
	@echo "               environments side by side: test-tff (TensorFlow 2.14 + TFF) and"
	@echo "               test-modern (current TensorFlow/Keras 3 + Flower, no TFF, as on Colab)"
	@echo "make test-workshop  run every student copy (no solutions) top to bottom"
	@echo "make federation a real Flower federation on this machine: a SuperLink and"
	@echo "               CLIENTS=3 SuperNodes over gRPC on loopback, ROUNDS=3, compared with fedutils"
	@echo "make notebooks  re-execute every lesson in place, in order, saving outputs"
	@echo "               (and record each lesson's time and memory in lessons/TIMINGS.md)"
	@echo "make timings    time every lesson without saving outputs"
	@echo "make bench      FedAvg speed: fedutils vs TFF vs Flower's simulation (in .venv-modern,"
	@echo "               with Ray) vs the centralized limit; table, goals and plot in"
	@echo "               benchmarks/results/fedavg.{md,json,png}"
	@echo "make student    student copies (no solutions, no outputs) in build/student/"
	@echo "make check-my-work NOTEBOOK=path   grade a learner's copy: passed / failed /"
	@echo "               not attempted, per exercise"
	@echo "make site       the course as a Jupyter Book in build/site/ (open index.html)"
	@echo "make test-browser  JupyterLab and the site in headless Chromium (sliders, lesson 15)"
	@echo "make test-colab run lessons 01, 06, 10, 13 as on Colab; fail on any error or stderr"
	@echo "make guide      regenerate the instructor guide from the measured timings"
	@echo "make check      print the environment check (python -m fedutils.course.check)"

setup: $(STAMP)

# Re-runs only when the requirement files change; otherwise `make setup` does nothing.
$(STAMP): requirements.txt requirements-tff.txt pyproject.toml
	@set -e; \
	if [ ! -x "$(PY)" ]; then \
	    base=$$(./scripts/find_python.sh); \
	    echo "Creating $(VENV) with $$base ($$($$base --version))"; \
	    "$$base" -m venv "$(VENV)"; \
	fi
	$(PY) -m pip install --quiet --upgrade "pip>=23.2" "setuptools>=77" wheel
	@echo "Installing the course environment (first time: about 2 minutes, 2.9 GB)..."
	@echo "(If pip prints a dependency-resolver ERROR naming tensorflow-federated's jax, jaxlib or"
	@echo " typing-extensions pins, that is expected: the course overrides them, see README.md.)"
	$(PY) -m pip install --quiet -r requirements.txt
	@echo "Installing TensorFlow Federated (and packaging) without their stale pins (see requirements-tff.txt)..."
	$(PY) -m pip install --quiet --no-deps -r requirements-tff.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python 3 (FL course)" >/dev/null
	$(PY) -m fedutils.course.check
	@touch $@

# The Colab-like environment: newest TensorFlow and Keras 3, no TFF.
setup-modern: $(MODERN_STAMP)

$(MODERN_STAMP): requirements-modern.txt pyproject.toml
	@set -e; \
	if [ ! -x "$(MODERN_PY)" ]; then \
	    base=$$(./scripts/find_python.sh --modern); \
	    echo "Creating $(MODERN_VENV) with $$base ($$($$base --version))"; \
	    "$$base" -m venv "$(MODERN_VENV)"; \
	fi
	$(MODERN_PY) -m pip install --quiet --upgrade "pip>=23.2" "setuptools>=77" wheel
	@echo "Installing the current-TensorFlow environment (Keras 3 + Flower; first time: about 2 minutes, 2.7 GB)..."
	$(MODERN_PY) -m pip install --quiet -r requirements-modern.txt
	$(MODERN_PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(MODERN_PY) -m ipykernel install --sys-prefix --name $(MODERN_KERNEL) --display-name "$(MODERN_KERNEL_DISPLAY)" >/dev/null
	$(MODERN_PY) -m fedutils.course.check
	@touch $@

# The course's JupyterLab (in $(VENV)) offers the current-TF kernel too: lesson 15 opens with it.
$(MODERN_KERNEL_SPEC): $(STAMP) $(MODERN_STAMP)
	$(MODERN_PY) -m ipykernel install --prefix "$(CURDIR)/$(VENV)" --name $(MODERN_KERNEL) \
	    --display-name "$(MODERN_KERNEL_DISPLAY)" >/dev/null 2>&1

test-modern: setup-modern
	@export FEDUTILS_RUN_ID="make-test-modern-$$$$-$$(date +%s)"; \
	$(MODERN_PY) -m pytest --nbval-kernel-name=$(MODERN_KERNEL) \
	    --nbval-sanitize-with tests/nbval_modern_sanitize.cfg $(PYTEST_ARGS)

$(LAB_SETTINGS): scripts/lab_overrides.json $(STAMP)
	@mkdir -p $(dir $@)
	cp $< $@

lab: setup setup-modern $(MODERN_KERNEL_SPEC) $(LAB_SETTINGS)
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" \
	    --MappingKernelManager.default_kernel_name=$(KERNEL) $(if $(filter 0,$(shell id -u)),--allow-root) \
	    $(LAB_ARGS) lessons/01_introduction.ipynb

# The two environments' halves run side by side (each lesson's kernel uses about one core), their
# output prefixed [tff] / [modern] as it comes and kept whole in build/test/{tff,modern}.log.
test: setup setup-modern
	@mkdir -p build/test; status=0; \
	echo "make test: test-tff and test-modern run side by side; full logs in build/test/"; \
	( set -o pipefail; $(MAKE) --no-print-directory test-tff 2>&1 | tee build/test/tff.log \
	    | sed -u 's/^/[tff]    /' ) & tff=$$!; \
	( set -o pipefail; $(MAKE) --no-print-directory test-modern 2>&1 | tee build/test/modern.log \
	    | sed -u 's/^/[modern] /' ) & modern=$$!; \
	wait $$tff || { status=1; echo "make test: test-tff FAILED (build/test/tff.log)"; }; \
	wait $$modern || { status=1; echo "make test: test-modern FAILED (build/test/modern.log)"; }; \
	[ $$status -ne 0 ] || echo "make test: both environments passed"; \
	exit $$status

test-tff: setup
	@export FEDUTILS_RUN_ID="make-test-$$$$-$$(date +%s)"; status=0; \
	$(PY) -m pytest $(PYTEST_ARGS) || status=$$?; \
	$(PY) -m fedutils.bridges.tff_workers --run-id "$$FEDUTILS_RUN_ID" --report || status=1; \
	exit $$status

# Every student copy executed top to bottom (make test checks them statically): in .ci/run.
test-workshop: setup setup-modern $(MODERN_KERNEL_SPEC)
	@export FEDUTILS_RUN_ID="make-test-workshop-$$$$-$$(date +%s)"; status=0; \
	$(PY) -m pytest tests/workshop $(PYTEST_ARGS) || status=$$?; \
	$(PY) -m fedutils.bridges.tff_workers --run-id "$$FEDUTILS_RUN_ID" --report || status=1; \
	exit $$status

notebooks: setup setup-modern $(MODERN_KERNEL_SPEC)
	$(PY) scripts/stamp_lessons.py
	$(PY) scripts/run_notebooks.py --timings
	$(PY) scripts/instructor_guide.py

timings: setup setup-modern $(MODERN_KERNEL_SPEC)
	$(PY) scripts/run_notebooks.py --timings --no-save

federation: setup-modern
	$(MODERN_PY) -m fedutils.bridges.flower.launcher --clients $(CLIENTS) --rounds $(ROUNDS) --compare $(FEDERATION_ARGS)

bench: setup setup-modern
	$(PY) benchmarks/bench_fedavg.py $(BENCH_ARGS)

student: setup
	$(PY) scripts/student_copies.py --out build/student

site: setup
	$(PY) scripts/build_site.py --out build/site
	@echo "Open build/site/index.html in a browser (works offline)."

check-my-work: setup setup-modern $(MODERN_KERNEL_SPEC)
	@test -n "$(NOTEBOOK)" || { echo "usage: make check-my-work NOTEBOOK=build/student/02_core_principles.ipynb"; exit 2; }
	@$(PY) scripts/check_my_work.py "$(NOTEBOOK)"

# JupyterLab as `make lab` starts it, driven by Debian's headless Chromium through Selenium
# (tests/browser/); screenshots in build/browser/.
test-browser: setup setup-modern $(MODERN_KERNEL_SPEC) $(LAB_SETTINGS) site
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	    echo "make test-browser needs Chromium: sudo apt-get install -y chromium chromium-driver"; exit 1; }
	$(PY) -m pytest tests/browser $(PYTEST_ARGS)

# Built once: Colab's Python, the newest TensorFlow and the packages Colab has preinstalled that
# the lessons use (ipywidgets), plus the notebook runner. No requirements file: fedutils[colab]
# itself is installed by scripts/colab_run.py on every run, from this checkout, non-editable.
$(COLAB_STAMP):
	@set -e; \
	if [ ! -x "$(COLAB_PY)" ]; then \
	    base=$$(./scripts/find_python.sh --colab); \
	    echo "Creating $(COLAB_VENV) with $$base ($$($$base --version))"; \
	    "$$base" -m venv "$(COLAB_VENV)"; \
	fi
	$(COLAB_PY) -m pip install --quiet --upgrade pip
	@echo "Installing a Colab-like environment (newest TensorFlow; first time: a few minutes)..."
	$(COLAB_PY) -m pip install --quiet tensorflow ipywidgets nbclient ipykernel
	@touch $@

test-colab: $(COLAB_STAMP)
	$(COLAB_PY) scripts/colab_run.py $(COLAB_LESSONS)

guide: setup
	$(PY) scripts/instructor_guide.py

check: setup
	$(PY) -m fedutils.course.check

# Stops any TensorFlow Federated worker_binary helper left behind on this machine.
clean-workers:
	@$(PY) -m fedutils.bridges.tff_workers

clean:
	rm -rf $(VENV) $(MODERN_VENV) $(COLAB_VENV) data/cache build .pytest_cache
