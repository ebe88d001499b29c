"""Sans-IO SIP ingest: HEP codec, SIP parser, dialog tracker, capture readers. No I/O here."""
