"""``python worker.py``: one worker, as ``taskorch worker`` (used by the Procfile)."""

from taskorch.cli import main

if __name__ == "__main__":
    main(["worker"])
