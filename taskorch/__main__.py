from taskorch.cli import main

main()
