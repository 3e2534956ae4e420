"""The four-tier evaluation suite: pixel fidelity, semantic consistency, diagnostic utility, controllability."""
