"""One router per endpoint; `lmforge.serve.app` wires them to one `OpenAIService`."""
