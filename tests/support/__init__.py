"""What the tests share (benchmarks/ imports some of it too): real mlserver processes (harness), tiny models built
offline (models, hf_models, mlflow_models, llama_models, whisper_models), a hand-made Hugging Face cache
(hf_cache), a moto S3 server (s3server), the reliability corpus, server and load (reliability_*), runtime
helpers (runtimes), /proc process trees (processes), the engines' development environments (engine_envs) and
the deployment artefacts as the tests read them (deploy_files). The stand-in engines are in tests/fakes/."""
