"""ORCA load report messages (generated into v3/ by `make protos`); common/loadreport.py uses them."""
