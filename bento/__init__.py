"""BentoML adapter of the mixllm router (see service.py); a regular package so `bento.service` always imports."""
