"""``python server.py``: the API, as ``taskorch serve`` (used by the Procfile)."""

from taskorch.cli import main

if __name__ == "__main__":
    main(["serve"])
