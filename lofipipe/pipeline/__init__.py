"""The driver side: one module per stage or command; plans, submits to Ray, summarizes."""
