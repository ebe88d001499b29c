"""vmgated: SIP edge billing daemon (daemon wiring, config, listeners, metrics, control, CLIs)."""
