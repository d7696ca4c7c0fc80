"""The artifact store: content-addressed artifacts, leases, records, gc."""
