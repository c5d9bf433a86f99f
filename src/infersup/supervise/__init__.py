"""Supervision: spawning, output relay, stopping the process tree."""
