"""Serving without HTTP: one engine that turns route requests into decisions and log records, and feedback into
records and online updates; the router holder, the micro-batcher, sessions and the durable outbox it runs on.

`bento/` adapts the engine to HTTP and `mixllm route` (the CLI) uses the same engine without state, so a decision
is made one way whichever door it came through. Import the modules you need (`mixllm.serving.engine`, ...): this
package imports nothing heavy on its own, so the outbox forwarder process starts fast.
"""
