"""The program inside each step Job: a tool registry and the `agent-runtime` entry point."""
