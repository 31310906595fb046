"""Zero trust: SPIFFE identities, the embedded CA, SVIDs and bundles, mTLS contexts, authorisation."""
