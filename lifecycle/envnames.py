"""Every environment variable the package reads, by name, in one place.

Modules read the environment through these constants, never a name spelled by hand, so the
list below is complete; ``tests/test_envnames.py`` checks that and that docs/workspace.md
documents each one. Values are read where they are used (a test or a CLI run may change them).
"""

from __future__ import annotations

# --- lifecycle's own -----------------------------------------------------------------------
ENV_HOME = "LIFECYCLE_HOME"  # the model store and caches; default: the user cache directory
ENV_WORKSPACE = "LIFECYCLE_WORKSPACE"  # the workspace when no -C/--workspace is given
ENV_DEBUG = "LIFECYCLE_DEBUG"  # set: errors with tracebacks, llama.cpp's log on stderr
ENV_NO_PROGRESS = "LIFECYCLE_NO_PROGRESS"  # set: no progress bars even on a terminal
ENV_NO_CANARY = "LIFECYCLE_NO_CANARY"  # set: skip the engine canary before loading a model
ENV_ANSWERS_MAX_MB = "LIFECYCLE_ANSWERS_MAX_MB"  # the answer cache's bound in MiB (256)
ENV_SCHEMA_DECODER = "LIFECYCLE_SCHEMA_DECODER"  # "gbnf": schema mode without llguidance
ENV_FREE_DRAFT = "LIFECYCLE_FREE_DRAFT"  # "prompt-lookup[:K]" / "off": free-mode drafting
ENV_REGISTRY_HOST = "LIFECYCLE_REGISTRY_HOST"  # the one registry host the two below go to
ENV_REGISTRY_USERNAME = "LIFECYCLE_REGISTRY_USERNAME"  # CI credentials for that registry
ENV_REGISTRY_PASSWORD = "LIFECYCLE_REGISTRY_PASSWORD"  # (never printed)
ENV_RETRY_ATTEMPTS = "LIFECYCLE_RETRY_ATTEMPTS"  # tries per failure streak (5; 1: no retry)
ENV_RETRY_BASE = "LIFECYCLE_RETRY_BASE"  # first backoff bound in seconds, doubled per try (1.0)
ENV_RETRY_MAX_TIME = "LIFECYCLE_RETRY_MAX_TIME"  # seconds one failure streak may last (300)
ENV_OPENAI_BASE_URL = "LIFECYCLE_OPENAI_BASE_URL"  # the openai engine's server (before the next)
ENV_OPENAI_MODEL = "LIFECYCLE_OPENAI_MODEL"  # the served model's id; default: the first listed
# Set by lifecycle for the processes it starts (crash supervision), not by users:
ENV_NO_SUPERVISOR = "LIFECYCLE_NO_SUPERVISOR"  # set: run commands without the crash supervisor
ENV_PHASE_PIPE = "LIFECYCLE_PHASE_PIPE"  # "<supervisor pid>:<fd>" in the supervised child
ENV_PARENT_PID = "LIFECYCLE_PARENT_PID"  # the pid of the process that started this one

# --- other tools' variables lifecycle honours ------------------------------------------------
ENV_OPENAI_BASE_URL_FALLBACK = "OPENAI_BASE_URL"  # the OpenAI SDK's server variable
ENV_OPENAI_API_KEY = "OPENAI_API_KEY"  # sent as a bearer token by the openai engine
ENV_OLLAMA_HOST = "OLLAMA_HOST"  # Ollama's daemon address: "host:port" or a URL
ENV_DOCKER_CONFIG = "DOCKER_CONFIG"  # the folder of Docker's config.json (registry logins)
ENV_HF_ENDPOINT = "HF_ENDPOINT"  # the Hugging Face Hub to talk to (huggingface_hub reads it too)
ENV_HF_TOKENS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")  # where huggingface_hub finds a token
ENV_CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"  # named when it hides the GPUs from llama.cpp
ENV_GGML_BACKEND_PATH = "GGML_BACKEND_PATH"  # a CPU backend library llama.cpp loads (set by us)
ENV_GITHUB_STEP_SUMMARY = "GITHUB_STEP_SUMMARY"  # GitHub Actions' job summary file (gate)
# Proxies (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY, lower case too) are read by the HTTP
# clients through urllib.request.getproxies(); lifecycle only names the one in use in errors.
