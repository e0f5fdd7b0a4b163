# easel: `make demo` runs the main job on the embedded model; `make test` runs the tests.
# Both create .venv and install everything from zero on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch first, pinned: on this CPU machine 2.13.0 is a local CPU build; a bare `torch`
# requirement would pull a multi-GB CUDA build. GPU workers install their own CUDA torch.
TORCH  ?= torch==2.13.0

# The GPU image (Dockerfile's defaults: the public Python base, PyPI's CUDA torch of the
# tests' line): `make image IMAGE=registry.example.com/easel:TAG`, then `make push`.
# `make test-image` builds the test image (a local base, this machine's CPU torch) and runs
# easel's deployments in it on a docker work pool (tests/image).
IMAGE  ?= easel:0.1.0
TEST_IMAGE ?= easel:test

.PHONY: install demo test test-fast test-image lint bench clean image push

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(VENV)/bin/easel quickstart

# Two processes, a test file each at a time: the end-to-end tests mostly wait (heartbeat
# windows, leases) while the others compute. `test` is everything (CI's command);
# `test-fast` leaves out what is slow by nature (`-m slow`: servers end to end, kill -9,
# DDP, compile, the trained model's quality), for the edit-test loop.
test: install
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15

# dockerd.sh starts a daemon when none answers, or says why it cannot; the images are cached
# by docker, so a second run rebuilds nothing that did not change.
test-image: install
	deploy/image/dockerd.sh
	start=$$(date +%s) && deploy/image/build_image.sh "$(TEST_IMAGE)" \
	  && echo "test-image: image $(TEST_IMAGE) ready in $$(( $$(date +%s) - start )) s"
	EASEL_TEST_IMAGE="$(TEST_IMAGE)" $(PY) -m pytest -q --durations=10 tests/image

test-fast: install
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=10 -m "not slow"

lint: install
	$(VENV)/bin/ruff check easel tests bench

bench: install
	$(PY) -m bench.sweep
	$(PY) -m bench.render

image:
	docker build -t "$(IMAGE)" .

push: image
	docker push "$(IMAGE)"

clean:
	rm -rf $(VENV) easel-out mlflow.db mlruns mlartifacts
